"""Replay rate over a 100,000-proposal ledger against the live decide rate of the same run.

- The history: 100,000 proposals (500 with ``--quick``) of the demo's mix (bookings, refunds,
  claims; routine work, holds, Casbin and policy rejects) decided by ``Decider.propose`` on a
  ``Runtime`` started as the gateway starts it (SQLite, WAL, ``synchronous=FULL``, the
  repository's bundle), 32 proposals at a time. Built once under ``bench/out/replay/`` and
  reused while its metadata says it is complete.
- ``live_decide`` (the baseline): ``Decider.propose`` of the same mix on a fresh Runtime, 16 at a
  time, durable ledger append included: the rate at which the gateway decides live.
- ``replay``: ``gateway.lifecycle.replay.Replayer`` over the whole history with the bundle that
  made each decision (read from the database): every decision entry is read back in pages, its
  inputs rebuilt and decided again, one at a time in one thread. The note says how many verdicts
  changed (0 expected) and how many Rego inputs did not rebuild byte for byte (0 expected).

The issue asks replay not to be slower than live deciding: ``replay`` >= 100 % of
``live_decide``. Runs of the two are interleaved.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from bench._common import Context, Figure
from bench.dataset import remove_sqlite
from gateway.cli.demo import proposals as demo_mix
from gateway.identity import Identity
from gateway.lifecycle.replay import Replayer
from gateway.lifecycle.slots import BundleStore
from gateway.policy.active import build_policy
from gateway.schemas import Proposal
from gateway.server.runtime import Runtime
from gateway.settings import Settings
from ledger.database import create_engine, sqlite_url
from ledger.store import Ledger

NAME = "replay"
GROUP = "policy"
DESCRIPTION = "replay decisions/s over a 100,000-proposal ledger vs live Decider.propose"

POLICIES = Path(__file__).resolve().parent.parent / "policies"
_FORMAT = 1  # bump when the history built here changes, so an old one is rebuilt
_BUILD_CONCURRENCY = 32
_LIVE_CONCURRENCY = 16
TARGET = 1.0


def run(ctx: Context) -> list[Figure]:
    """Build (or reuse) the history, then measure live deciding and replay, interleaved."""
    size = 500 if ctx.quick else 100_000
    live_count = 100 if ctx.quick else 3_000
    base = ctx.out / "replay"
    history = base / f"history-{size}"
    with ctx.step(f"history: {size:,} proposals under {history}"):
        meta = _history(ctx, history, size)
    ctx.log(
        f"  {meta['proposals']:,} proposals, {meta['decisions']:,} decisions, "
        f"{meta['entries']:,} entries; verdicts {meta['verdicts']}"
    )
    engine = create_engine(sqlite_url(history / "mandate.db"))
    ledger = Ledger(engine, origin=Settings().ledger_origin)  # read only: no writer
    store = BundleStore(engine)
    live_dir = base / "live"
    shutil.rmtree(live_dir, ignore_errors=True)
    runtime = _runtime(live_dir)
    live_rates: list[float] = []
    replay_rates: list[float] = []
    changed: list[int] = []
    mismatches: list[int] = []
    decisions = 0
    try:
        identities = _identities(runtime)
        batches = iter(range(10**9))
        ctx.log(
            f"measuring live_decide ({live_count:,} proposals per run, {_LIVE_CONCURRENCY} at "
            f"a time) and replay (all {meta['decisions']:,} decisions), {ctx.repeat} runs each"
        )
        for rep in range(ctx.repeat):
            mix = _mix(live_count, seed=1000 + next(batches))
            seconds = asyncio.run(_propose_all(runtime, identities, mix, _LIVE_CONCURRENCY))
            live_rates.append(live_count / seconds)
            replayer = Replayer(
                ledger, engine, None, recorded=lambda d: build_policy(store.bundle(d))
            )
            started = time.perf_counter()
            report = replayer.run()
            seconds = time.perf_counter() - started
            decisions = report.decisions
            replay_rates.append(report.decisions / seconds)
            changed.append(report.changed)
            mismatches.append(report.input_mismatches)
            ctx.log(
                f"  run {rep + 1}/{ctx.repeat}: live_decide {live_rates[-1]:,.0f}/s, replay "
                f"{replay_rates[-1]:,.0f}/s ({report.decisions:,} decisions in {seconds:.1f} s, "
                f"{report.changed} changed, {report.input_mismatches} input mismatches)"
            )
    finally:
        runtime.close()
        engine.dispose()
        shutil.rmtree(live_dir, ignore_errors=True)
    live = statistics.median(live_rates)
    ratio = statistics.median(replay_rates) / live
    return [
        ctx.figure(
            Figure(
                f"{NAME}.live_decide",
                tuple(live_rates),
                "decisions/s",
                baseline=f"{NAME}.live_decide",
                ratio=1.0,
                note=f"baseline: Decider.propose of the demo mix, {_LIVE_CONCURRENCY} at a time, "
                f"durable append included; {live_count:,} proposals per run",
            )
        ),
        ctx.figure(
            Figure(
                f"{NAME}.replay",
                tuple(replay_rates),
                "decisions/s",
                baseline=f"{NAME}.live_decide",
                ratio=ratio,
                target=f">= {TARGET:.0%} of live_decide",
                met=ratio >= TARGET,
                note=f"Replayer over {decisions:,} decisions of a {size:,}-proposal ledger with "
                f"the recorded bundles, one thread; verdicts changed {max(changed)}, Rego "
                f"inputs not rebuilt {max(mismatches)} (0 and 0 expected)",
            )
        ),
    ]


def _runtime(data_dir: Path) -> Runtime:
    settings = Settings(
        data_dir=data_dir,
        policies=POLICIES,
        database_url=None,
        opa_url=None,
        webhooks={},
        notify_url=None,
    )
    return Runtime.start(settings)


def _identities(runtime: Runtime) -> dict[str, Identity]:
    tag = time.monotonic_ns()
    return {
        role: runtime.tokens.create(name=f"bench-{role}-{tag}", role=role)[1]
        for role in ("booking-agent", "payments-agent", "claims-agent")
    }


def _mix(count: int, seed: int) -> list[tuple[str, Proposal]]:
    return [(role, Proposal.model_validate(body)) for role, body in demo_mix(count, seed=seed)]


async def _propose_all(
    runtime: Runtime,
    identities: dict[str, Identity],
    mix: Sequence[tuple[str, Proposal]],
    concurrency: int,
) -> float:
    """Seconds for ``concurrency`` tasks to propose ``mix``."""
    calls = [partial(runtime.decider.propose, identities[role], p) for role, p in mix]
    shares = [calls[i::concurrency] for i in range(concurrency)]

    async def worker(share: Sequence[partial[Any]]) -> None:
        for call in share:
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(worker(share) for share in shares))
    return time.perf_counter() - started


def _history(ctx: Context, root: Path, size: int) -> dict[str, Any]:
    """The history's metadata; built first if there is no complete one."""
    meta_path = root / "meta.json"
    if meta_path.exists():
        meta: dict[str, Any] = json.loads(meta_path.read_text())
        if meta.get("format") == _FORMAT and meta.get("complete") and meta["proposals"] == size:
            ctx.log("  reusing it (delete the directory to rebuild)")
            return meta
    shutil.rmtree(root, ignore_errors=True)
    remove_sqlite(root / "mandate.db")
    runtime = _runtime(root)
    try:
        identities = _identities(runtime)
        started = time.perf_counter()
        for at in range(0, size, 10_000):
            mix = _mix(min(10_000, size - at), seed=at)
            asyncio.run(_propose_all(runtime, identities, mix, _BUILD_CONCURRENCY))
            ctx.log(f"  {at + len(mix):,} proposals ({time.perf_counter() - started:.0f} s)")
        entries = runtime.ledger.size()
    finally:
        runtime.close()
    engine = create_engine(sqlite_url(root / "mandate.db"))
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT verdict, count(*) FROM gateway_actions GROUP BY verdict"
            ).all()
            decisions = conn.exec_driver_sql(
                "SELECT count(*) FROM ledger_entries WHERE kind = 'decision'"
            ).scalar_one()
    finally:
        engine.dispose()
    meta = {
        "format": _FORMAT,
        "proposals": size,
        "decisions": int(decisions),
        "entries": entries,
        "verdicts": {str(v): int(n) for v, n in rows},
        "complete": True,
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta
