"""``POST /v1/actions`` over HTTP: decisions/s and p50/p99 latency against a bare endpoint.

Both servers are ``uvicorn.run`` with uvloop and httptools, one worker, each in a process of
its own, started once and kept running; the same load generator (``wrk`` when on PATH, else the
built-in one in ``bench._loadgen``) drives each with 16 connections, one request in flight on
each, every request with its own idempotency key.

- ``bare``: the baseline, ``bench._bare_app``: FastAPI validating the gateway's ``Proposal``
  model and returning it; the bearer token is sent and ignored.
- ``gateway``: ``mandate serve`` on a fresh data dir (SQLite, WAL, ``synchronous=FULL``) and the
  repository's policies, with a ``booking-agent`` token from ``mandate token create``, and the
  per-token rate limit off (``MANDATE_RATE_LIMIT_PER_SECOND=0``): its default, 5,000 a second,
  is what a retry storm meets in production, and would cap the retry runs at it. Every
  request is a booking that executes (``booking.create``, confidence 0.95, level 3), so the
  whole path runs: authenticate, validate, permit (Casbin), evaluate (Rego), decide, and the
  durable ledger append of the proposal and decision entries before the answer. An execute
  verdict also writes an execution intent; the gateway's dispatcher picks it up in the
  background (callback adapter, no webhook configured): it writes an ``execution`` entry and
  parks the intent until the executor reports. That background work runs during the
  measurement, as it would in production; after each run the bench waits until the backlog is
  drained so that the next run (of either server) starts from an idle gateway.

- ``retry``: the same gateway, every request a retry of a key it decided before, with the same
  body (a retry storm after a timeout): each connection resends its first ``RETRY_KEYS`` keys,
  decided in untimed runs first. A retry is answered from its record: no decision, no ledger
  write (the proposal and decision entries are counted before and after its runs).

Runs alternate between the servers (the first of each pair alternates too); the figures are
medians of the runs. The servers' CPU time per answered request (from ``/proc``) is shown too:
with the load generator on the same machine, it says what each request costs the server.
"""

from __future__ import annotations

import json
import secrets
import shutil
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench._common import Context, Figure
from bench._gateway import (
    Served,
    clean_env,
    counts,
    cpu_seconds,
    free_port,
    gateway_command,
    intent_counts,
    serve,
    sqlite_rows,
    tokens,
)
from bench._loadgen import KEY_MARK, Load, http_load, loadgen_name

NAME = "gateway_http"
GROUP = "gateway"
DESCRIPTION = "POST /v1/actions decisions/s, p50/p99 vs a bare FastAPI endpoint, 16 connections"

CONCURRENCY = 16
TARGET_RATIO = 0.40  # issue 20's; the goal beyond it stays 60 %
TARGET_CPU = 2.5  # server CPU per decision, at most this many times the bare endpoint's
RETRY_KEYS = 64  # keys each connection resends in the retry runs
PATH = "/v1/actions"
# A booking the default bundle executes at once (booking-agent, level 3, confident).
PROPOSAL = {
    "workflow": "parking",
    "action_type": "booking.create",
    "resource": "lot-7/space-42",
    "params": {"customer": "C-1001", "start": "2026-12-01T08:00:00Z", "spaces": "1"},
    "case_type": "booking.create",
    "confidence": 0.95,
    "context": {"channel": "bench", "agent_run": "r-0001"},
    "idempotency_key": KEY_MARK,
}
_DRAIN_TIMEOUT = 180.0


@dataclass
class _Target:
    """One server under load, and what its runs gave."""

    name: str
    served: Served
    loads: list[Load] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)  # server CPU per answered request
    backlog: list[int] = field(default_factory=list)  # intents queued when a run ended
    drain: list[float] = field(default_factory=list)  # seconds until they were dispatched


