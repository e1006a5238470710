"""Proposals: ``POST /v1/actions`` runs the decision path; ``GET`` shows where an action stands;
its executor reports its outcome, or withdraws it while it is held."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import Response

from gateway.api.deps import AUTH_PROBLEMS, Caller, Rt, problem_doc
from gateway.api.direct import DirectRoute
from gateway.api.strict_json import StrictJSONRoute
from gateway.binding import confine
from gateway.db.tables import ACTIONS
from gateway.errors import Conflict, Forbidden, NotFound
from gateway.execution.outcomes import record_outcome
from gateway.execution.views import show_action
from gateway.identity import may_act_for
from gateway.schemas import ActionView, OutcomeReport, Proposal, Verdict, WithdrawalRequest

router = APIRouter(
    prefix="/v1/actions", tags=["actions"], responses=AUTH_PROBLEMS, route_class=StrictJSONRoute
)

_PROBLEMS: dict[int | str, dict[str, Any]] = {
    403: problem_doc("The role may not propose, or the token is bound to another workflow."),
    409: problem_doc("The idempotency key was used for another proposal."),
    413: problem_doc("The body is over the size limit."),
    422: problem_doc("A field is wrong; `errors` names each one."),
    503: problem_doc("Casbin, the Rego engine or the ledger failed: nothing was executed."),
}


_SHOW_PROBLEMS: dict[int | str, dict[str, Any]] = {
    403: problem_doc(
        "Not the proposer, nor someone who oversees it, or a token bound to another workflow."
    ),
    404: problem_doc("No such action."),
}


async def propose(proposal: Proposal, runtime: Rt, identity: Caller) -> Response:
    """Runs validate → permit (Casbin) → evaluate (Rego at the autonomy level) → decide →
    record (ledger), and answers once the proposal and the decision are durable."""
    answer = await runtime.decider.decide(identity, proposal)
    # The Verdict's JSON as encoded once by the decider (response_model documents it).
    return Response(answer.json, media_type="application/json")


# The hot path: its common request skips FastAPI's dependency solving (gateway.api.direct).
router.add_api_route(
    "",
    propose,
    methods=["POST"],
    response_model=Verdict,
    summary="Propose an action; get execute, hold or reject",
    responses=_PROBLEMS,
    route_class_override=DirectRoute,
)


@router.get(
    "/{action_id}",
    response_model=ActionView,
    summary="An action's verdict, status and ledger timeline",
    responses=_SHOW_PROBLEMS,
)
def show(action_id: str, runtime: Rt, identity: Caller) -> ActionView:
    """The proposer's owner, and approvers, governors and auditors of its workflow, may look."""
    return show_action(runtime.engine, runtime.ledger, identity, action_id)


@router.post(
    "/{action_id}/outcome",
    response_model=ActionView,
    summary="Report the outcome of an action the executor carried out itself",
    responses={
        403: problem_doc(
            "Only the token that proposed the action, or another of the same owner, role and "
            "workflow binding, reports its outcome."
        ),
        404: problem_doc("No such action."),
        409: problem_doc("The action is not waiting for an outcome (not allowed, or reported)."),
        422: problem_doc("A field is wrong."),
    },
)
async def report_outcome(
    action_id: str, report: OutcomeReport, runtime: Rt, identity: Caller
) -> ActionView:
    """For the callback adapter: after an execute verdict (or an approval), the executor does
    the work and reports `succeeded` or `failed` here; it becomes an `outcome` entry."""
    with runtime.engine.connect() as conn:
        row = conn.execute(sa.select(ACTIONS).where(ACTIONS.c.id == action_id)).first()
    if row is None:
        raise NotFound(f"no action {action_id}")
    confine(identity, row.workflow, f"action {action_id}")
    if not may_act_for(runtime.ledger, identity, row.executor, row.proposal_seq):
        raise Forbidden(
            "only the token that proposed an action, or another of the same owner, role and "
            "workflow binding, reports its outcome"
        )
    try:
        await record_outcome(
            runtime.ledger,
            action_id,
            actor=identity.name,
            status=report.status,
            detail=report.details,
            attempt=None,
            expect=("pending", "dispatching", "awaiting_outcome"),
            adapter="callback",
        )
    except LookupError:
        raise Conflict(
            f"action {action_id} is {row.status}: it is not waiting for an outcome from its "
            "executor"
        ) from None
    await runtime.decider.autonomy.after(row.workflow, row.case_type)  # the figures moved
    if report.status == "failed":  # handed to people (gateway.execution.exceptions): tell them
        opened = await asyncio.to_thread(runtime.exceptions.opened, action_id)
        if opened is not None:
            runtime.notices.exception(opened)
    return show_action(runtime.engine, runtime.ledger, identity, action_id)


@router.post(
    "/{action_id}/withdraw",
    response_model=ActionView,
    summary="Withdraw a held action that nobody will carry out",
    responses={
        403: problem_doc(
            "Only the token that proposed the action, or another of the same owner, role and "
            "workflow binding, withdraws it."
        ),
        404: problem_doc("No such action."),
        409: problem_doc("The action is not held: decided, expired or withdrawn already."),
        422: problem_doc("The reason is missing; `errors` names it."),
    },
)
async def withdraw(
    action_id: str, request: WithdrawalRequest, runtime: Rt, identity: Caller
) -> ActionView:
    """For an executor whose caller stopped waiting (a timed-out `@governed` call, an MCP client
    that gave up): the held action becomes `withdrawn`, a `withdrawal` entry says who and why,
    its approval leaves the inbox and takes no more votes, and it never executes."""
    await runtime.approvals.withdraw(identity, action_id, request.reason)
    return show_action(runtime.engine, runtime.ledger, identity, action_id)
