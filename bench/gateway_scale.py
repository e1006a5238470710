"""Decisions/s and p50/p99 with 1, 2 and 4 gateway processes on one database, SQLite and
PostgreSQL, each against the single-process figure of the same database in the same run.

The processes are separate ``mandate serve`` commands (uvicorn, one worker each) on ports of
their own, all on one store: one SQLite file, or one PostgreSQL schema made for the run and
dropped afterwards, and one signing key made before any of them starts (every process of a
ledger signs with the same key). The PostgreSQL half runs when a URL is given in
``MANDATE_BENCH_DATABASE_URL`` or ``MANDATE_TEST_DATABASE_URL``, and is skipped with a printed
reason otherwise.

The load is ``bench.gateway_http``'s: its booking proposal (executes, so the whole path runs and
writes an execution intent), each request with its own idempotency key, 16 connections in all,
spread evenly over the processes (16, 8 + 8, 4 x 4), one load generator per process (``wrk``
when on PATH, else the built-in one), all running at once for the same seconds. decisions/s is
the sum of the 2xx answers per second of all of them. Latency percentiles cannot be merged from
the generators' summaries, so p50 and p99 are the highest of the processes' own: the merged p99
is never above the highest one.

Each run starts its N processes afresh, warms them up, measures, waits until the dispatchers
drained the execution intents, and stops them; the order of N turns from run to run, so the
figures of one database share the same noise. At the end the ledger is exported and the export
verified offline against the key, and the recorded actions counted: the figures are of correct
work. The machine is shared: the ratios are what to read.
"""

from __future__ import annotations

import json
import secrets
import shutil
import statistics
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench._common import Context, Figure
from bench._gateway import (
    DATABASE_URL_ENVS,
    Served,
    Store,
    bench_database_url,
    cpu_seconds,
    serve_many,
    store,
    tokens,
    verify_ledger,
)
from bench._loadgen import Load, http_load, loadgen_name
from bench.gateway_http import CONCURRENCY, PATH, PROPOSAL

NAME = "gateway_scale"
GROUP = "gateway"
DESCRIPTION = "decisions/s, p50/p99 with 1, 2, 4 gateway processes on one database vs 1"

PROCESSES = (1, 2, 4)
QUICK_PROCESSES = (1, 2)


@dataclass
class _Series:
    """What the runs with N processes on one database gave."""

    processes: int
    rates: list[float] = field(default_factory=list)  # decisions/s, all processes
    p50: list[float] = field(default_factory=list)  # ms, the highest process's
    p99: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)  # server CPU (all processes) per decision
    problems: int = 0  # non-2xx answers and socket errors, all runs


def run(ctx: Context) -> list[Figure]:
    """Measure each database's N = 1, 2, 4 alternately; print medians and the ratio to N = 1."""
    work = ctx.out / NAME
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    counts = QUICK_PROCESSES if ctx.quick else PROCESSES
    seconds = 1 if ctx.quick else 5
    warmup = 0 if ctx.quick else 2
    repeat = 1 if ctx.quick else ctx.repeat  # each run starts processes: keep --quick short
    tool = loadgen_name()
    ctx.log(f"load generator: {tool}")
    ctx.log(
        f"{CONCURRENCY} connections spread over the processes, {seconds} s per run, "
        f"{repeat} runs per N, N in {counts} alternating; {warmup} s warm-up per start"
    )
    figures: list[Figure] = []
    url = bench_database_url()
    for backend, db_url in (("sqlite", None), ("postgresql", url)):
        if backend == "postgresql" and not db_url:
            ctx.log(
                "postgresql: SKIPPED, no database URL given (set "
                f"{' or '.join(DATABASE_URL_ENVS)}, e.g. "
                "postgresql+psycopg://postgres@127.0.0.1:5432/test)"
            )
            continue
        with store(work / backend, db_url, prefix="bench_scale") as where:
            series = _measure(ctx, where, work / backend, counts, seconds, warmup, repeat)
            with ctx.step(f"{backend}: export and verify the ledger"):
                verified = verify_ledger(where, work / backend)
            recorded = where.count("gateway_actions", "verdict")
            ctx.log(
                f"{backend}: export verified ({verified['size']} entries, "
                f"{verified['checkpoints']} checkpoints); actions by verdict {recorded}"
            )
            if set(recorded) != {"execute"}:
                raise RuntimeError(f"{backend}: expected only executes, got {recorded}")
        figures += _figures(ctx, backend, series, tool, int(verified["size"]))
    shutil.rmtree(work, ignore_errors=True)  # kept only when the bench failed
    return figures


