"""Time from approval to webhook delivery at a loopback receiver (p50/p99).

A gateway (``mandate serve`` in its own process, SQLite, the repository's policies) sends
parking actions to a webhook: ``MANDATE_WEBHOOKS={"parking": <receiver>}`` and
``MANDATE_WEBHOOK_SECRET``. The receiver is the example one (``adapters.examples.receiver``:
checks the signature, carries each Idempotency-Key out once), in this process on loopback,
noting when each action was carried out. Tokens come from ``mandate token create``: a
``payments-agent`` and an ``approver`` bound to parking (another owner, as separation of duties
requires).

Each run proposes its held actions first (refund.issue, amount 20, confidence 0.99: held, as
refunds are at autonomy level 1), then approves them one at a time over HTTP
(``POST /v1/approvals/{id}/decisions``, quorum 1). The figure is the time from the vote's HTTP
response (the approver has their answer) to the receiver carrying the action out; the next vote
waits until the gateway recorded the outcome, so each delivery meets an idle gateway.

Baseline, in the same run: the same receiver called directly through the gateway's
``WebhookAdapter`` from a process of its own, one call at a time (round trip of a signed POST):
what the delivery itself costs, without the outbox, the lease, and the ledger entries.
"""

from __future__ import annotations

import json
import secrets
import shutil
import statistics
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from adapters.examples.receiver import running_receiver
from bench._common import Context, Figure, percentile
from bench._gateway import (
    TimedReceiver,
    clean_env,
    counts,
    free_port,
    gateway_command,
    serve,
    sqlite_rows,
    tokens,
)
from bench._loadgen import webhook_calls

NAME = "dispatch_latency"
GROUP = "dispatch"
DESCRIPTION = "approval (vote answered) to webhook delivery at a loopback receiver, p50/p99"

REFUND = {
    "workflow": "parking",
    "action_type": "refund.issue",
    "resource": "booking/B-1001",
    "params": {"amount": "20", "currency": "EUR", "reason": "space unavailable"},
    "case_type": "refund.issue",
    "confidence": 0.99,
    "context": {"channel": "bench"},
}
_WAIT = 30.0


@dataclass
class _Runs:
    delivery_p50: list[float] = field(default_factory=list)
    delivery_p99: list[float] = field(default_factory=list)
    from_sent_p50: list[float] = field(default_factory=list)
    vote_p50: list[float] = field(default_factory=list)
    direct_p50: list[float] = field(default_factory=list)
    direct_p99: list[float] = field(default_factory=list)
    early: int = 0  # deliveries that arrived before the vote's answer


def run(ctx: Context) -> list[Figure]:
    """Serve a gateway with a webhook to the receiver; approve held actions one at a time."""
    work = ctx.out / NAME
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data = work / "data"
    count = 5 if ctx.quick else 100
    secret = secrets.token_hex(32)
    receiver = TimedReceiver(secret.encode())
    runs = _Runs()
    with ExitStack() as stack:
        hook = stack.enter_context(running_receiver(receiver))
        with ctx.step("setup: payments-agent and approver tokens (mandate token create)"):
            made = tokens(
                data,
                [
                    ("bench-payments", "payments-agent", None),
                    ("bench-approver", "approver", "parking"),
                ],
            )
        env = clean_env(
            webhooks=json.dumps({"parking": hook}),
            webhook_secret=secret,
            dispatch_backoff="0.05",
        )
        port = free_port()
        with ctx.step("setup: starting the gateway (mandate serve, webhook to the receiver)"):
            gateway = stack.enter_context(
                serve(gateway_command(port, data), port=port, workdir=work, env=env,
                      name="gateway")
            )  # fmt: skip
        agent = stack.enter_context(_client(gateway.url, made["bench-payments"]))
        approver = stack.enter_context(_client(gateway.url, made["bench-approver"]))
        ctx.log(
            f"receiver {hook}; {count} held actions per run, approved one at a time; "
            f"{ctx.repeat} runs (and a warm-up of 5)"
        )
        _one_run(agent, approver, receiver, data, 5, f"warm-{secrets.token_hex(2)}")
        for rep in range(ctx.repeat):
            tag = f"r{rep}-{secrets.token_hex(2)}"
            delivery, from_sent, votes, early = _one_run(
                agent, approver, receiver, data, count, tag
            )
            runs.delivery_p50.append(percentile(delivery, 50))
            runs.delivery_p99.append(percentile(delivery, 99))
            runs.from_sent_p50.append(percentile(from_sent, 50))
            runs.vote_p50.append(percentile(votes, 50))
            runs.early += early
            direct = webhook_calls(
                hook,
                secret=secret.encode(),
                keys=[f"direct-{tag}-{i}" for i in range(count)],
                concurrency=1,
            )
            runs.direct_p50.append(percentile(direct.rtts_ms, 50))
            runs.direct_p99.append(percentile(direct.rtts_ms, 99))
            ctx.log(
                f"  run {rep + 1}/{ctx.repeat}: delivery p50 {runs.delivery_p50[-1]:.2f} ms "
                f"p99 {runs.delivery_p99[-1]:.2f} ms (from the vote sent: p50 "
                f"{runs.from_sent_p50[-1]:.2f} ms; vote round trip p50 "
                f"{runs.vote_p50[-1]:.2f} ms); direct POST p50 {runs.direct_p50[-1]:.2f} ms "
                f"p99 {runs.direct_p99[-1]:.2f} ms"
            )
    kinds = counts(data / "mandate.db", "ledger_entries", "kind")
    ctx.log(f"ledger entries by kind {kinds}; receiver refused {len(receiver.refused)} calls")
    shutil.rmtree(work, ignore_errors=True)  # kept only when the bench failed
    return _figures(ctx, runs, count)


def _client(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _one_run(
    agent: httpx.Client,
    approver: httpx.Client,
    receiver: TimedReceiver,
    data: Path,
    count: int,
    tag: str,
) -> tuple[list[float], list[float], list[float], int]:
    """Propose ``count`` refunds, approve each; (delivery ms, from-sent ms, vote ms, early)."""
    held: list[tuple[str, str]] = []
    for i in range(count):
        answer = _ok(agent.post("/v1/actions", json=REFUND | {"idempotency_key": f"{tag}-{i}"}))
        if answer["verdict"] != "hold" or not answer.get("approval"):
            raise RuntimeError(f"the refund was not held: {answer['verdict']}")
        held.append((answer["approval"]["id"], answer["action_id"]))
    delivery, from_sent, votes = [], [], []
    early = 0
    for approval_id, action_id in held:
        sent = time.perf_counter()
        view = _ok(
            approver.post(
                f"/v1/approvals/{approval_id}/decisions",
                json={"decision": "approve", "reason": "bench"},
            )
        )
        answered = time.perf_counter()
        if view["status"] != "approved":
            raise RuntimeError(f"approval {approval_id} is {view['status']} after the vote")
        done = receiver.wait_done(action_id, _WAIT)
        early += done < answered
        delivery.append((done - answered) * 1000)
        from_sent.append((done - sent) * 1000)
        votes.append((answered - sent) * 1000)
        _wait_settled(data / "mandate.db", action_id)
    return delivery, from_sent, votes, early


def _ok(response: httpx.Response) -> Any:
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text}")
    return response.json()


def _wait_settled(db: Path, action_id: str) -> None:
    """Until the gateway recorded the outcome of ``action_id``."""
    deadline = time.monotonic() + _WAIT
    while time.monotonic() < deadline:
        rows = sqlite_rows(
            db, "SELECT status FROM gateway_intents WHERE action_id = ?", (action_id,)
        )
        if rows and rows[0][0] in ("succeeded", "failed"):
            return
        time.sleep(0.002)
    raise TimeoutError(f"no outcome recorded for {action_id}")


def _figures(ctx: Context, runs: _Runs, count: int) -> list[Figure]:
    med = statistics.median
    figures = [
        Figure(
            f"{NAME}.direct_p50",
            tuple(runs.direct_p50),
            "ms",
            baseline=f"{NAME}.direct_p50",
            ratio=1.0,
            note=f"baseline: signed POST through WebhookAdapter to the same receiver, one at a "
            f"time, round trip; {count} calls per run",
            digits=2,
        ),
        Figure(
            f"{NAME}.direct_p99",
            tuple(runs.direct_p99),
            "ms",
            baseline=f"{NAME}.direct_p99",
            ratio=1.0,
            note="baseline: as direct_p50",
            digits=2,
        ),
        Figure(
            f"{NAME}.delivery_p50",
            tuple(runs.delivery_p50),
            "ms",
            baseline=f"{NAME}.direct_p50",
            ratio=med(runs.delivery_p50) / med(runs.direct_p50),
            note=f"vote's HTTP answer to the receiver carrying the action out; {count} held "
            f"refunds approved one at a time per run; p50 from the vote sent "
            f"{med(runs.from_sent_p50):.2f} ms, vote round trip p50 {med(runs.vote_p50):.2f} ms"
            f"; {runs.early} deliveries arrived before the vote's answer",
            digits=2,
        ),
        Figure(
            f"{NAME}.delivery_p99",
            tuple(runs.delivery_p99),
            "ms",
            baseline=f"{NAME}.direct_p99",
            ratio=med(runs.delivery_p99) / med(runs.direct_p99),
            note="as delivery_p50",
            digits=2,
        ),
    ]
    return [ctx.figure(f) for f in figures]
