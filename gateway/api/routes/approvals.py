"""Approvals over HTTP: the list an approver works from, and their votes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from gateway.api.deps import AUTH_PROBLEMS, Caller, Rt, problem_doc
from gateway.api.strict_json import StrictJSONRoute
from gateway.schemas import ApprovalView, VoteRequest

router = APIRouter(
    prefix="/v1/approvals",
    tags=["approvals"],
    route_class=StrictJSONRoute,
    responses=AUTH_PROBLEMS | {422: problem_doc("A parameter is wrong; `errors` names it.")},
)

_VOTE_PROBLEMS: dict[int | str, dict[str, Any]] = {
    403: problem_doc("Not an approver of this workflow, or the proposer (separation of duties)."),
    404: problem_doc("No such approval."),
    409: problem_doc(
        "The approval is no longer pending (approved, rejected, expired, superseded, "
        "withdrawn), the "
        "caller voted the other way before, or the policy changed and the action was "
        "re-evaluated."
    ),
    422: problem_doc("A reason is required to reject; `errors` names the field."),
}


@router.get("", response_model=list[ApprovalView], summary="Approvals the caller may decide")
def list_approvals(
    runtime: Rt,
    identity: Caller,
    status: Annotated[
        Literal["pending", "approved", "rejected", "expired", "superseded", "withdrawn"] | None,
        Query(description="Only approvals in this state [default: pending]."),
    ] = "pending",
) -> list[ApprovalView]:
    """Newest first; approvers see the workflows Casbin lets them approve in."""
    return runtime.approvals.list(identity, status)


@router.get(
    "/{approval_id}",
    response_model=ApprovalView,
    summary="One approval with its votes",
    responses={404: problem_doc("No such approval.")},
)
def show_approval(approval_id: str, runtime: Rt, identity: Caller) -> ApprovalView:
    """The approval, if the caller may decide it, oversees it, or proposed it."""
    return runtime.approvals.get(identity, approval_id)


@router.post(
    "/{approval_id}/decisions",
    response_model=ApprovalView,
    summary="Approve or reject a held action",
    responses=_VOTE_PROBLEMS,
)
async def vote(
    approval_id: str, decision: VoteRequest, runtime: Rt, identity: Caller
) -> ApprovalView:
    """One rejection rejects; the vote that reaches quorum approves and dispatches. Voting
    twice the same way counts once."""
    return await runtime.approvals.decide(identity, approval_id, decision)