def run(ctx: Context) -> list[Figure]:
    """Start both servers, warm them up, measure alternately; print medians and the ratio."""
    work = ctx.out / NAME
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    seconds = 1 if ctx.quick else 5
    warmup = 1 if ctx.quick else 2
    data = work / "data"
    db = data / "mandate.db"
    body = json.dumps(PROPOSAL, separators=(",", ":"))

    with ctx.step("setup: a booking-agent token (mandate token create) on a fresh data dir"):
        token = tokens(data, [("bench-booking", "booking-agent", None)])["bench-booking"]
    gw_port = free_port()
    bare_port = free_port()
    while bare_port == gw_port:
        bare_port = free_port()
    bare_env = clean_env()  # this checkout on PYTHONPATH: bench._bare_app imports
    with ExitStack() as stack:
        with ctx.step("setup: starting the gateway (mandate serve) and the bare endpoint"):
            gateway = _Target(
                "gateway",
                stack.enter_context(
                    serve(gateway_command(gw_port, data), port=gw_port, workdir=work,
                          env=clean_env(rate_limit_per_second="0"), name="gateway")
                ),
            )  # fmt: skip
            bare = _Target(
                "bare",
                stack.enter_context(
                    serve([sys.executable, "-m", "bench._bare_app", "--port", str(bare_port)],
                          port=bare_port, workdir=work, env=bare_env, name="bare")
                ),
            )  # fmt: skip
        tool = loadgen_name()
        ctx.log(f"load generator: {tool}")
        ctx.log(
            f"{CONCURRENCY} connections, {seconds} s per run, {ctx.repeat} runs per server, "
            f"alternating; {warmup} s warm-up each; body {len(body) - len(KEY_MARK) + 20} B"
        )
        run_tag = secrets.token_hex(3)

        retry = _Target("retry", gateway.served)
        retry_run = f"{run_tag}-retry"

        def measure(target: _Target, label: str, length: int) -> Load:
            pid = target.served.process.pid
            before = cpu_seconds(pid)
            load = http_load(
                target.served.url,
                path=PATH,
                body=body,
                token=token,
                run_id=retry_run if target is retry else f"{run_tag}-{label}",
                seconds=length,
                connections=CONCURRENCY,
                workdir=work,
                cycle=RETRY_KEYS if target is retry else 0,
            )
            after = cpu_seconds(pid)
            if load.non2xx or load.errors:
                ctx.log(
                    f"  WARNING {target.name}: {load.non2xx} non-2xx answers, "
                    f"{load.errors} socket errors of {load.requests}"
                )
            if label != "warmup" and before is not None and after is not None:
                ok = max(1, load.requests - load.non2xx)
                target.cpu_ms.append((after - before) * 1000 / ok)
            if target is gateway:
                backlog, drained = _drain(db)
                if label != "warmup":
                    target.backlog.append(backlog)
                    target.drain.append(drained)
            return load

        with ctx.step("warm-up"):
            for target in (bare, gateway):
                measure(target, "warmup", warmup)
        with ctx.step(f"deciding the retry runs' keys ({RETRY_KEYS} a connection)"):
            decided = -1
            while decided != (decided := _decided(db, retry_run)):
                measure(retry, "warmup", warmup)  # first sends decide, later ones retry
            _drain(db)
        written = 0  # proposal and decision entries written during the retry runs
        targets = (bare, gateway, retry)
        for rep in range(ctx.repeat):
            shift = rep % len(targets)  # each goes first in turn
            for target in targets[shift:] + targets[:shift]:
                entries = _decisions_recorded(db) if target is retry else 0
                target.loads.append(measure(target, f"r{rep}", seconds))
                if target is retry:
                    written += _decisions_recorded(db) - entries
            ctx.log(
                f"  run {rep + 1}/{ctx.repeat}: "
                + ", ".join(
                    f"{t.name} {t.loads[-1].rate:,.0f}/s p50 {t.loads[-1].p50_ms:.1f} ms "
                    f"p99 {t.loads[-1].p99_ms:.1f} ms"
                    + (
                        f" ({t.backlog[-1]} intents queued at the end, drained in "
                        f"{t.drain[-1]:.1f} s)"
                        if t is gateway
                        else ""
                    )
                    for t in targets
                )
            )
        ctx.log(
            f"retry runs: {decided} keys resent, {written} proposal or decision entries written"
        )
    _check_ledger(ctx, db)
    shutil.rmtree(work, ignore_errors=True)  # kept only when the bench failed
    return _figures(ctx, bare, gateway, tool) + _retry_figures(ctx, gateway, retry, written)


def _decided(db: Path, run_id: str) -> int:
    """Actions recorded with the keys of run ``run_id``."""
    rows = sqlite_rows(
        db, "SELECT count(*) FROM gateway_actions WHERE idempotency_key LIKE ?", (f"{run_id}-%",)
    )
    return int(str(rows[0][0]))


def _decisions_recorded(db: Path) -> int:
    """Proposal and decision entries in the ledger."""
    kinds = counts(db, "ledger_entries", "kind")
    return kinds.get("proposal", 0) + kinds.get("decision", 0)


def _drain(db: Path) -> tuple[int, float]:
    """Wait until the dispatcher has no pending or dispatching intent; return how many there
    were when the load stopped and how long they took."""
    start = time.perf_counter()
    first = None
    while True:
        counts = intent_counts(db)
        waiting = counts.get("pending", 0) + counts.get("dispatching", 0)
        if first is None:
            first = waiting
        if waiting == 0:
            return first, time.perf_counter() - start
        if time.perf_counter() - start > _DRAIN_TIMEOUT:
            raise RuntimeError(f"the dispatcher did not drain {waiting} intents in time")
        time.sleep(0.05)


