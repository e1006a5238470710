"""Liveness, readiness and metrics."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from gateway.routes.deps import AUTH_PROBLEMS, Caller, Rt

router = APIRouter(tags=["health"])


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
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {exc}"
    try:
        runtime.ledger.size()  # the ledger's own table, not just its writer thread
        checks["ledger"] = "ok" if runtime.ledger.writing else "the ledger writer is not running"
    except Exception as exc:
        checks["ledger"] = f"unavailable: {exc}"
    checks["signing_key"] = "ok" if runtime.ledger.signer is not None else "no signing key"
    policy = runtime.decider.policy
    unavailable = policy.engine.unavailable()
    checks["policy"] = unavailable or (
        f"ok ({policy.engine.name} {policy.engine.version}, bundle {policy.bundle.digest[:12]})"
    )
    if runtime.policies is not None and runtime.policies.problem:
        # The database's active bundle could not be loaded here: this process decides with a
        # stale one until it can.
        checks["policy"] = runtime.policies.problem
    ready = all(value == "ok" or value.startswith("ok ") for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503
    )


@router.get(
    "/metrics", summary="Prometheus metrics", response_class=Response, responses=AUTH_PROBLEMS
)
def metrics(runtime: Rt, _caller: Caller) -> Response:
    """Decisions by verdict, decision latency, ledger size (text exposition format)."""
    return Response(runtime.metrics.render(), media_type="text/plain; version=0.0.4")
