"""The cost of keeping the measured figures up to date, per decision: ``Decider.propose`` with
the figures kept against the same with the figures hook disabled, in the same run.

A ``Runtime`` is started as the gateway starts it (SQLite in WAL mode with
``synchronous=FULL``, the repository's policies, regorus in-process), with a ``booking-agent``
token. Every proposal is a booking that executes (``booking.create``, level 3), with a key of
its own, proposed by 16 asyncio tasks (the gateway's model); each call returns once its
proposal and decision entries are durable. The dispatcher is not started.

- ``with_figures``: the runtime's own ``AutonomyBook``: the decision reads ``input.stats``
  through the per-process cache (refreshed from ``gateway_figures`` once a second, bumped by
  each local decision) and writes the action's row of figures in the ledger transaction.
- ``without_figures`` (baseline): ``AutonomyBook(engine, figures=None)``: levels are read the
  same way, the decision sees zero figures and no row is written.
- ``cpu_with`` and ``cpu_without``: process CPU time per decision (every thread: the event
  loop, the ledger writer, SQLite), which fsync waits do not blur as they blur wall time.
- ``cost``: CPU with − CPU without per decision, in µs, the median of ``CHUNKS`` pairs of
  interleaved chunks per run (with and without alternate, so a noisy neighbour slows both).
  On a busy machine this end-to-end difference is within the noise of a decision's CPU; the
  next two figures measure its parts directly:
- ``stats_read``: ``AutonomyBook.stats``, what a decision pays to read ``input.stats``.
- ``row_write``: building and inserting one row of figures, 16 to a statement as the ledger
  writer batches them.
- ``window_read``: one fresh read of a window (200 latest decisions of a case type whose table
  holds every decision of the run), what a cache miss costs, once a second per case type.
- ``review``: ``Governance.review`` of that case type, what every vote, outcome, audit finding or
  correction costs after its event (a fresh window read and the criteria).
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa

from bench._common import Context, Figure
from gateway.autonomy.figures import WindowSpec, figures_row
from gateway.autonomy.levels import AutonomyBook
from gateway.db.tables import FIGURES
from gateway.decision.decider import Decider
from gateway.identity import Identity
from gateway.schemas import Proposal
from gateway.server.runtime import Runtime
from gateway.settings import Settings
from ledger.entry import format_time

NAME = "autonomy"
GROUP = "autonomy"
DESCRIPTION = "cost of keeping the figures up to date per decision (with vs. without, same run)"

POLICIES = Path(__file__).resolve().parent.parent / "policies"
CONCURRENCY = 16
CHUNKS = 8  # interleaved chunks per run: with and without alternate, so drift hits both


def run(ctx: Context) -> list[Figure]:
    """Measure both variants ``ctx.repeat`` times, interleaved; print medians and the cost."""
    work = ctx.out / "autonomy"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    per_run = 160 if ctx.quick else 4000
    settings = Settings(data_dir=work / "data", policies=POLICIES)
    with ctx.step("starting a runtime (SQLite, WAL, synchronous=FULL)"):
        runtime = Runtime.start(settings)
    try:
        return asyncio.run(_measure(ctx, runtime, per_run))
    finally:
        runtime.close()
        shutil.rmtree(work, ignore_errors=True)


async def _measure(ctx: Context, runtime: Runtime, per_run: int) -> list[Figure]:
    decider = runtime.decider
    _, identity = runtime.tokens.create(name="bench-autonomy", role="booking-agent")
    kept = decider.autonomy
    assert kept.figures is not None
    bare = AutonomyBook(engine=runtime.engine, figures=None)
    books = {"with_figures": kept, "without_figures": bare}
    keys = iter(range(10**9))
    chunk = per_run // CHUNKS

    async def decide(book: AutonomyBook, count: int) -> tuple[float, float]:
        decider.autonomy = book
        proposals = [_proposal(next(keys)) for _ in range(count)]
        return await _propose_all(decider, identity, proposals)

    await decide(kept, chunk)  # warm up: engines, caches, statements
    await decide(bare, chunk)
    ctx.log(
        f"measuring with_figures and without_figures: {per_run:,} decisions per run in "
        f"{CHUNKS} interleaved chunks, {CONCURRENCY} tasks, {ctx.repeat} runs each"
    )
    seconds: dict[str, list[float]] = {name: [] for name in books}
    cpu: dict[str, list[float]] = {name: [] for name in books}
    costs: list[float] = []
    for rep in range(ctx.repeat):
        wall = dict.fromkeys(books, 0.0)
        used = dict.fromkeys(books, 0.0)
        pairs = []
        for at in range(CHUNKS):
            order = list(books) if (rep + at) % 2 == 0 else list(reversed(books))
            each = {}
            for name in order:
                took, spent = await decide(books[name], chunk)
                wall[name] += took
                used[name] += spent
                each[name] = spent / chunk * 1e6
            pairs.append(each["with_figures"] - each["without_figures"])
        for name in books:
            seconds[name].append(wall[name])
            cpu[name].append(used[name] / (chunk * CHUNKS) * 1e6)
        costs.append(statistics.median(pairs))
        ctx.log(
            f"  run {rep + 1}/{ctx.repeat}: "
            + ", ".join(
                f"{n} {chunk * CHUNKS / seconds[n][-1]:,.0f}/s, {cpu[n][-1]:,.0f} µs CPU each"
                for n in books
            )
            + f"; paired difference {costs[-1]:,.1f} µs"
        )
    decider.autonomy = kept

    count = chunk * CHUNKS
    rates = {name: [count / s for s in runs] for name, runs in seconds.items()}
    base = statistics.median(rates["without_figures"])
    cpu_base = statistics.median(cpu["without_figures"])
    figures = [
        Figure(
            f"{NAME}.without_figures",
            tuple(rates["without_figures"]),
            "decisions/s",
            note="baseline: figures hook disabled (zero stats, no row)",
        ),
        Figure(
            f"{NAME}.with_figures",
            tuple(rates["with_figures"]),
            "decisions/s",
            baseline=f"{NAME}.without_figures",
            ratio=statistics.median(rates["with_figures"]) / base,
            note="input.stats from the cache, a row of figures per decision",
        ),
        Figure(
            f"{NAME}.cpu_without",
            tuple(cpu["without_figures"]),
            "µs/decision",
            note="baseline: process CPU (all threads) per decision, figures hook disabled",
            digits=1,
        ),
        Figure(
            f"{NAME}.cpu_with",
            tuple(cpu["with_figures"]),
            "µs/decision",
            baseline=f"{NAME}.cpu_without",
            ratio=statistics.median(cpu["with_figures"]) / cpu_base,
            note="process CPU (all threads) per decision, figures kept",
            digits=1,
        ),
        Figure(
            f"{NAME}.cost",
            tuple(costs),
            "µs/decision",
            baseline=f"{NAME}.cpu_without",
            ratio=statistics.median(costs) / cpu_base,
            note=f"CPU with − without, median of {CHUNKS} interleaved pairs per run",
            digits=1,
        ),
        _stats_read(ctx, kept, decider),
        _row_write(ctx, runtime),
        await _window_read(ctx, runtime),
        await _review(ctx, runtime),
    ]
    return [ctx.figure(figure) for figure in figures]


def _stats_read(ctx: Context, book: AutonomyBook, decider: Decider) -> Figure:
    """The read side of a decision: ``input.stats`` through the cache."""
    bundle = decider.in_force.policy.bundle
    calls = 2000 if ctx.quick else 200_000
    runs = []
    for _ in range(ctx.repeat):
        moment = decider.clock()
        start = time.perf_counter()
        for _ in range(calls):
            book.stats(bundle, "parking", "booking.create", 3, moment)
        runs.append((time.perf_counter() - start) / calls * 1e6)
    return Figure(
        f"{NAME}.stats_read",
        tuple(runs),
        "µs/decision",
        note="input.stats through the cache (a fresh read once a second included)",
        digits=2,
    )


def _row_write(ctx: Context, runtime: Runtime) -> Figure:
    """The write side of a decision: its row of figures, built and inserted 16 to a statement
    as the ledger's writer batches them, inside a transaction that is open anyway (timed
    without it; rolled back at the end, so no fsync: the batch's is paid with or without)."""
    moment = format_time(runtime.clock())
    batches = 20 if ctx.quick else 500
    insert = sa.insert(FIGURES)
    runs = []
    for rep in range(ctx.repeat):
        spent = 0.0
        with runtime.engine.connect() as conn:
            transaction = conn.begin()
            for batch in range(batches):
                start = time.perf_counter()
                rows = [
                    figures_row(
                        f"act_bench_{rep}_{batch}_{i}",
                        "parking",
                        "booking.create",
                        10**9 + batch * CONCURRENCY + i,
                        moment,
                        3,
                        "execute",
                        "execute",
                    )
                    for i in range(CONCURRENCY)
                ]
                conn.execute(insert, rows)
                spent += time.perf_counter() - start
            transaction.rollback()
        runs.append(spent / (batches * CONCURRENCY) * 1e6)
    return Figure(
        f"{NAME}.row_write",
        tuple(runs),
        "µs/decision",
        note=f"build and insert one row of figures, {CONCURRENCY} rows per statement",
        digits=1,
    )


