"""A soak: two gateway processes on one database under a steady rate for ten minutes; memory of
each process at the start and at the end, errors (there must be none), the ledger verified.

Run it by name (``python -m bench soak``): a plain ``python -m bench`` leaves it out, ``--quick``
runs it for a few seconds. Two ``mandate serve`` processes share one store (``bench._gateway``:
a SQLite file, or a PostgreSQL schema of the run's own when a URL is given in
``MANDATE_BENCH_DATABASE_URL`` or ``MANDATE_TEST_DATABASE_URL``; ``BENCH_SOAK_DATABASE=sqlite``
or ``postgresql`` chooses) and one signing key. An open-loop client sends ``bench.gateway_http``'s
booking proposal (it executes, so each also writes an execution intent the dispatchers hand
over) at a steady rate, every request with its own idempotency key, alternately to the two
processes: request i is sent at start + i / rate whether or not the earlier ones were answered,
so a slow gateway shows as latency and backlog, not as a lower rate. ``BENCH_SOAK_SECONDS``
(default 600) and ``BENCH_SOAK_RATE`` (default 50 proposals/s) change the run.

Each process's resident memory (``VmRSS``) is read when it is ready (before any load), every
few seconds during the run, and when the load ends; the figures give it at the start and at the
end (the end against the start), with the reading at a tenth of the run (once warm) and the
peak in the note. Errors are non-2xx answers, connection errors and timeouts. At the end the
dispatchers drain, the processes stop, the ledger export is verified offline against the key
and the recorded actions are counted against the answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench._common import Context, Figure, percentile
from bench._gateway import (
    DATABASE_URL_ENVS,
    Served,
    bench_database_url,
    rss_mib,
    serve_many,
    store,
    tokens,
    verify_ledger,
)
from bench._loadgen import KEY_MARK
from bench.gateway_http import PATH, PROPOSAL

NAME = "soak"
GROUP = "soak"
DESCRIPTION = "2 gateway processes, steady 50 proposals/s for 10 min: memory, errors, ledger"
ON_REQUEST = True  # long: only when named (or with --quick), never in a plain `python -m bench`

PROCESSES = 2
RATE = 50.0
SECONDS = 600.0
QUICK_SECONDS = 3.0
_TIMEOUT = 30.0  # seconds an answer may take before it counts as an error


@dataclass
class _Soak:
    """What the steady load saw."""

    sent: int = 0
    ok: int = 0
    non2xx: int = 0
    errors: int = 0  # connection errors and timeouts
    latencies_ms: list[float] = field(default_factory=list)
    max_lag_ms: float = 0.0  # how far behind its schedule the client ever sent
    seconds: float = 0.0
    rss: list[tuple[float, list[float]]] = field(default_factory=list)  # (s since start, MiB)
    per_process: list[int] = field(default_factory=list)  # 2xx answers of each process
    first_problem: str = ""  # the first error or non-2xx answer, for the log


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


def run(ctx: Context) -> list[Figure]:
    """Start two gateways on one store, load them steadily, read memory, verify the ledger."""
    work = ctx.out / NAME
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    seconds = QUICK_SECONDS if ctx.quick else _env_float("BENCH_SOAK_SECONDS", SECONDS)
    rate = _env_float("BENCH_SOAK_RATE", RATE)
    url = bench_database_url()
    backend = os.environ.get("BENCH_SOAK_DATABASE", "").strip() or (
        "postgresql" if url else "sqlite"
    )
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(f"BENCH_SOAK_DATABASE={backend!r}: sqlite or postgresql")
    if backend == "postgresql" and not url:
        raise ValueError(f"BENCH_SOAK_DATABASE=postgresql needs {' or '.join(DATABASE_URL_ENVS)}")
    if backend == "sqlite" and url:
        ctx.log("sqlite: chosen by BENCH_SOAK_DATABASE although a PostgreSQL URL is given")
    elif backend == "sqlite":
        ctx.log(f"sqlite: no PostgreSQL URL given ({' or '.join(DATABASE_URL_ENVS)})")
    ctx.log(
        f"{PROCESSES} mandate serve processes on one {backend} database, {rate:g} proposals/s "
        f"for {seconds:g} s (open loop, alternating between them)"
    )
    with store(work, url if backend == "postgresql" else None, prefix="bench_soak") as where:
        token = tokens(
            where.data_dir,
            [("bench-booking", "booking-agent", None)],
            database_url=where.url,
            env=where.env(),
        )["bench-booking"]
        with serve_many(where, PROCESSES, workdir=work / "gateways") as served:
            pids = [s.process.pid for s in served]
            ctx.log(f"gateways {', '.join(s.url for s in served)} (pids {pids})")
            soak = _run(_steady(served, token, rate, seconds, pids))
            backlog, drained = where.drain()
            exits = [s.process.poll() for s in served]
        ctx.log(
            f"load done: {soak.sent} sent, {soak.ok} 2xx ({' + '.join(map(str, soak.per_process))}"
            f"), {soak.non2xx} non-2xx, {soak.errors} errors; client at most "
            f"{soak.max_lag_ms:.1f} ms behind schedule; {backlog} intents queued at the end, "
            f"drained in {drained:.1f} s; processes alive until the end: "
            f"{all(e is None for e in exits)}"
        )
        if soak.first_problem:
            ctx.log(f"  WARNING: the first error: {soak.first_problem}")
        problems = []
        try:
            verified = verify_ledger(where, work)
        except RuntimeError as exc:
            verified = None
            problems.append(str(exc))
        recorded = where.count("gateway_actions", "verdict")
        entries = where.count("ledger_entries", "kind")
    ctx.log(
        (
            f"export verified: {verified['size']} entries, {verified['checkpoints']} checkpoints"
            if verified
            else "export does NOT verify"
        )
        + f"; actions by verdict {recorded}; ledger entries by kind {entries}"
    )
    figures = _figures(ctx, backend, soak, rate, int(verified["size"]) if verified else None)
    total = sum(recorded.values())
    clean = soak.errors + soak.non2xx == 0
    if set(recorded) - {"execute"} or total < soak.ok or (clean and total != soak.ok):
        problems.append(f"{soak.ok} executes answered, but recorded {recorded}")
    if any(e is not None for e in exits):
        problems.append(f"a gateway process exited during the soak: {exits}")
    if problems:
        raise RuntimeError("; ".join(problems))
    shutil.rmtree(work, ignore_errors=True)  # kept only when the bench failed
    return figures


def _run(main: Coroutine[Any, Any, _Soak]) -> _Soak:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a gateway dependency
        return asyncio.run(main)
    return uvloop.run(main)


async def _steady(
    served: Sequence[Served], token: str, rate: float, seconds: float, pids: list[int]
) -> _Soak:
    soak = _Soak(per_process=[0] * len(served))
    prefix, suffix = json.dumps(PROPOSAL, separators=(",", ":")).split(KEY_MARK)
    tag = secrets.token_hex(4)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=32)
    clients = [
        httpx.AsyncClient(base_url=s.url, headers=headers, timeout=_TIMEOUT, limits=limits)
        for s in served
    ]
    soak.rss.append((0.0, [rss_mib(pid) or float("nan") for pid in pids]))

    async def one(number: int) -> None:
        which = number % len(clients)
        body = f"{prefix}soak-{tag}-{number}{suffix}".encode()
        began = time.perf_counter()
        try:
            answer = await clients[which].post(PATH, content=body)
        except httpx.HTTPError as exc:
            soak.errors += 1
            soak.first_problem = soak.first_problem or f"{type(exc).__name__}: {exc}"
            return
        soak.latencies_ms.append((time.perf_counter() - began) * 1000)
        if 200 <= answer.status_code < 300:
            soak.ok += 1
            soak.per_process[which] += 1
        else:
            soak.non2xx += 1
            soak.first_problem = soak.first_problem or f"{answer.status_code} {answer.text[:300]}"

    every = min(10.0, max(0.5, seconds / 20))
    start = time.perf_counter()

    async def sample() -> None:
        while True:
            await asyncio.sleep(every)
            soak.rss.append(
                (time.perf_counter() - start, [rss_mib(pid) or float("nan") for pid in pids])
            )

    sampler = asyncio.create_task(sample())
    pending: set[asyncio.Task[None]] = set()
    total = int(seconds * rate)
    try:
        for number in range(total):
            due = start + number / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                soak.max_lag_ms = max(soak.max_lag_ms, -delay * 1000)
            task = asyncio.create_task(one(number))
            pending.add(task)
            task.add_done_callback(pending.discard)
            soak.sent += 1
        await asyncio.gather(*pending)
        soak.seconds = time.perf_counter() - start
        soak.rss.append((soak.seconds, [rss_mib(pid) or float("nan") for pid in pids]))
    finally:
        sampler.cancel()
        for client in clients:
            await client.aclose()
    return soak


def _figures(
    ctx: Context, backend: str, soak: _Soak, rate: float, entries: int | None
) -> list[Figure]:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lat = soak.latencies_ms or [float("nan")]
    prefix = f"{NAME}.{backend}"
    figures = [
        Figure(
            f"{prefix}_rate",
            (soak.ok / soak.seconds if soak.seconds else 0.0,),
            "decisions/s",
            target=f"{rate:g}/s steady for {soak.seconds:.0f} s",
            met=soak.ok == soak.sent and soak.ok >= rate * soak.seconds * 0.95,
            note=f"{PROCESSES} mandate serve processes on one {backend} database, open loop, "
            f"{soak.sent} sent, {soak.ok} 2xx; client at most {soak.max_lag_ms:.1f} ms behind "
            f"schedule; load average {load}",
            digits=1,
        ),
        Figure(
            f"{prefix}_errors",
            (float(soak.non2xx + soak.errors),),
            "errors",
            target="0",
            met=soak.non2xx + soak.errors == 0,
            note=f"{soak.non2xx} non-2xx, {soak.errors} connection errors or timeouts "
            f"({_TIMEOUT:g} s) of {soak.sent}",
        ),
        Figure(
            f"{prefix}_p50",
            (percentile(lat, 50),),
            "ms",
            note=f"POST /v1/actions at {rate:g}/s",
            digits=2,
        ),
        Figure(
            f"{prefix}_p99",
            (percentile(lat, 99),),
            "ms",
            note=f"POST /v1/actions at {rate:g}/s; max {max(lat):.1f} ms",
            digits=2,
        ),
        Figure(
            f"{prefix}_ledger",
            (float(entries) if entries is not None else float("nan"),),
            "entries",
            target="export verifies",
            met=entries is not None,
            note="mandate ledger export, verified offline against the public key; every 2xx "
            "answer a recorded execute",
        ),
    ]
    first, last = soak.rss[0][1], soak.rss[-1][1]
    warm_at = soak.seconds / 10
    warm = next((mib for t, mib in soak.rss if t >= warm_at), last)
    for i in range(PROCESSES):
        peak = max(mib[i] for _, mib in soak.rss)
        figures.append(
            Figure(
                f"{prefix}_p{i}_rss_start",
                (first[i],),
                "MiB",
                note=f"process {i} VmRSS when ready, before any load",
                digits=1,
            )
        )
        figures.append(
            Figure(
                f"{prefix}_p{i}_rss_end",
                (last[i],),
                "MiB",
                baseline=f"{prefix}_p{i}_rss_start",
                ratio=last[i] / first[i] if first[i] else None,
                note=f"process {i} VmRSS when the load ended; {warm[i]:.1f} MiB at "
                f"{warm_at:.0f} s (warm), end {last[i] - warm[i]:+.1f} MiB from there; peak "
                f"{peak:.1f} MiB; {len(soak.rss)} readings; load average {load}",
                digits=1,
            )
        )
    ctx.log(
        "rss MiB over time: "
        + "; ".join(f"{t:.0f} s " + "/".join(f"{m:.1f}" for m in mib) for t, mib in soak.rss[::4])
    )
    return [ctx.figure(f) for f in figures]
