"""The cost of ``input.history`` per decision: ``HistoryBook.signals`` on a gateway database that
already holds a history (SQLite, WAL, the gateway's tables and indexes), and what one conformance
run of the shipped bundles costs.

The tables hold ``ROWS`` decided actions by 50 executors over 40 resources each, with their rows
of figures (amounts of 20.00 to 999.99, two in three executed). Then, per decision:

- ``steady``: a known executor, a known action type, a new resource each time (the common case
  of a busy gateway): the facts remembered, the hourly count and the amounts through their
  one-second caches; what is left is one indexed look-up of the resource.
- ``known``: a known executor and resource, every cache warm: no query at all.
- ``cold``: a new executor each time, caches emptied: every query (the action type, the
  resource, the hourly count, 200 amounts of the case type's window).
- ``conformance``: seconds for ``check_conformance`` of the shipped bundle (both engines over
  its Rego tests, decision cases and generated inputs); only where OPA's evaluator is installed.
"""

from __future__ import annotations

import datetime as dt
import random
import shutil
import time
from pathlib import Path

import sqlalchemy as sa

from bench._common import Context, Figure
from gateway.autonomy.figures import figures_row
from gateway.db.connect import open_engine
from gateway.db.tables import ACTIONS, FIGURES, create_gateway_tables
from gateway.decision.history import HistoryBook, resource_digest
from gateway.policy.bundle import load_bundle
from gateway.policy.opa import opa_available
from gateway.settings import Settings
from ledger.entry import format_time

NAME = "history"
GROUP = "gateway"
DESCRIPTION = "cost of input.history per decision; conformance run time of the shipped bundle"

POLICIES = Path(__file__).resolve().parent.parent / "policies"
WINDOW = (200, 30)
NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


def run(ctx: Context) -> list[Figure]:
    work = ctx.out / "history"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows = 2_000 if ctx.quick else 100_000
    calls = 200 if ctx.quick else 5_000
    settings = Settings(data_dir=work / "data", policies=POLICIES)
    engine = open_engine(settings)
    try:
        create_gateway_tables(engine)
        with ctx.step(f"writing {rows:,} decided actions and their figures"):
            _fill(engine, rows)
        figures = [
            _per_call(ctx, "steady", engine, calls, new_resource=True),
            _per_call(ctx, "known", engine, calls, new_resource=False),
            _per_call(ctx, "cold", engine, max(calls // 10, 20), new_resource=True, cold=True),
        ]
        if opa_available():
            figures.append(_conformance(ctx))
        return [ctx.figure(f) for f in figures]
    finally:
        engine.dispose()
        shutil.rmtree(work, ignore_errors=True)


def _fill(engine: sa.engine.Engine, rows: int) -> None:
    rng = random.Random(7)
    actions, figures = [], []
    for n in range(rows):
        when = format_time(NOW - dt.timedelta(seconds=rows - n))
        executor = f"agent-{n % 50}"
        resource = f"claim/{n % 50}-{n % 40}"
        verdict = "execute" if n % 3 else "hold"
        action_id = f"act_{n:012d}"
        actions.append(
            {
                "id": action_id, "owner": executor, "idempotency_key": f"k{n}",
                "request_digest": "0" * 64, "executor": executor, "workflow": "claims",
                "case_type": "claim.approve", "action_type": "claim.approve",
                "verdict": verdict, "status": "approved", "proposal_seq": 2 * n,
                "decision_seq": 2 * n + 1, "decision_leaf": "0" * 64, "response": b"{}",
                "created_at": when, "resource_digest": resource_digest(resource),
            }
        )  # fmt: skip
        amount = f"{rng.randint(2000, 99999) / 100:.2f}"
        figures.append(
            figures_row(action_id, "claims", "claim.approve", 2 * n + 1, when, 3, verdict,
                        verdict, amount=amount)
        )  # fmt: skip
    with engine.begin() as conn:
        for start in range(0, rows, 5_000):
            conn.execute(sa.insert(ACTIONS), actions[start : start + 5_000])
            conn.execute(sa.insert(FIGURES), figures[start : start + 5_000])


def _per_call(
    ctx: Context,
    name: str,
    engine: sa.engine.Engine,
    calls: int,
    *,
    new_resource: bool,
    cold: bool = False,
) -> Figure:
    runs = []
    for r in range(ctx.repeat):
        book = HistoryBook(engine)
        book.signals("agent-1", _proposal("claim/1-1"), "claim.approve", WINDOW, NOW)  # warm
        started = time.perf_counter()
        for n in range(calls):
            if cold:
                book = HistoryBook(engine)
            executor = f"new-{r}-{n}" if cold else "agent-1"
            resource = f"claim/new-{r}-{n}" if new_resource else "claim/1-1"
            history = book.signals(executor, _proposal(resource), "claim.approve", WINDOW, NOW)
            assert history["amounts"]["count"] == WINDOW[0]
        runs.append((time.perf_counter() - started) / calls * 1e6)
    return Figure(f"{NAME}.{name}", tuple(runs), "µs/decision", digits=1)


def _proposal(resource: str) -> dict[str, object]:
    return {
        "workflow": "claims",
        "action_type": "claim.approve",
        "resource": resource,
        "params": {"amount": "500.00"},
    }


def _conformance(ctx: Context) -> Figure:
    from gateway.lifecycle.conformance import check_conformance

    bundle = load_bundle(POLICIES)
    runs = []
    for _ in range(1 if ctx.quick else min(ctx.repeat, 3)):
        report = check_conformance(bundle)
        assert report.passed, report.disagreements[:3]
        runs.append(report.seconds)
    note = (
        f"{report.tests} Rego tests, {report.cases} cases, {report.generated} generated inputs, "
        "both engines"
    )
    return Figure(f"{NAME}.conformance", tuple(runs), "s", digits=1, note=note)