async def _propose_all(
    decider: Decider, identity: Identity, proposals: Sequence[Proposal]
) -> tuple[float, float]:
    """Propose everything with ``CONCURRENCY`` tasks: (wall seconds, process CPU seconds)."""
    shares = [proposals[i::CONCURRENCY] for i in range(CONCURRENCY)]

    async def proposer(share: Sequence[Proposal]) -> None:
        for proposal in share:
            verdict = await decider.propose(identity, proposal)
            assert verdict.verdict == "execute", verdict

    start, used = time.perf_counter(), time.process_time()
    await asyncio.gather(*(proposer(share) for share in shares))
    return time.perf_counter() - start, time.process_time() - used


def _proposal(key: int) -> Proposal:
    return Proposal.model_validate(
        {
            "workflow": "parking",
            "action_type": "booking.create",
            "resource": f"lot-7/space-{key % 400}",
            "params": {"customer": f"C-{key}", "start": "2026-12-01T08:00:00Z"},
            "case_type": "booking.create",
            "confidence": 0.95,
            "context": {"channel": "bench"},
            "idempotency_key": f"bench-autonomy-{key}",
        }
    )


async def _window_read(ctx: Context, runtime: Runtime) -> Figure:
    book = runtime.decider.autonomy
    figures = book.figures
    assert figures is not None
    bundle = runtime.in_force.policy.bundle
    spec: WindowSpec = book.window(bundle, "parking", "booking.create", 3)
    calls = 200 if ctx.quick else 2000
    runs = []
    for _ in range(ctx.repeat):
        start = time.perf_counter()
        for _ in range(calls):
            seen = figures.window(spec, runtime.clock())
        runs.append((time.perf_counter() - start) / calls * 1e6)
    return Figure(
        f"{NAME}.window_read",
        tuple(runs),
        "µs/read",
        note=f"a cache miss: {seen['decisions']} decisions in a window of {spec.size}",
        digits=1,
    )


async def _review(ctx: Context, runtime: Runtime) -> Figure:
    calls = 100 if ctx.quick else 1000
    runs = []
    for _ in range(ctx.repeat):
        start = time.perf_counter()
        for _ in range(calls):
            await runtime.governance.review("parking", "booking.create")
        runs.append((time.perf_counter() - start) / calls * 1e6)
    return Figure(
        f"{NAME}.review",
        tuple(runs),
        "µs/review",
        note="after each vote, outcome, finding or correction: fresh levels, window, criteria",
        digits=1,
    )
