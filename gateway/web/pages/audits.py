"""The audit queue: executed actions drawn for post-hoc audit, by state, and the form that
records a finding.

``runtime.audits`` lists and settles audits, and decides who may audit (separation of duties)
and the note an incorrect finding needs; this module shows its answers, with the HTTP status
the API would give, and a refused finding again with what was typed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import pydantic
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, Response

from gateway.api.deps import Rt
from gateway.errors import GatewayError, InvalidInput, status_of
from gateway.execution.views import show_action
from gateway.schemas import FindingRequest
from gateway.web.format import describe_first_error, show_age, show_evidence
from gateway.web.gate import gate
from gateway.web.render import render_page, render_problem
from gateway.web.session import Visit, open_visit, redirect

__all__ = ["router"]

router = APIRouter(prefix="/ui")

AUDIT_STATUSES = ("pending", "correct", "incorrect")
AUDIT_FILTERS = (*AUDIT_STATUSES, "all")


@dataclass
class _Draft:
    """A finding the page did not record, shown again on its row: what was chosen and typed,
    and why the note was refused."""

    audit_id: str
    finding: str
    note: str
    note_error: str | None = None


def _audits(
    visit: Visit,
    status: str = "pending",
    *,
    status_code: int = 200,
    draft: _Draft | None = None,
    error: str | None = None,
) -> Response:
    """The audits in one state, oldest first (the queue's order); pending ones carry the form
    that records a finding. ``error`` says why the last finding was not recorded."""
    assert visit.identity is not None
    runtime = visit.runtime
    try:
        views = runtime.audits.list(visit.identity, None if status == "all" else status)
    except GatewayError as exc:
        return render_problem(visit, status_of(exc), exc.title, exc.detail)
    now = runtime.clock()
    context = {
        "section": "audits",
        "rows": [{"view": view, "age": show_age(view.created_at, now)} for view in views],
        "status": status,
        "filters": AUDIT_FILTERS,
        "draft": draft,
        "error": error,
        "now": now.strftime("%Y-%m-%d %H:%M"),
    }
    return render_page(visit, "audits.html", context, status_code)


@router.get("/audits", response_class=HTMLResponse)
def audits_page(
    request: Request, runtime: Rt, status: Annotated[str, Query()] = "pending"
) -> Response:
    """Executed actions drawn for post-hoc audit that this auditor may audit, by state."""
    visit = open_visit(request, runtime)
    identity = gate(visit)
    if isinstance(identity, Response):
        return identity
    if status not in AUDIT_FILTERS:
        return render_problem(
            visit,
            422,
            "invalid input",
            f"status: one of {', '.join(AUDIT_FILTERS)}, not {status!r}",
        )
    return _audits(visit, status)


@router.get("/audits/{audit_id}", response_class=HTMLResponse)
def audit_page(audit_id: str, request: Request, runtime: Rt) -> Response:
    """One audit with the action it asks about: its proposal, decision trace, execution and
    outcome (the ledger timeline), and the form that records the finding."""
    visit = open_visit(request, runtime)
    identity = gate(visit)
    if isinstance(identity, Response):
        return identity
    try:
        view = runtime.audits.get(identity, audit_id)
        action = show_action(runtime.engine, runtime.ledger, identity, view.action_id)
    except GatewayError as exc:
        return render_problem(visit, status_of(exc), exc.title, exc.detail)
    now = runtime.clock()
    context = {
        "section": "audits",
        "row": {"view": view, "age": show_age(view.created_at, now)},
        "view": view,
        "draft": None,
        **show_evidence(action),
    }
    return render_page(visit, "audit.html", context)


@router.post("/audits/{audit_id}", response_class=HTMLResponse)
async def record_finding(
    audit_id: str,
    request: Request,
    runtime: Rt,
    finding: Annotated[str, Form()] = "",
    note: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    """Record a finding through ``Audits.record``; then back to the queue, with a message.
    A refused finding shows the queue again with what was typed and why."""
    visit = open_visit(request, runtime)
    identity = gate(visit, csrf)
    if isinstance(identity, Response):
        return identity
    draft = _Draft(audit_id, finding, note)
    try:
        wanted = FindingRequest.model_validate({"finding": finding, "note": note})
    except pydantic.ValidationError as exc:
        where, message = describe_first_error(exc, "finding")
        if where == "note":
            draft.note_error = message
        error = None if where == "note" else message
        return _audits(visit, status_code=422, draft=draft, error=error)
    try:
        view = await runtime.audits.record(identity, audit_id, wanted)
    except InvalidInput as exc:
        fields = dict(exc.errors)
        draft.note_error = fields.get("note")
        error = None if "note" in fields else exc.detail
        return _audits(visit, status_code=422, draft=draft, error=error)
    except GatewayError as exc:
        return _audits(visit, status_code=status_of(exc), draft=draft, error=exc.detail)
    visit.say(
        "ok",
        f"Finding recorded: {view.action_type} on {view.resource} was {view.status} "
        f"(ledger #{view.finding_seq}).",
    )
    return redirect(visit, f"{visit.base}/audits")
