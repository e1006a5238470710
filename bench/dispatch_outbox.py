"""Outbox throughput: 1,000 queued intents delivered to a receiver that fails 20 % of calls.

How the intents are queued: a ``Runtime`` in this process (as the gateway starts it, with
``webhooks={"parking": <receiver>}``) decides 1,000 bookings that execute, 16 at a time, without
starting its dispatcher, and closes. Each decision wrote its execution intent (``pending``,
target the receiver) in the transaction of its ledger entries, so the outbox holds 1,000
intents and nothing was delivered. That data dir is the template; each run copies it and starts
a gateway on the copy (``mandate serve`` in its own process: on start its dispatcher resumes
pending intents, as after a restart). The dispatcher works with its defaults (16 attempts in
flight, claims of up to 64) except ``dispatch_backoff`` = 0.01 s (the first retry after 5-15 ms,
doubling; the default 0.5 s would measure the wait rather than the throughput) and
``dispatch_attempts`` = 30 (so that no action runs out of attempts at a 20 % failure rate).

The receiver is the example one (``adapters.examples.receiver``'s ``Receiver`` and request
handler, ``fail_rate=0.2``: a seeded fifth of the calls it has not carried out yet get 503), in
this process on loopback, served with a listen backlog of 128 (``bench._gateway.receiving``):
``running_receiver`` keeps socketserver's backlog of 5, which drops connections when 16
deliveries arrive at once (each on a new connection), and the sender's retry of a dropped
connection after 1 s would dominate the figure. The figure:
deliveries/s from the first call arriving to the 1,000th action carried out, retries included;
also how many calls that took, and when the last outcome was recorded in the ledger.

Baseline, in the same run: the same receiver and failure rate, the same 1,000 deliveries made
directly through the gateway's ``WebhookAdapter`` from a process of its own, 16 at a time,
retrying a refused call at once: no outbox, claims, backoff or ledger entries.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import statistics
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._common import Context, Figure
from bench._gateway import (
    POLICIES,
    TimedReceiver,
    clean_env,
    counts,
    free_port,
    gateway_command,
    intent_counts,
    receiving,
    serve,
    sqlite_rows,
)
from bench._loadgen import webhook_calls
from gateway.schemas import Proposal
from gateway.server.runtime import Runtime
from gateway.settings import Settings

NAME = "dispatch_outbox"
GROUP = "dispatch"
DESCRIPTION = "outbox deliveries/s: 1,000 queued intents, receiver failing 20 % of calls"

FAIL_RATE = 0.2
CONCURRENCY = 16  # the Dispatcher's default attempts in flight
MAX_RUNS = 3  # a run is a gateway start and 1,000 deliveries: keep the group within minutes
BOOKING: dict[str, Any] = {
    "workflow": "parking",
    "action_type": "booking.create",
    "resource": "lot-7/space-42",
    "params": {"customer": "C-1001", "start": "2026-12-01T08:00:00Z", "spaces": "1"},
    "case_type": "booking.create",
    "confidence": 0.95,
    "context": {"channel": "bench"},
}
_TIMEOUT = 300.0


@dataclass
class _Runs:
    outbox_rate: list[float] = field(default_factory=list)
    outbox_calls: list[float] = field(default_factory=list)
    settled: list[float] = field(default_factory=list)  # s from first call to last outcome
    startup: list[float] = field(default_factory=list)  # s from process start to first call
    direct_rate: list[float] = field(default_factory=list)
    direct_calls: list[float] = field(default_factory=list)


def run(ctx: Context) -> list[Figure]:
    """Queue the intents once; per run, start a gateway on a copy and time the drain."""
    work = ctx.out / NAME
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    count = 40 if ctx.quick else 1000
    secret = secrets.token_hex(32)
    receiver = TimedReceiver(secret.encode(), fail_rate=FAIL_RATE)
    template = work / "template"
    runs = _Runs()
    with ExitStack() as stack:
        hook = stack.enter_context(receiving(receiver))
        with ctx.step(f"setup: queueing {count:,} intents (in-process Runtime, no dispatcher)"):
            _queue(template, hook, secret, count)
            queued = intent_counts(template / "mandate.db")
            ctx.log(f"  outbox: {queued}")
            if queued != {"pending": count}:
                raise RuntimeError(f"expected {count} pending intents, found {queued}")
        env = clean_env(
            webhooks=json.dumps({"parking": hook}),
            webhook_secret=secret,
            dispatch_backoff="0.01",
            dispatch_attempts="30",
        )
        repeat = min(ctx.repeat, MAX_RUNS)
        ctx.log(
            f"receiver {hook}, fail rate {FAIL_RATE:.0%}; {repeat} runs (at most {MAX_RUNS}: "
            f"each takes about 20 s), each a gateway on a fresh copy of the {count:,} queued "
            "intents, then the direct baseline"
        )
        for rep in range(repeat):
            data = work / f"run-{rep}"
            shutil.copytree(template, data)
            receiver.reset(FAIL_RATE)
            _outbox_run(ctx, runs, receiver, data, env, count, rep)
            shutil.rmtree(data, ignore_errors=True)
            receiver.reset(FAIL_RATE)
            direct = webhook_calls(
                hook,
                secret=secret.encode(),
                keys=[f"direct-{rep}-{i}" for i in range(count)],
                concurrency=CONCURRENCY,
            )
            runs.direct_rate.append(direct.delivered / direct.seconds)
            runs.direct_calls.append(direct.calls)
            ctx.log(
                f"  run {rep + 1}/{repeat}: outbox {runs.outbox_rate[-1]:,.0f} deliveries/s "
                f"({runs.outbox_calls[-1]:,.0f} calls; last outcome recorded "
                f"{runs.settled[-1]:.2f} s after the first call; first call "
                f"{runs.startup[-1]:.1f} s after the process started); direct "
                f"{runs.direct_rate[-1]:,.0f} deliveries/s ({runs.direct_calls[-1]:,.0f} calls)"
            )
    shutil.rmtree(work, ignore_errors=True)  # kept only when the bench failed
    return _figures(ctx, runs, count)


def _queue(template: Path, hook: str, secret: str, count: int) -> None:
    """Decide ``count`` executing bookings in-process, dispatcher not started."""
    settings = Settings(
        data_dir=template,
        policies=POLICIES,
        database_url=None,
        opa_url=None,
        notify_url=None,
        webhooks={"parking": hook},
        webhook_secret=secret,
    )

    async def main() -> None:
        runtime = Runtime.start(settings)
        try:
            _, identity = runtime.tokens.create(name="bench-booking", role="booking-agent")
            proposals = [
                Proposal.model_validate(BOOKING | {"idempotency_key": f"queued-{i}"})
                for i in range(count)
            ]

            async def worker(share: list[Proposal]) -> None:
                for proposal in share:
                    verdict = await runtime.decider.propose(identity, proposal)
                    if verdict.verdict != "execute" or verdict.execution is None:
                        raise RuntimeError(f"unexpected verdict {verdict.verdict}")
                    if verdict.execution.adapter != "webhook":
                        raise RuntimeError(f"not routed to the webhook: {verdict.execution}")

            await asyncio.gather(*(worker(proposals[i::16]) for i in range(16)))
        finally:
            runtime.close()

    asyncio.run(main())


def _outbox_run(
    ctx: Context,
    runs: _Runs,
    receiver: TimedReceiver,
    data: Path,
    env: dict[str, str],
    count: int,
    rep: int,
) -> None:
    port = free_port()
    db = data / "mandate.db"
    began = time.perf_counter()
    with serve(
        gateway_command(port, data), port=port, workdir=data.parent / f"log-{rep}", env=env,
        name="gateway",
    ):  # fmt: skip
        receiver.wait_count(count, _TIMEOUT)
        with receiver.lock:
            first = min(receiver.first_call.values())
            last = max(receiver.done_at.values())
            calls = sum(receiver.calls.values())
        deadline = time.monotonic() + _TIMEOUT
        while intent_counts(db).get("succeeded", 0) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"outcomes not recorded: {intent_counts(db)}")
            time.sleep(0.01)
        settled = time.perf_counter()
    intents = intent_counts(db)
    kinds = counts(db, "ledger_entries", "kind")
    retries = sqlite_rows(
        db,
        "SELECT count(*) FROM ledger_entries WHERE kind = 'execution' "
        'AND CAST(data AS TEXT) LIKE \'%"result":"retry"%\'',
    )
    if intents != {"succeeded": count}:
        raise RuntimeError(f"not every intent succeeded: {intents}")
    if rep == 0:
        ctx.log(
            f"  ledger after run 1: entries by kind {kinds} (of the execution entries, "
            f"{retries[0][0]} schedule a retry); intents {intents}"
        )
    runs.outbox_rate.append(count / (last - first))
    runs.outbox_calls.append(calls)
    runs.settled.append(settled - first)
    runs.startup.append(first - began)


def _figures(ctx: Context, runs: _Runs, count: int) -> list[Figure]:
    med = statistics.median
    ratio = med(runs.outbox_rate) / med(runs.direct_rate)
    figures = [
        Figure(
            f"{NAME}.direct_rate",
            tuple(runs.direct_rate),
            "deliveries/s",
            baseline=f"{NAME}.direct_rate",
            ratio=1.0,
            note=f"baseline: WebhookAdapter straight to the receiver, {CONCURRENCY} at a time, "
            f"refused calls retried at once; {count:,} deliveries, "
            f"{med(runs.direct_calls):,.0f} calls",
        ),
        Figure(
            f"{NAME}.outbox_rate",
            tuple(runs.outbox_rate),
            "deliveries/s",
            baseline=f"{NAME}.direct_rate",
            ratio=ratio,
            note=f"{count:,} queued intents, receiver failing {FAIL_RATE:.0%} of calls, "
            f"dispatch_backoff 0.01 s; first call to the {count:,}th action carried out; last "
            f"outcome recorded {med(runs.settled):.2f} s after the first call (median)",
        ),
        Figure(
            f"{NAME}.outbox_calls",
            tuple(runs.outbox_calls),
            "calls",
            note=f"webhook calls the receiver got for {count:,} deliveries (retries included)",
        ),
    ]
    return [ctx.figure(f) for f in figures]
