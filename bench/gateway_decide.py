"""In-process decisions: ``Decider.propose`` with no HTTP, durable ledger append included.

A ``Runtime`` is started as the gateway starts it (``Runtime.start(Settings(...))``: SQLite in
WAL mode with ``synchronous=FULL``, the repository's policies, regorus in-process) on a uvloop
event loop, with a ``booking-agent`` token from ``runtime.tokens``. Every proposal is a booking
that executes (``booking.create``, confidence 0.95, level 3) with a key of its own, so each
runs validate, the idempotency look-up, permit, evaluate, decide and the append of its
proposal and decision entries (and its execution intent, in the same transaction); the call
returns once they are durable. The dispatcher is not started: the intents stay queued
(dispatch is measured by the ``dispatch`` group, and with HTTP by ``gateway_http``).

- ``decide_c1``: one caller, one proposal at a time; ``decide_c16``: 16 asyncio tasks.
  Latency is per ``propose`` call; decisions/s is proposals over the wall time of the run.
- baselines ``ledger_c1`` and ``ledger_c16``: the same Ledger appending the same two entries
  per call (the bodies of a recorded proposal and decision) with ``append_many_async``, at the
  same concurrency: the floor that the durable append alone sets.
- ``judge``: ``Decider.judged`` alone, the policy's check (permit, classify, the level and its
  figures, the history signals, evaluate, decide; no idempotency look-up, no trace, no ledger),
  one call at a time: the CPU the decision itself costs. ``judge_p50`` against the peer's:
  Microsoft AGT's ``PolicyEngine.evaluate`` p50 (its own bench, 5 rules; it keeps no trace),
  run between our runs when its venv is there (``BENCH_AGT_VENV``, default where its
  ``setup.sh`` puts it; ``BENCH_AGT_SCRIPT``, default ``../shared/peers/agt/bench_agt.py`` beside
  the checkout or its parent). ``judgement_p50``: ``Decider.judgement``, the same with the
  trace the ledger records (the input's digest among it).
- ``sealed_c1`` and ``sealed_c16``: the same booking with a customer's personal data (id,
  email, name: the fields the bundle seals), one of ``CUSTOMERS`` customers each, against
  ``decide_c*``, whose bookings carry none. ``seal_c1``: what sealing adds to a decision at
  concurrency 1 (microseconds, from the two rates of each run).
- ``novel_c16``: the same booking, 16 at a time, each naming a resource never seen before, so
  that each decision reads the history signals' resource look-up (``input.history``:
  ``first_resource``) from the database, against ``decide_c16``, whose resource is always the
  same (known after the first decision).
- ``erase``: ``Ledger.erase`` of one customer after the runs (all their sealed values, WAL
  emptied included), in milliseconds; ``erase_per_decision``: that over their decisions.

One Runtime serves all runs (the ledger grows as it would in a running gateway); runs of the
variants are interleaved.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench._common import Context, Figure, percentile
from bench._gateway import POLICIES, REPO
from gateway.identity import Identity
from gateway.schemas import Proposal
from gateway.server.runtime import Runtime
from gateway.settings import Settings
from ledger.store import Record

NAME = "gateway_decide"
GROUP = "gateway"
DESCRIPTION = "in-process Decider.propose, durable append included: p50/p99, decisions/s, 1 and 16"

CONCURRENCIES = (1, 16)
CUSTOMERS = 40
_PROPOSAL: dict[str, Any] = {
    "workflow": "parking",
    "action_type": "booking.create",
    "resource": "lot-7/space-42",
    "params": {"start": "2026-12-01T08:00:00Z", "spaces": "1"},
    "case_type": "booking.create",
    "confidence": 0.95,
    "context": {"channel": "bench", "agent_run": "r-0001"},
}


@dataclass
class _Variant:
    name: str
    concurrency: int
    count: int
    rates: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)  # ms
    p99: list[float] = field(default_factory=list)  # ms


def run(ctx: Context) -> list[Figure]:
    """Start a Runtime on a uvloop loop, measure every variant ``ctx.repeat`` times."""
    work = ctx.out / NAME
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        loop_name = "uvloop"
    except ImportError:  # pragma: no cover - uvloop is a gateway dependency
        runner = asyncio.Runner()
        loop_name = "asyncio"
    with runner:
        figures = runner.run(_main(ctx, work, loop_name))
    shutil.rmtree(work, ignore_errors=True)  # kept only when the bench failed
    return figures


async def _main(ctx: Context, work: Path, loop_name: str) -> list[Figure]:
    n1 = 20 if ctx.quick else 300
    n16 = 64 if ctx.quick else 1200
    n_judge = 50 if ctx.quick else 2000
    settings = Settings(
        data_dir=work / "data",
        policies=POLICIES,
        database_url=None,
        opa_url=None,
        webhooks={},
        notify_url=None,
    )
    with ctx.step(f"setup: Runtime.start on {loop_name} (SQLite in {settings.data_dir})"):
        runtime = Runtime.start(settings)
    try:
        _, identity = runtime.tokens.create(name="bench-booking", role="booking-agent")
        tag = secrets.token_hex(3)
        counter = iter(range(10**9))

        decided: dict[str, int] = {}  # customer → sealed decisions

        def proposals(count: int, *, sealed: bool = False, novel: bool = False) -> list[Proposal]:
            made = []
            for _ in range(count):
                n = next(counter)
                body = _PROPOSAL | {"idempotency_key": f"bench-{tag}-{n}"}
                if novel:
                    body["resource"] = f"lot-{tag}/space-{n}"
                if sealed:
                    customer = f"C-{n % CUSTOMERS:04d}"
                    decided[customer] = decided.get(customer, 0) + 1
                    body["params"] = body["params"] | {
                        "customer": customer,
                        "customer_email": f"customer.{n % CUSTOMERS}@example.org",
                        "customer_name": f"Customer Number {n % CUSTOMERS}",
                    }
                made.append(Proposal.model_validate(body))
            return made

        first = await runtime.decider.propose(identity, proposals(1)[0])
        if first.verdict != "execute":
            raise RuntimeError(f"the bench proposal was not executed: {first.verdict}")
        bodies = (
            runtime.ledger.entry(first.ledger.proposal_seq).body,
            runtime.ledger.entry(first.ledger.decision_seq).body,
        )
        with ctx.step("warm-up: 200 proposals, 16 at a time"):
            await _concurrent(runtime, identity, proposals(200 if not ctx.quick else 32), 16)

        variants = [
            _Variant("ledger_c1", 1, n1),
            _Variant("decide_c1", 1, n1),
            _Variant("sealed_c1", 1, n1),
            _Variant("ledger_c16", 16, n16),
            _Variant("decide_c16", 16, n16),
            _Variant("sealed_c16", 16, n16),
            _Variant("novel_c16", 16, n16),
        ]
        judge_us: list[float] = []
        judge_p50: list[float] = []
        judgement_p50: list[float] = []
        agt_p50: list[float] = []
        ctx.log(
            f"measuring {', '.join(v.name for v in variants)} and judge: {n1} calls per run at "
            f"concurrency 1, {n16} at 16, {n_judge} judge calls; {ctx.repeat} runs, interleaved"
        )
        for rep in range(ctx.repeat):
            for v in variants:
                if not v.name.startswith("ledger"):
                    batch = proposals(
                        v.count,
                        sealed=v.name.startswith("sealed"),
                        novel=v.name.startswith("novel"),
                    )
                    seconds, latencies = await _concurrent(runtime, identity, batch, v.concurrency)
                else:
                    records = [
                        [
                            Record("proposal", identity.name, f"act_bench_{i}", bodies[0]),
                            Record("decision", "mandate", f"act_bench_{i}", bodies[1]),
                        ]
                        for i in range(v.count)
                    ]
                    seconds, latencies = await _timed(
                        [partial(runtime.ledger.append_many_async, r) for r in records],
                        v.concurrency,
                    )
                v.rates.append(v.count / seconds)
                v.p50.append(percentile(latencies, 50) * 1000)
                v.p99.append(percentile(latencies, 99) * 1000)
            calls, traced = _judge(runtime, identity, proposals(n_judge))
            judge_us.append(statistics.fmean(calls) * 1e6)
            judge_p50.append(percentile(calls, 50) * 1e6)
            judgement_p50.append(percentile(traced, 50) * 1e6)
            peer = _agt_p50(ctx.quick)
            if peer is not None:
                agt_p50.append(peer)
            ctx.log(
                f"  run {rep + 1}/{ctx.repeat}: "
                + ", ".join(
                    f"{v.name} {v.rates[-1]:,.0f}/s p50 {v.p50[-1]:.2f} ms p99 {v.p99[-1]:.2f} ms"
                    for v in variants
                )
                + f", judge {judge_us[-1]:.0f} us (p50 {judge_p50[-1]:.0f} us)"
                + (f", AGT policy check p50 {agt_p50[-1]:.0f} us" if agt_p50 else "")
            )
        ctx.log(f"ledger size at the end: {runtime.ledger.size():,} entries")
        erasures = await _erase(runtime, decided, 3 if ctx.quick else 10)
    finally:
        runtime.close()
    return (
        _figures(ctx, variants, judge_us)
        + _judge_figures(ctx, judge_p50, agt_p50, judgement_p50)
        + _seal_figures(ctx, variants, erasures)
    )


async def _erase(runtime: Runtime, decided: dict[str, int], count: int) -> list[tuple[float, int]]:
    """(seconds, decisions) of erasing ``count`` customers, one after the other."""
    done = []
    for customer in sorted(decided)[:count]:
        began = time.perf_counter()
        erased = await asyncio.to_thread(
            runtime.ledger.erase, customer, actor="bench", reason="bench erasure"
        )
        done.append((time.perf_counter() - began, decided[customer]))
        if erased is None:
            raise RuntimeError(f"nothing was sealed for {customer}")
    return done


async def _concurrent(
    runtime: Runtime, identity: Identity, batch: Sequence[Proposal], concurrency: int
) -> tuple[float, list[float]]:
    async def one(proposal: Proposal) -> None:
        verdict = await runtime.decider.propose(identity, proposal)
        if verdict.verdict != "execute":
            raise RuntimeError(f"unexpected verdict {verdict.verdict}")

    return await _timed([partial(one, p) for p in batch], concurrency)


async def _timed(
    calls: Sequence[Callable[[], Awaitable[Any]]], concurrency: int
) -> tuple[float, list[float]]:
    """Run ``calls`` with ``concurrency`` workers; (wall seconds, per-call seconds)."""
    latencies: list[float] = []
    shares = [calls[i::concurrency] for i in range(concurrency)]

    async def worker(share: Sequence[Callable[[], Awaitable[Any]]]) -> None:
        for call in share:
            began = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - began)

    start = time.perf_counter()
    await asyncio.gather(*(worker(share) for share in shares))
    return time.perf_counter() - start, latencies


def _judge(
    runtime: Runtime, identity: Identity, batch: Sequence[Proposal]
) -> tuple[list[float], list[float]]:
    """Seconds of each ``Decider.judged`` call (the policy's check), and of each
    ``Decider.judgement`` call (the same and the trace), on alternate proposals."""
    decider = runtime.decider
    policy = decider.in_force.policy
    judged: list[float] = []
    traced: list[float] = []
    clock = time.perf_counter
    for n, proposal in enumerate(batch):
        call = decider.judged if n % 2 == 0 else decider.judgement
        began = clock()
        call(identity, proposal, policy, decider.clock())
        (judged if n % 2 == 0 else traced).append(clock() - began)
    return judged, traced


def _agt_paths() -> tuple[Path, Path] | None:
    """The peer's Python and bench script, or None when either is not there."""
    default_venv = Path(tempfile.gettempdir()) / "peer-agt" / "venv"
    python = Path(os.environ.get("BENCH_AGT_VENV", default_venv)) / "bin" / "python"
    scripts = [Path(os.environ["BENCH_AGT_SCRIPT"])] if "BENCH_AGT_SCRIPT" in os.environ else []
    scripts += [where / "shared" / "peers" / "agt" / "bench_agt.py" for where in REPO.parents[:2]]
    script = next((s for s in scripts if s.exists()), None)
    return (python, script) if script is not None and python.exists() else None


def _agt_p50(quick: bool) -> float | None:
    """Microsoft AGT's policy check p50 in microseconds (its bench, one run), or None."""
    paths = _agt_paths()
    if paths is None:
        return None
    python, script = paths
    sizes = ["--evals", "2000" if quick else "20000", "--appends", "1000", "--chain", "2000"]
    done = subprocess.run(
        [str(python), str(script), *sizes, "--runs", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the AGT peer bench failed: {done.stderr[-2000:]}")
    return float(json.loads(done.stdout)["policy_eval"]["p50_latency_us"])


def _judge_figures(
    ctx: Context, judge_p50: list[float], agt_p50: list[float], judgement_p50: list[float]
) -> list[Figure]:
    traced = Figure(
        f"{NAME}.judgement_p50",
        tuple(judgement_p50),
        "us/call",
        baseline=f"{NAME}.judge_p50",
        ratio=statistics.median(judgement_p50) / statistics.median(judge_p50),
        note="Decider.judgement p50: the policy's check and the trace the ledger records "
        "(the input's canonical JSON and digest among it)",
    )
    if not agt_p50:
        ctx.log("the AGT peer is not installed: no judge_p50 against it (see the module)")
        return [
            ctx.figure(Figure(f"{NAME}.judge_p50", tuple(judge_p50), "us/call")),
            ctx.figure(traced),
        ]
    ratio = statistics.median(judge_p50) / statistics.median(agt_p50)
    figures = [
        Figure(
            f"{NAME}.agt_policy_p50",
            tuple(agt_p50),
            "us/call",
            baseline=f"{NAME}.agt_policy_p50",
            ratio=1.0,
            note="peer: Microsoft AGT PolicyEngine.evaluate p50, 5-rule YAML policy, its own "
            "bench (one run of 20,000 checks between each of ours)",
        ),
        Figure(
            f"{NAME}.judge_p50",
            tuple(judge_p50),
            "us/call",
            baseline=f"{NAME}.agt_policy_p50",
            ratio=ratio,
            target="<= 100% of agt_policy_p50",
            met=ratio <= 1.0,
            note="Decider.judged p50, the policy's check: permit (Casbin, cached), classify "
            "and evaluate (Rego), the level, its figures and the history signals, decide",
        ),
        traced,
    ]
    return [ctx.figure(f) for f in figures]


def _figures(ctx: Context, variants: list[_Variant], judge_us: list[float]) -> list[Figure]:
    by = {v.name: v for v in variants}
    figures: list[Figure] = []
    for c in CONCURRENCIES:
        ledger, decide = by[f"ledger_c{c}"], by[f"decide_c{c}"]
        base = statistics.median(ledger.rates)
        figures.append(
            Figure(
                f"{NAME}.ledger_c{c}_rate",
                tuple(ledger.rates),
                "appends/s",
                baseline=f"{NAME}.ledger_c{c}_rate",
                ratio=1.0,
                note=f"baseline: append_many_async of a recorded proposal and decision entry, "
                f"{c} at a time; p50 {statistics.median(ledger.p50):.2f} ms, "
                f"p99 {statistics.median(ledger.p99):.2f} ms",
            )
        )
        figures.append(
            Figure(
                f"{NAME}.decide_c{c}_rate",
                tuple(decide.rates),
                "decisions/s",
                baseline=f"{NAME}.ledger_c{c}_rate",
                ratio=statistics.median(decide.rates) / base,
                note=f"Decider.propose, {c} at a time, durable append included; "
                f"{decide.count} proposals per run",
            )
        )
        for which in ("p50", "p99"):
            values = getattr(decide, which)
            figures.append(
                Figure(
                    f"{NAME}.decide_c{c}_{which}",
                    tuple(values),
                    "ms",
                    note=f"Decider.propose {which} latency at concurrency {c} (ledger alone: "
                    f"{statistics.median(getattr(ledger, which)):.2f} ms)",
                    digits=2,
                )
            )
    figures.append(
        Figure(
            f"{NAME}.judge",
            tuple(judge_us),
            "us/call",
            note="Decider.judged alone (mean): permit (cached), classify, Rego evaluate, "
            "decide; no idempotency look-up, no trace, no ledger",
        )
    )
    return [ctx.figure(f) for f in figures]


def _seal_figures(
    ctx: Context, variants: list[_Variant], erasures: list[tuple[float, int]]
) -> list[Figure]:
    by = {v.name: v for v in variants}
    figures: list[Figure] = []
    for c in CONCURRENCIES:
        plain, sealed = by[f"decide_c{c}"], by[f"sealed_c{c}"]
        figures.append(
            Figure(
                f"{NAME}.sealed_c{c}_rate",
                tuple(sealed.rates),
                "decisions/s",
                baseline=f"{NAME}.decide_c{c}_rate",
                ratio=statistics.median(sealed.rates) / statistics.median(plain.rates),
                note=f"bookings with a customer's id, email and name sealed, {c} at a time; "
                f"p50 {statistics.median(sealed.p50):.2f} ms (without: "
                f"{statistics.median(plain.p50):.2f} ms)",
            )
        )
    novel, plain = by["novel_c16"], by["decide_c16"]
    figures.append(
        Figure(
            f"{NAME}.novel_c16_rate",
            tuple(novel.rates),
            "decisions/s",
            baseline=f"{NAME}.decide_c16_rate",
            ratio=statistics.median(novel.rates) / statistics.median(plain.rates),
            note="bookings each on a resource never seen, 16 at a time: the history's "
            f"resource look-up read each time; p50 {statistics.median(novel.p50):.2f} ms "
            f"(a known resource: {statistics.median(plain.p50):.2f} ms)",
        )
    )
    plain, sealed = by["decide_c1"], by["sealed_c1"]
    added = tuple((1 / s - 1 / p) * 1e6 for s, p in zip(sealed.rates, plain.rates, strict=True))
    figures.append(
        Figure(
            f"{NAME}.seal_c1",
            added,
            "us/decision",
            note="what sealing 3 fields adds to a decision at concurrency 1 (each run's rates)",
        )
    )
    figures.append(
        Figure(
            f"{NAME}.erase",
            tuple(seconds * 1000 for seconds, _ in erasures),
            "ms",
            note=f"Ledger.erase of one customer, WAL emptied; "
            f"{statistics.median(n for _, n in erasures):.0f} decisions each",
            digits=1,
        )
    )
    figures.append(
        Figure(
            f"{NAME}.erase_per_decision",
            tuple(seconds * 1000 / n for seconds, n in erasures),
            "ms/decision",
            note="an erasure's time over the customer's decisions (3 values each)",
            digits=2,
        )
    )
    return [ctx.figure(f) for f in figures]
