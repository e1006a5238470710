"""Earned autonomy: every case type's level, figures and trend, the next level, promotions
waiting for governors, and the governors' forms that vote on a promotion or set a level.

``runtime.governance`` decides who may govern and what a vote or a new level does; this module
shows its answers, with the HTTP status the API would give.
"""

from __future__ import annotations

from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from gateway.api.deps import Rt
from gateway.autonomy.levels import LEVEL_NAMES
from gateway.autonomy.views import SERIES_DAYS
from gateway.errors import GatewayError, status_of
from gateway.schemas import LevelRequest, VoteRequest
from gateway.web.charts import trend_chart
from gateway.web.format import describe_first_error
from gateway.web.gate import gate
from gateway.web.render import render_page, render_problem
from gateway.web.session import Visit, open_visit, redirect

__all__ = ["router"]

router = APIRouter(prefix="/ui")


def _anchor(workflow: str, case_type: str) -> str:
    return f"case-{workflow}-{case_type}".replace(".", "-")


def _autonomy(visit: Visit, *, status_code: int = 200, error: str | None = None) -> Response:
    """Every case type: level, figures, chart, next level, pending promotion, and (for
    governors) the forms that change a level."""
    assert visit.identity is not None
    runtime = visit.runtime
    levels = runtime.autonomy_views
    try:
        views = levels.overview(visit.identity)
    except GatewayError as exc:
        return render_problem(visit, status_of(exc), exc.title, exc.detail)
    today = runtime.clock().date()
    workflows: dict[str, list[dict[str, Any]]] = {}
    for view in views:
        history = levels.history(view.workflow, view.case_type, limit=20)
        days = min(90, max(view.window.days, SERIES_DAYS))
        chart = trend_chart(levels.series(view.workflow, view.case_type), history, today, days)
        workflows.setdefault(view.workflow, []).append(
            {
                "view": view,
                "chart": chart,
                "history": history[:5],
                "anchor": _anchor(view.workflow, view.case_type),
                "may_govern": runtime.governance.may_govern(
                    visit.identity, view.workflow, view.case_type
                ),
            }
        )
    pending = sum(1 for v in views if v.pending_promotion is not None)
    context = {
        "section": "autonomy",
        "workflows": workflows,
        "pending": pending,
        "levels": LEVEL_NAMES,
        "error": error,
    }
    return render_page(visit, "autonomy.html", context, status_code)


@router.get("/autonomy", response_class=HTMLResponse)
def autonomy_page(request: Request, runtime: Rt) -> Response:
    """The autonomy levels: what each case type earned, and promotions waiting for governors."""
    visit = open_visit(request, runtime)
    identity = gate(visit)
    if isinstance(identity, Response):
        return identity
    return _autonomy(visit)


@router.post("/autonomy/promotions/{promotion_id}", response_class=HTMLResponse)
async def promotion_vote(
    promotion_id: str,
    request: Request,
    runtime: Rt,
    decision: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    """A governor approves or rejects a promotion through ``Governance.decide``."""
    visit = open_visit(request, runtime)
    identity = gate(visit, csrf)
    if isinstance(identity, Response):
        return identity
    try:
        vote_ = VoteRequest.model_validate({"decision": decision, "reason": reason})
        view = await runtime.governance.decide(identity, promotion_id, vote_)
    except pydantic.ValidationError as exc:
        return _autonomy(visit, status_code=422, error=describe_first_error(exc, "decision")[1])
    except GatewayError as exc:
        return _autonomy(visit, status_code=status_of(exc), error=exc.detail)
    where = f"{view.workflow} {view.case_type}"
    if view.status == "approved":
        visit.say("ok", f"Promoted: {where} is at level {view.to_level} now.")
    elif view.status == "rejected":
        visit.say("ok", f"Promotion of {where} rejected.")
    else:
        visit.say("ok", f"Your approval is recorded: {view.approvals} of {view.quorum}.")
    anchor = _anchor(view.workflow, view.case_type)
    return redirect(visit, f"{visit.base}/autonomy#{anchor}")


@router.post("/autonomy/{workflow}/{case_type}", response_class=HTMLResponse)
async def level_set(
    workflow: str,
    case_type: str,
    request: Request,
    runtime: Rt,
    level: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    """A governor sets a level by hand through ``Governance.set_level``."""
    visit = open_visit(request, runtime)
    identity = gate(visit, csrf)
    if isinstance(identity, Response):
        return identity
    try:
        wanted = LevelRequest.model_validate(
            {"level": int(level) if level.isdigit() else level, "reason": reason}
        )
        view = await runtime.governance.set_level(identity, workflow, case_type, wanted)
    except pydantic.ValidationError as exc:
        return _autonomy(visit, status_code=422, error=describe_first_error(exc, "level")[1])
    except GatewayError as exc:
        return _autonomy(visit, status_code=status_of(exc), error=exc.detail)
    visit.say("ok", f"{workflow} {case_type} is at level {view.level} ({view.name}) now.")
    return redirect(visit, f"{visit.base}/autonomy#{_anchor(workflow, case_type)}")
