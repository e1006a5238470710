"""Signing in with a token, and out: the session row and a fresh cookie each time
(``gateway.web.session``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, Response

from gateway.api.deps import Rt
from gateway.web.gate import check_csrf
from gateway.web.render import render_page
from gateway.web.session import Visit, open_visit, redirect, sign_in, sign_out

__all__ = ["router"]

router = APIRouter(prefix="/ui")


def _safe_next(visit: Visit, target: str) -> str:
    """Only a page of ours: never another site (``//evil``), never a scheme."""
    base = visit.base
    if target.startswith(f"{base}/") and "//" not in target and "\\" not in target:
        return target
    return f"{base}/"


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, runtime: Rt, next: Annotated[str, Query()] = "/ui/") -> Response:
    """The sign-in form; a signed-in visitor goes straight on."""
    visit = open_visit(request, runtime)
    if visit.identity is not None:
        return redirect(visit, _safe_next(visit, next))
    return render_page(visit, "login.html", {"next": _safe_next(visit, next), "error": None})


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    runtime: Rt,
    token: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/ui/",
) -> Response:
    """Check the token; on success, a fresh session holding its id."""
    visit = open_visit(request, runtime)
    refused = check_csrf(visit, csrf)
    if refused is not None:
        return refused
    target = _safe_next(visit, next)
    identity = runtime.tokens.lookup(token.strip()) if token.strip() else None
    if identity is None:
        error = "That token is unknown or revoked." if token.strip() else "Paste a token."
        return render_page(visit, "login.html", {"next": target, "error": error}, 401)
    visit.start_over(sign_in(runtime, identity.token_id))
    visit.say("ok", f"Signed in as {identity.name} ({identity.role}).")
    return redirect(visit, target)


@router.post("/logout", response_class=HTMLResponse)
def logout(request: Request, runtime: Rt, csrf: Annotated[str, Form()] = "") -> Response:
    """End the session on the server, and replace the cookie by an anonymous one."""
    visit = open_visit(request, runtime)
    refused = check_csrf(visit, csrf)
    if refused is not None:
        return refused
    if visit.session.session_id is not None:
        sign_out(runtime, visit.session.session_id)
    visit.start_over()
    visit.say("info", "Signed out.")
    return redirect(visit, f"{visit.base}/login")
