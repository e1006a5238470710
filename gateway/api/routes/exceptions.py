"""Exceptions over HTTP: failed executions handed to people, and their choice on each."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from gateway.api.deps import AUTH_PROBLEMS, Caller, Rt, problem_doc
from gateway.api.strict_json import StrictJSONRoute
from gateway.schemas import ExceptionDecision, ExceptionView

router = APIRouter(
    prefix="/v1/exceptions",
    tags=["exceptions"],
    route_class=StrictJSONRoute,
    responses=AUTH_PROBLEMS | {422: problem_doc("A parameter is wrong; `errors` names it.")},
)

_DECISION_PROBLEMS: dict[int | str, dict[str, Any]] = {
    403: problem_doc(
        "Not an approver of this workflow nor a governor, or the proposer (separation of duties)."
    ),
    404: problem_doc("No such exception."),
    409: problem_doc(
        "The exception was retried or handled already, or a retry was asked of an action its "
        "executor carries out itself (callback)."
    ),
    422: problem_doc("`handled` needs a note; `errors` names the field."),
}


@router.get("", response_model=list[ExceptionView], summary="Failed executions handed to people")
def list_exceptions(
    runtime: Rt,
    identity: Caller,
    status: Annotated[
        Literal["open", "retried", "handled"] | None,
        Query(description="Only exceptions in this state [default: open]."),
    ] = "open",
) -> list[ExceptionView]:
    """Newest first: approvers see the workflows they may approve in; governors and auditors
    everything in their reach."""
    return runtime.exceptions.list(identity, status)


@router.get(
    "/{exception_id}",
    response_model=ExceptionView,
    summary="One exception: what was attempted, what failed, what people chose",
    responses={404: problem_doc("No such exception.")},
)
def show_exception(exception_id: str, runtime: Rt, identity: Caller) -> ExceptionView:
    """The exception, if the caller may handle it or oversees its workflow."""
    return runtime.exceptions.get(identity, exception_id)


@router.post(
    "/{exception_id}/decisions",
    response_model=ExceptionView,
    summary="Retry a failed execution, or mark it handled with a note",
    responses=_DECISION_PROBLEMS,
)
async def decide(
    exception_id: str, decision: ExceptionDecision, runtime: Rt, identity: Caller
) -> ExceptionView:
    """`retry` dispatches a webhook action again through the normal dispatcher (its attempts
    start over); `handled` closes the exception with the note saying how. Either is an
    `exception` ledger entry and counts in the case type's figures; a second choice is a 409."""
    return await runtime.exceptions.decide(identity, exception_id, decision.decision, decision.note)
