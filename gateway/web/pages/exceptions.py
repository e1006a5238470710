"""Exceptions: failed executions handed to people, by state, and one with what was attempted
and what failed, and the choice (retry, or handled with a note).

``runtime.exceptions`` lists them and records the choice, and decides who may (approvers of the
workflow and governors, never the proposer), the note ``handled`` needs, and that a callback
action is not retried; this module shows its answers, with the HTTP status the API would give.
"""

from __future__ import annotations

from typing import Annotated

import pydantic
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, Response

from gateway.api.deps import Rt
from gateway.errors import GatewayError, InvalidInput, status_of
from gateway.execution.exceptions import view as exception_view
from gateway.execution.views import show_action
from gateway.schemas import ExceptionDecision
from gateway.web.format import describe_first_error, show_age, show_evidence
from gateway.web.gate import gate
from gateway.web.render import render_page, render_problem
from gateway.web.session import Visit, open_visit, redirect

__all__ = ["router"]

router = APIRouter(prefix="/ui")

EXCEPTION_FILTERS = ("open", "retried", "handled", "all")


@router.get("/exceptions", response_class=HTMLResponse)
def exceptions_page(
    request: Request, runtime: Rt, status: Annotated[str, Query()] = "open"
) -> Response:
    """The exceptions this person may handle or oversee, in one state, newest first."""
    visit = open_visit(request, runtime)
    identity = gate(visit)
    if isinstance(identity, Response):
        return identity
    if status not in EXCEPTION_FILTERS:
        return render_problem(
            visit,
            422,
            "invalid input",
            f"status: one of {', '.join(EXCEPTION_FILTERS)}, not {status!r}",
        )
    views = runtime.exceptions.list(identity, None if status == "all" else status)
    now = runtime.clock()
    context = {
        "section": "exceptions",
        "rows": [{"view": view, "age": show_age(view.created_at, now)} for view in views],
        "status": status,
        "filters": EXCEPTION_FILTERS,
        "now": now.strftime("%Y-%m-%d %H:%M"),
    }
    return render_page(visit, "exceptions.html", context)


def _detail(
    visit: Visit,
    exception_id: str,
    *,
    status_code: int = 200,
    error: str | None = None,
    note_error: str | None = None,
    note: str = "",
) -> Response:
    """The detail page; ``error`` says why the last choice was not recorded."""
    assert visit.identity is not None
    runtime = visit.runtime
    try:
        row = runtime.exceptions.row(visit.identity, exception_id)
        view = exception_view(row)
        action = show_action(runtime.engine, runtime.ledger, visit.identity, view.action_id)
    except GatewayError as exc:
        return render_problem(visit, status_of(exc), exc.title, exc.detail)
    context = {
        "section": "exceptions",
        "view": view,
        "age": show_age(view.created_at, runtime.clock()),
        "may_choose": runtime.exceptions.may_choose(visit.identity, row),
        **show_evidence(action),
        "error": error,
        "note_error": note_error,
        "note": note,
    }
    return render_page(visit, "exception.html", context, status_code)


@router.get("/exceptions/{exception_id}", response_class=HTMLResponse)
def exception_page(exception_id: str, request: Request, runtime: Rt) -> Response:
    """One exception: the attempts and their errors, the proposal, trace and timeline, and
    the choice."""
    visit = open_visit(request, runtime)
    identity = gate(visit)
    if isinstance(identity, Response):
        return identity
    return _detail(visit, exception_id)


@router.post("/exceptions/{exception_id}", response_class=HTMLResponse)
async def choose(
    exception_id: str,
    request: Request,
    runtime: Rt,
    decision: Annotated[str, Form()] = "",
    note: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    """Retry or mark handled through ``Exceptions.decide``; then back to the page, with a
    message. A refused choice shows the page again with what was typed and why."""
    visit = open_visit(request, runtime)
    identity = gate(visit, csrf)
    if isinstance(identity, Response):
        return identity
    try:
        wanted = ExceptionDecision.model_validate({"decision": decision, "note": note})
    except pydantic.ValidationError as exc:
        where, message = describe_first_error(exc, "decision")
        return _detail(
            visit,
            exception_id,
            status_code=422,
            error=None if where == "note" else message,
            note_error=message if where == "note" else None,
            note=note,
        )
    try:
        view = await runtime.exceptions.decide(identity, exception_id, wanted.decision, wanted.note)
    except InvalidInput as exc:
        fields = dict(exc.errors)
        return _detail(
            visit,
            exception_id,
            status_code=422,
            error=None if "note" in fields else exc.detail,
            note_error=fields.get("note"),
            note=note,
        )
    except GatewayError as exc:
        return _detail(visit, exception_id, status_code=status_of(exc), error=exc.detail, note=note)
    if view.status == "retried":
        visit.say("ok", "Retry recorded: the action is dispatched again.")
    else:
        visit.say("ok", "Marked handled: the exception is closed.")
    return redirect(visit, f"{visit.base}/exceptions/{exception_id}")
