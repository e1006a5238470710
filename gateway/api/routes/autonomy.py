"""Earned autonomy over HTTP: levels and figures, promotions for governors, levels set by hand."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query

from gateway.api.deps import AUTH_PROBLEMS, Caller, Rt, problem_doc
from gateway.api.strict_json import StrictJSONRoute
from gateway.schemas import AutonomyDetail, AutonomyView, LevelRequest, PromotionView, VoteRequest

router = APIRouter(
    prefix="/v1/autonomy",
    tags=["autonomy"],
    route_class=StrictJSONRoute,
    responses=AUTH_PROBLEMS | {422: problem_doc("A parameter is wrong; `errors` names it.")},
)

Workflow = Annotated[
    str, Path(pattern=r"^[a-z][a-z0-9_-]{0,63}$", description="The workflow, e.g. parking.")
]
CaseType = Annotated[
    str,
    Path(pattern=r"^[a-z][a-z0-9_.-]{0,127}$", description="The case type, e.g. refund.issue."),
]

_SET_PROBLEMS: dict[int | str, dict[str, Any]] = {
    403: problem_doc("Not a governor of this workflow (Casbin `govern`)."),
    404: problem_doc("No such workflow in the active bundle."),
    409: problem_doc("The case type is at that level already, or its level changed just now."),
    422: problem_doc("The level is not 1..4, or the reason is missing; `errors` names it."),
}
_VOTE_PROBLEMS: dict[int | str, dict[str, Any]] = {
    403: problem_doc("Not a governor of the case type's workflow (Casbin `govern`)."),
    404: problem_doc("No such promotion."),
    409: problem_doc(
        "The promotion is no longer pending (approved, rejected, superseded by another change), "
        "or the caller voted the other way before."
    ),
    422: problem_doc("A reason is required to reject; `errors` names the field."),
}


@router.get("", response_model=list[AutonomyView], summary="Every case type's level and figures")
def overview(
    runtime: Rt,
    identity: Caller,
    workflow: Annotated[
        str | None,
        Query(pattern=r"^[a-z][a-z0-9_-]{0,63}$", description="Only this workflow's case types."),
    ] = None,
) -> list[AutonomyView]:
    """Each case type of the active bundle (and any decided before): its level and where it
    comes from, the measured figures of its window, the next level's entry criteria, the
    demotion threshold and any pending promotion. A token bound to a workflow sees that one; a
    workflow the gateway does not know is a 422 naming those it knows."""
    return runtime.autonomy_views.overview(identity, workflow)


@router.get(
    "/promotions",
    response_model=list[PromotionView],
    summary="Promotions the gateway proposed",
)
def promotions(
    runtime: Rt,
    identity: Caller,
    status: Annotated[
        Literal["pending", "approved", "rejected", "superseded"] | None,
        Query(description="Only promotions in this state [default: pending]."),
    ] = "pending",
) -> list[PromotionView]:
    """Newest first, with the figures that met the entry criteria and the votes so far."""
    return runtime.autonomy_views.promotions(identity, status)


@router.post(
    "/promotions/{promotion_id}/decisions",
    response_model=PromotionView,
    summary="Approve or reject a proposed promotion (governors)",
    responses=_VOTE_PROBLEMS,
)
async def decide_promotion(
    promotion_id: str, decision: VoteRequest, runtime: Rt, identity: Caller
) -> PromotionView:
    """Each vote is an `approval` or `rejection` ledger entry. The vote that reaches the quorum
    (policy data) raises the level, in the same transaction, with an `autonomy` entry; one
    rejection rejects. Voting twice the same way counts once."""
    return await runtime.governance.decide(identity, promotion_id, decision)


@router.get(
    "/{workflow}/{case_type}",
    response_model=AutonomyDetail,
    summary="One case type: level, figures, changes, figures day by day",
    responses={404: problem_doc("No such workflow.")},
)
def detail(
    workflow: Workflow, case_type: CaseType, runtime: Rt, identity: Caller
) -> AutonomyDetail:
    """The case type as `GET /v1/autonomy` shows it, with its changes of level (newest first)
    and its agreement and error rates per day (what the inbox's chart draws)."""
    return runtime.autonomy_views.detail(identity, workflow, case_type)


@router.post(
    "/{workflow}/{case_type}",
    response_model=AutonomyDetail,
    summary="Set a case type's level by hand (governors)",
    responses=_SET_PROBLEMS,
)
async def set_level(
    workflow: Workflow,
    case_type: CaseType,
    request: LevelRequest,
    runtime: Rt,
    identity: Caller,
) -> AutonomyDetail:
    """Writes an `autonomy` entry with the governor, the reason, the old and new level and the
    figures at that moment; the level is in force on every gateway within a second, and a new
    window of figures starts."""
    return await runtime.governance.set_level(identity, workflow, case_type, request)