def _check_ledger(ctx: Context, db: Path) -> None:
    """Say what the gateway recorded: every answer an execute, each with its entries."""
    verdicts = counts(db, "gateway_actions", "verdict")
    kinds = counts(db, "ledger_entries", "kind")
    intents = intent_counts(db)
    ctx.log(
        f"gateway recorded: actions by verdict {verdicts}; ledger entries by kind {kinds}; "
        f"intents by status {intents}"
    )


def _figures(ctx: Context, bare: _Target, gateway: _Target, tool: str) -> list[Figure]:
    def med(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    rates = {t.name: [load.rate for load in t.loads] for t in (bare, gateway)}
    p50 = {t.name: [load.p50_ms for load in t.loads] for t in (bare, gateway)}
    p99 = {t.name: [load.p99_ms for load in t.loads] for t in (bare, gateway)}
    ratio = med(rates["gateway"]) / med(rates["bare"])
    cpu_ratio = med(gateway.cpu_ms) / med(bare.cpu_ms)
    short = tool.split(" ", 1)[0]
    figures = [
        Figure(
            f"{NAME}.bare_rate",
            tuple(rates["bare"]),
            "req/s",
            baseline=f"{NAME}.bare_rate",
            ratio=1.0,
            note=f"baseline: FastAPI validating Proposal and returning it; {short}, "
            f"{CONCURRENCY} connections; server CPU {med(bare.cpu_ms):.2f} ms/request",
        ),
        Figure(
            f"{NAME}.gateway_rate",
            tuple(rates["gateway"]),
            "decisions/s",
            baseline=f"{NAME}.bare_rate",
            ratio=ratio,
            target=f">= {TARGET_RATIO:.0%} of bare_rate",
            met=ratio >= TARGET_RATIO,
            note=f"mandate serve, booking.create executes, durable ledger append; {short}, "
            f"{CONCURRENCY} connections; server CPU {med(gateway.cpu_ms):.2f} ms/decision; "
            "each execute is also handed to its executor (callback adapter: an execution "
            "entry in the decision's transaction); at the end of a run "
            f"{med([float(b) for b in gateway.backlog]):.0f} intents were still queued "
            f"(median; drained in {med(gateway.drain):.1f} s before the next run)",
        ),
        Figure(
            f"{NAME}.bare_cpu",
            tuple(bare.cpu_ms),
            "ms/request",
            note="the bare endpoint's server CPU per request (/proc)",
            digits=3,
        ),
        Figure(
            f"{NAME}.gateway_cpu",
            tuple(gateway.cpu_ms),
            "ms/decision",
            baseline=f"{NAME}.bare_cpu",
            ratio=cpu_ratio,
            target=f"<= {TARGET_CPU:.0%} of bare_cpu",
            met=cpu_ratio <= TARGET_CPU,
            note="server CPU per decision (/proc)",
            digits=3,
        ),
    ]
    for which, values in (("p50", p50), ("p99", p99)):
        base = med(values["bare"])
        figures.append(
            Figure(
                f"{NAME}.bare_{which}",
                tuple(values["bare"]),
                "ms",
                note=f"bare endpoint {which} latency ({short})",
                digits=2,
            )
        )
        figures.append(
            Figure(
                f"{NAME}.gateway_{which}",
                tuple(values["gateway"]),
                "ms",
                baseline=f"{NAME}.bare_{which}",
                ratio=med(values["gateway"]) / base if base else None,
                note=f"POST /v1/actions {which} latency ({short}, {CONCURRENCY} in flight)",
                digits=2,
            )
        )
    return [ctx.figure(f) for f in figures]


def _retry_figures(ctx: Context, gateway: _Target, retry: _Target, written: int) -> list[Figure]:
    fresh = statistics.median(load.rate for load in gateway.loads)
    rates = tuple(load.rate for load in retry.loads)
    ratio = statistics.median(rates) / fresh
    figures = [
        Figure(
            f"{NAME}.retry_rate",
            rates,
            "answers/s",
            baseline=f"{NAME}.gateway_rate",
            ratio=ratio,
            target=">= 100% of gateway_rate, no entry written",
            met=ratio >= 1.0 and written == 0,
            note=f"every request a retry of a decided key, same body; server CPU "
            f"{statistics.median(retry.cpu_ms):.2f} ms/answer; {written} proposal or decision "
            "entries written during these runs",
        ),
        Figure(
            f"{NAME}.retry_p99",
            tuple(load.p99_ms for load in retry.loads),
            "ms",
            baseline=f"{NAME}.gateway_p99",
            ratio=statistics.median(load.p99_ms for load in retry.loads)
            / statistics.median(load.p99_ms for load in gateway.loads),
            note=f"a retry's p99 latency; p50 "
            f"{statistics.median(load.p50_ms for load in retry.loads):.2f} ms",
            digits=2,
        ),
    ]
    return [ctx.figure(f) for f in figures]
