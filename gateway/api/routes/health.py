"""Liveness, readiness and metrics."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from sqlalchemy.engine import Engine

from gateway.api.deps import AUTH_PROBLEMS, Caller, Rt
from gateway.api.strict_json import StrictJSONRoute
from gateway.autonomy.figures import ZERO_FIGURES
from gateway.db.migrations import schema_fault
from gateway.decision.steps import rego_input
from gateway.identity import Identity
from gateway.policy.active import ActivePolicy
from ledger.database import check_writable, sqlite_room
from ledger.entry import format_time
from ledger.store import Ledger

router = APIRouter(tags=["health"], route_class=StrictJSONRoute)


@router.get("/healthz", summary="Liveness: the process answers (no token needed)")
async def healthz() -> dict[str, str]:
    """Answers while the process is alive."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: database, ledger, signing key and policy engine all usable",
    responses=AUTH_PROBLEMS
    | {503: {"description": "Something the decision path needs is unavailable."}},
)
def readyz(runtime: Rt, _caller: Caller) -> Response:
    """Every part a decision needs, checked now; 503 names what is not ready."""
    checks: dict[str, str] = {}
    try:
        with runtime.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        checks["database"] = schema_fault(runtime.engine) or "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {_why(exc)}"
    try:
        checks["ledger"] = _ledger_check(runtime.ledger, runtime.engine)
    except Exception as exc:
        checks["ledger"] = f"unavailable: {_why(exc)}"
    try:
        room = sqlite_room(runtime.engine)
        if room is not None:
            checks["disk"] = _disk_check(room, _ROOM_PER_BODY * runtime.settings.max_body_bytes)
    except Exception as exc:
        checks["disk"] = f"unavailable: {_why(exc)}"
    checks["signing_key"] = "ok" if runtime.ledger.signer is not None else "no signing key"
    # The gateway's own witness (gateway.server.custody): this database extends its ledger.
    checks["history"] = runtime.ledger.halted or "ok"
    policy = runtime.in_force.policy
    # The database's active bundle may not load here: this process then decides nothing.
    unavailable = (
        runtime.in_force.unavailable or policy.engine.unavailable() or _policy_fails(policy)
    )
    checks["policy"] = unavailable or (
        f"ok ({policy.engine.name} {policy.engine.version}, bundle {policy.bundle.digest[:12]})"
    )
    ready = all(value == "ok" or value.startswith("ok ") for value in checks.values())
    # Informational, after readiness is settled: any process can decide, whichever signs.
    checks["checkpoint_signer"] = _signer_check(runtime.ledger)
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503
    )


def _why(exc: BaseException) -> str:
    """The driver's own first line: SQLAlchemy's text adds the statement and a link."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines() or [""]
    return f"{type(cause).__name__}: {lines[0]}"


def _signer_check(ledger: Ledger) -> str:
    """Which process signs the periodic checkpoints: one at a time holds the signer lease, and
    another takes it over within a checkpoint interval when that one dies (``ledger.lease``).
    As this process's writer last checked it; never a reason not to be ready."""
    if ledger.signs_periodically:
        return "ok (this process signs the periodic checkpoints)"
    if ledger.signer is None or not ledger.writing:
        return "ok (this process signs no periodic checkpoints)"
    if ledger.signer_problem is not None:
        # Its own failure (a lock file it may not write, the server gone), not another holder.
        return f"this process cannot take the signer lease: {ledger.signer_problem}"
    return "ok (another process holds the signer lease)"


# The room a SQLite database's disk keeps for decisions before readiness fails, in requests of
# the largest size: a decision writes its body a few times over (entries, rows, the WAL).
_ROOM_PER_BODY = 16


def _disk_check(room: int, need: int) -> str:
    """Whether the disk of a SQLite database has room for decisions: ready no more once less
    than ``need`` bytes are left, before the appends themselves fail."""
    mib = 1024 * 1024
    if room >= need:
        return f"ok ({room / mib:.1f} MiB free for the database)"
    return (
        f"full: {room / mib:.2f} MiB left for the database's files, "
        f"less than the {need / mib:.2f} MiB kept for decisions"
    )


def _ledger_check(ledger: Ledger, engine: Engine) -> str:
    """Whether the ledger can take an append now.

    Its table must be readable, its writer running, and the database must take an append's
    write (``ledger.database.check_writable``, rolled back). After a transaction of the writer
    failed (the disk full, the server gone), the ledger is not ready until one commits; a
    checkpoint of the entries since the last one is that commit, made here, a real append. With
    no entry to checkpoint there is nothing to try: the ledger's periodic checkpoint tries."""
    size = ledger.size()  # the ledger's own table, not just its writer thread
    if not ledger.writing:
        return "the ledger writer is not running"
    try:
        check_writable(engine)
    except Exception as exc:
        return f"unavailable: cannot write: {_why(exc)}"
    failure = ledger.failure
    if failure is None:
        return "ok"
    latest = ledger.latest_checkpoint()
    if latest is not None and size <= latest.size + 1:
        return f"appends are failing: {failure}"
    try:
        ledger.checkpoint()
    except Exception as exc:
        return f"appends are failing: {exc}"
    return "ok"


# A plain proposal every workflow's policy must be able to evaluate: an engine that raises on it
# (a bundle that does not load on this thread, a rule that errors on every input, an OPA server
# without the package) cannot decide anything. An error that only some inputs reach is the
# answer to those inputs (503), not the instance's readiness: a caller could otherwise take
# every instance out of service with one crafted proposal.
_PROBE_EXECUTOR = Identity("tok_readyz", "readyz", "readyz", None, "readyz")


def _policy_fails(policy: ActivePolicy) -> str | None:
    """Why the Rego engine cannot evaluate a plain proposal of some workflow, or None."""
    now = format_time(dt.datetime.now(dt.UTC))
    for workflow in sorted(policy.bundle.workflows):
        probe: dict[str, Any] = {
            "workflow": workflow,
            "action_type": "readiness.probe",
            "resource": "readiness/probe",
            "params": {},
            "case_type": "readiness.probe",
            "confidence": None,
            "context": {},
            "idempotency_key": "readyz",
        }
        try:
            policy.engine.evaluate(
                workflow,
                rego_input(probe, _PROBE_EXECUTOR, "readiness.probe", 1, dict(ZERO_FIGURES), now),
            )
        except Exception as exc:
            return f"the Rego engine fails on a plain {workflow} proposal: {exc}"
    return None


@router.get(
    "/metrics", summary="Prometheus metrics", response_class=Response, responses=AUTH_PROBLEMS
)
def metrics(runtime: Rt, _caller: Caller) -> Response:
    """Decisions, latency, fail-closed answers, approvals, dispatch, outcomes, audits, autonomy
    levels and the ledger, by workflow and case type (text exposition format; the names are in
    docs/OPERATING.md)."""
    return Response(runtime.metrics.render(), media_type="text/plain; version=0.0.4")
