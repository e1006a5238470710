"""Post-hoc audits over HTTP: the queue, findings, and corrections of executed actions."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from gateway.api.deps import AUTH_PROBLEMS, Caller, Rt, problem_doc
from gateway.api.strict_json import StrictJSONRoute
from gateway.execution.views import show_action
from gateway.schemas import ActionView, AuditView, CorrectionRequest, FindingRequest

router = APIRouter(
    tags=["audits"],
    route_class=StrictJSONRoute,
    responses=AUTH_PROBLEMS | {422: problem_doc("A parameter is wrong; `errors` names it.")},
)

_FINDING_PROBLEMS: dict[int | str, dict[str, Any]] = {
    403: problem_doc("Not an auditor of this workflow, or the proposer (separation of duties)."),
    404: problem_doc("No such audit."),
    409: problem_doc("The audit has a finding already."),
    422: problem_doc("An incorrect finding needs a note; `errors` names the field."),
}


@router.get(
    "/v1/audits",
    response_model=list[AuditView],
    summary="Executed actions drawn for audit",
)
def list_audits(
    runtime: Rt,
    identity: Caller,
    status: Annotated[
        Literal["pending", "correct", "incorrect"] | None,
        Query(description="Only audits in this state [default: pending]."),
    ] = "pending",
) -> list[AuditView]:
    """Oldest first: the queue an auditor works through. Which actions are drawn is decided
    when they are, by a hash of the action id against the level's audit rate, and recorded in
    the decision entry, so the sample can be drawn again from an export."""
    return runtime.audits.list(identity, status)


@router.get(
    "/v1/audits/{audit_id}",
    response_model=AuditView,
    summary="One audit",
    responses={404: problem_doc("No such audit.")},
)
def show_audit(audit_id: str, runtime: Rt, identity: Caller) -> AuditView:
    """The audit, if the caller may audit in its workflow."""
    return runtime.audits.get(identity, audit_id)


@router.post(
    "/v1/audits/{audit_id}",
    response_model=AuditView,
    summary="Record a finding: correct or incorrect (auditors)",
    responses=_FINDING_PROBLEMS,
)
async def record_finding(
    audit_id: str, finding: FindingRequest, runtime: Rt, identity: Caller
) -> AuditView:
    """The finding is an `audit` ledger entry; it counts in the case type's figures (a review
    that agrees, or an audit finding that may demote the case type)."""
    return await runtime.audits.record(identity, audit_id, finding)


@router.post(
    "/v1/actions/{action_id}/corrections",
    response_model=ActionView,
    summary="Report that an executed action had to be corrected",
    responses={
        403: problem_doc("Not its executor, nor an auditor or governor of its workflow."),
        404: problem_doc("No such action."),
        409: problem_doc("The action was not carried out successfully, or was corrected."),
        422: problem_doc("A field is wrong; `errors` names it."),
    },
)
async def report_correction(
    action_id: str, correction: CorrectionRequest, runtime: Rt, identity: Caller
) -> ActionView:
    """An `outcome` entry with status `corrected`; it counts as an error in the case type's
    figures."""
    await runtime.audits.correct(identity, action_id, correction)
    return show_action(runtime.engine, runtime.ledger, identity, action_id)
