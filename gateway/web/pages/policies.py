"""The policy bundles for the people who change and read them: the active bundle (who put it in
force, when, why, its workflows and files) and the shadow running beside it, with how often it
decides otherwise and its latest disagreements. Read-only; the views are the API's
(``gateway.lifecycle.views``), as are the rules on who may read them."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from gateway.api.deps import Rt
from gateway.binding import confine
from gateway.errors import GatewayError, status_of
from gateway.lifecycle.views import show_policy, show_shadow
from gateway.web.gate import gate
from gateway.web.render import render_page, render_problem
from gateway.web.session import open_visit

__all__ = ["router"]

router = APIRouter(prefix="/ui")

SHOWN = 20  # the shadow's latest disagreements on the page; the API pages through the rest


@router.get("/policies", response_class=HTMLResponse)
def policies_page(request: Request, runtime: Rt) -> Response:
    """The active bundle and the shadow beside it."""
    visit = open_visit(request, runtime)
    identity = gate(visit)
    if isinstance(identity, Response):
        return identity
    lifecycle = runtime.policies
    assert lifecycle is not None
    try:
        confine(identity, None, "a policy bundle")
    except GatewayError as exc:
        return render_problem(visit, status_of(exc), exc.title, exc.detail)
    context = {
        "section": "policies",
        "active": show_policy(lifecycle, lifecycle.store.slots()["active"]),
        "shadow": show_shadow(runtime.engine, lifecycle, limit=SHOWN),
    }
    return render_page(visit, "policies.html", context)