def _measure(
    ctx: Context,
    where: Store,
    work: Path,
    counts: Sequence[int],
    seconds: int,
    warmup: int,
    repeat: int,
) -> dict[int, _Series]:
    with ctx.step(f"{where.backend}: a booking-agent token on a fresh store"):
        token = tokens(
            where.data_dir,
            [("bench-booking", "booking-agent", None)],
            database_url=where.url,
            env=where.env(),
        )["bench-booking"]
    body = json.dumps(PROPOSAL, separators=(",", ":"))
    tag = secrets.token_hex(3)
    series = {n: _Series(n) for n in counts}
    for rep in range(repeat):
        turn = rep % len(counts)
        for n in (*counts[turn:], *counts[:turn]):
            s = series[n]
            with serve_many(where, n, workdir=work / f"n{n}") as served:
                if warmup:
                    _spread(served, body, token, f"{tag}-w{rep}-n{n}", warmup, work)
                    where.drain()
                before = _cpu(served)
                loads = _spread(served, body, token, f"{tag}-r{rep}-n{n}", seconds, work)
                backlog, drained = where.drain()
                after = _cpu(served)
            ok = sum(load.requests - load.non2xx for load in loads)
            s.rates.append(sum(load.rate for load in loads))
            s.p50.append(max(load.p50_ms for load in loads))
            s.p99.append(max(load.p99_ms for load in loads))
            s.problems += sum(load.non2xx + load.errors for load in loads)
            if before is not None and after is not None and ok:
                s.cpu_ms.append((after - before) * 1000 / ok)
            ctx.log(
                f"  {where.backend} run {rep + 1}/{repeat} N={n}: {s.rates[-1]:,.0f} "
                f"decisions/s (" + " + ".join(f"{load.rate:,.0f}" for load in loads) + ") "
                f"p50 {s.p50[-1]:.1f} ms p99 {s.p99[-1]:.1f} ms; {backlog} intents queued at "
                f"the end, drained in {drained:.1f} s"
            )
            if any(load.non2xx or load.errors for load in loads):
                ctx.log(
                    "  WARNING: "
                    + ", ".join(f"{load.non2xx} non-2xx, {load.errors} errors" for load in loads)
                )
    return series


def _spread(
    served: Sequence[Served], body: str, token: str, run_id: str, seconds: int, work: Path
) -> list[Load]:
    """``CONCURRENCY`` connections spread over the processes, one load generator each, all at
    once; each in a directory of its own (wrk's script is written there)."""
    each = [CONCURRENCY // len(served)] * len(served)
    for i in range(CONCURRENCY % len(served)):
        each[i] += 1
    for i in range(len(served)):
        (work / f"load-{i}").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(len(served)) as pool:
        futures = [
            pool.submit(
                http_load,
                target.url,
                path=PATH,
                body=body,
                token=token,
                run_id=f"{run_id}-p{i}",
                seconds=seconds,
                connections=each[i],
                workdir=work / f"load-{i}",
            )
            for i, target in enumerate(served)
        ]
        return [f.result() for f in futures]


def _cpu(served: Sequence[Served]) -> float | None:
    used = [cpu_seconds(s.process.pid) for s in served]
    return None if any(u is None for u in used) else sum(u for u in used if u is not None)


def _figures(
    ctx: Context, backend: str, series: dict[int, _Series], tool: str, entries: int
) -> list[Figure]:
    def med(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    short = tool.split(" ", 1)[0]
    one = series[1]
    figures = []
    for n, s in series.items():
        base = f"{NAME}.{backend}_n1"
        spread = " + ".join([str(CONCURRENCY // n)] * n)
        figures.append(
            Figure(
                f"{NAME}.{backend}_n{n}_rate",
                tuple(s.rates),
                "decisions/s",
                baseline=f"{base}_rate",
                ratio=med(s.rates) / med(one.rates) if med(one.rates) else None,
                note=f"{n} mandate serve process{'es' if n > 1 else ''} on one {backend} "
                f"database; {short}, {spread} connections; server CPU {med(s.cpu_ms):.2f} "
                f"ms/decision (all processes); {s.problems} non-2xx or socket errors; ledger "
                f"export of {entries:,} entries verified",
            )
        )
        for which, values, baseline in (("p50", s.p50, one.p50), ("p99", s.p99, one.p99)):
            figures.append(
                Figure(
                    f"{NAME}.{backend}_n{n}_{which}",
                    tuple(values),
                    "ms",
                    baseline=f"{base}_{which}",
                    ratio=med(values) / med(baseline) if med(baseline) else None,
                    note=f"POST /v1/actions {which}, "
                    + (f"the highest of the {n} processes' own" if n > 1 else "one process")
                    + f" ({short}, {CONCURRENCY} in flight)",
                    digits=2,
                )
            )
    return [ctx.figure(f) for f in figures]
