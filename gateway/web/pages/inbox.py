"""The approvers' inbox: a page of the approvals a person may see (filtered, searched and
sorted by the query string, ``gateway.approvals.inbox``), one approval with its proposal,
trace, votes and ledger timeline, and the vote. Executors see their own held proposals; a
policy admin is sent to the policies page.

``runtime.approvals`` lists, shows and decides; the action comes from
``gateway.execution.views`` as the API's does. Who may see and vote, separation of duties, the
reason a rejection needs, expiry and re-evaluation are decided there; this module shows the
answers, with the HTTP status the API would give (``gateway.errors.status_of``).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, Response

from gateway.api.access import POLICY_ADMIN
from gateway.api.deps import Rt
from gateway.approvals.inbox import STATUSES, InboxQuery
from gateway.errors import GatewayError, InvalidInput, status_of
from gateway.execution.views import show_action
from gateway.schemas import ApprovalView, VoteRequest
from gateway.web.format import (
    describe_first_error,
    show_age,
    show_confidence,
    show_evidence,
    show_time_left,
)
from gateway.web.gate import gate
from gateway.web.render import render_page, render_problem
from gateway.web.session import Visit, open_visit, redirect

__all__ = ["router"]

AGE_NAMES = {"hour": "under 1 h", "day": "1 h to 1 d", "week": "1 to 7 d", "older": "over 7 d"}

_Param = Annotated[str | None, Query()]

router = APIRouter(prefix="/ui")


def _row(view: ApprovalView, now: dt.datetime) -> dict[str, Any]:
    """An approval as a page shows it: the status to show, and the time left with its tone."""
    shown = view.status
    if view.status == "pending":
        left, tone = show_time_left(view.expires_at, now)
        if tone == "expired":
            shown = "expired"  # past its time; the sweeper (or the next vote) closes it
    elif view.status == "expired":
        left, tone = "expired", "expired"
    else:
        left, tone = "closed", "closed"
    return {
        "view": view,
        "status": shown,
        "left": left,
        "tone": tone,
        "confidence": show_confidence(view.confidence),
        "age": show_age(view.created_at, now),
        "open": shown == "pending",
    }


@router.get("/", response_class=HTMLResponse)
def inbox(
    request: Request,
    runtime: Rt,
    status: _Param = None,
    workflow: _Param = None,
    case_type: _Param = None,
    reason: _Param = None,
    executor: _Param = None,
    age: _Param = None,
    q: _Param = None,
    sort: _Param = None,
    page: _Param = None,
) -> Response:
    """A page of the approvals this person may see, filtered, searched and sorted by the query
    string (``InboxQuery``), so that a view is a link. The parameters arrive as text and are
    checked by ``InboxQuery``, so that a wrong one is an HTML page naming it."""
    visit = open_visit(request, runtime)
    identity = gate(visit)
    if isinstance(identity, Response):
        return identity
    given = {
        "status": status,
        "workflow": workflow,
        "case_type": case_type,
        "reason": reason,
        "executor": executor,
        "age": age,
        "q": q,
        "sort": sort,
        "page": page,
    }
    if identity.role == POLICY_ADMIN:
        # Nobody holds actions for a policy admin to decide: their page is the bundles'.
        return redirect(visit, f"{visit.base}/policies")
    try:
        query = InboxQuery.model_validate({k: v for k, v in given.items() if v is not None})
    except pydantic.ValidationError as exc:
        _, message = describe_first_error(exc, "query")
        return render_problem(visit, 422, "invalid input", message)
    found, views = runtime.approvals.page(identity, query)
    now = runtime.clock()
    context = {
        "section": "inbox",
        "rows": [_row(view, now) for view in views],
        "found": found,
        "query": query,
        "statuses": STATUSES,
        "ages": AGE_NAMES,
        "now": now.strftime("%Y-%m-%d %H:%M"),
        # Failed executions waiting for people: counted here, worked on their own page.
        "exceptions_open": runtime.exceptions.count_open(identity),
    }
    return render_page(visit, "inbox.html", context)


def _detail(
    visit: Visit,
    approval_id: str,
    *,
    status_code: int = 200,
    error: str | None = None,
    reason_error: str | None = None,
    reason: str = "",
) -> Response:
    """The detail page; ``error`` says why the last vote was not counted."""
    assert visit.identity is not None
    runtime = visit.runtime
    try:
        view = runtime.approvals.get(visit.identity, approval_id)
        action = show_action(runtime.engine, runtime.ledger, visit.identity, view.action_id)
    except GatewayError as exc:
        status = status_of(exc)
        return render_problem(visit, status, exc.title, exc.detail)
    now = runtime.clock()
    row = _row(view, now)
    voted = next((v for v in view.votes if v.voter == visit.identity.name), None)
    may_vote = runtime.approvals.may_vote(visit.identity, view.workflow, view.action_type)
    context = {
        "section": "inbox",
        "row": row,
        "view": view,
        **show_evidence(action),
        "voted": voted,
        "can_vote": row["open"] and may_vote and voted is None,
        "may_vote": may_vote,
        "error": error,
        "reason_error": reason_error,
        "reason": reason,
    }
    return render_page(visit, "detail.html", context, status_code)


@router.get("/approvals/{approval_id}", response_class=HTMLResponse)
def approval_page(approval_id: str, request: Request, runtime: Rt) -> Response:
    """One approval: the proposal, the trace, the votes, the timeline, and the vote form."""
    visit = open_visit(request, runtime)
    identity = gate(visit)
    if isinstance(identity, Response):
        return identity
    return _detail(visit, approval_id)


@router.post("/approvals/{approval_id}", response_class=HTMLResponse)
async def vote(
    approval_id: str,
    request: Request,
    runtime: Rt,
    decision: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    """Approve or reject through ``Approvals.decide``; then back to the page, with a message."""
    visit = open_visit(request, runtime)
    identity = gate(visit, csrf)
    if isinstance(identity, Response):
        return identity
    try:
        request_ = VoteRequest.model_validate({"decision": decision, "reason": reason})
    except pydantic.ValidationError as exc:
        where, message = describe_first_error(exc, "decision")
        return _detail(
            visit,
            approval_id,
            status_code=422,
            error=None if where == "reason" else message,
            reason_error=message if where == "reason" else None,
            reason=reason,
        )
    try:
        view = await runtime.approvals.decide(identity, approval_id, request_)
    except InvalidInput as exc:
        fields = dict(exc.errors)
        return _detail(
            visit,
            approval_id,
            status_code=422,
            error=None if "reason" in fields else exc.detail,
            reason_error=fields.get("reason"),
            reason=reason,
        )
    except GatewayError as exc:
        return _detail(
            visit, approval_id, status_code=status_of(exc), error=exc.detail, reason=reason
        )
    if view.status == "approved":
        visit.say("ok", f"Approved: quorum of {view.quorum} reached; the action is released.")
    elif view.status == "rejected":
        visit.say("ok", "Rejected: the action will not execute.")
    else:
        visit.say("ok", f"Your approval is recorded: {view.approvals} of {view.quorum}.")
    return redirect(visit, f"{visit.base}/approvals/{approval_id}")
