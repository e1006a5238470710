"""The one gate every page passes: signed in, a role the page is for, and for a form the
session's CSRF value.

Who may use which page is ``gateway.api.access``, the same rules as the API's; a role a page
is not for gets the 403 page naming the roles that may. Every form carries the session's CSRF
nonce; a POST without the right one is refused with 403.
"""

from __future__ import annotations

import hmac
from urllib.parse import quote

from fastapi.responses import Response

from gateway.api.access import ACCESS, route_path
from gateway.errors import Forbidden
from gateway.identity import Identity
from gateway.web.render import render_problem
from gateway.web.session import Visit, redirect

__all__ = ["check_csrf", "gate"]


def gate(visit: Visit, csrf: str | None = None) -> Identity | Response:
    """Who is signed in, if they may use this page; else what the page answers instead: sign
    in first; the 403 page for a role the page is not for; and, for a form (``csrf`` given),
    the refusal of a form that does not carry this session's CSRF value."""
    if visit.identity is None:
        return _to_sign_in(visit)
    if (denied := _role_refused(visit)) is not None:
        return denied
    refused = None if csrf is None else check_csrf(visit, csrf)
    return visit.identity if refused is None else refused


def check_csrf(visit: Visit, given: str) -> Response | None:
    """None if ``given`` is this session's CSRF value; else the 403 page that says so."""
    if given and hmac.compare_digest(given.encode(errors="replace"), visit.session.csrf.encode()):
        return None
    return render_problem(
        visit,
        403,
        "forbidden",
        "The form's CSRF token does not match your session (the page may be older than your "
        "session). Reload the page and try again.",
    )


def _to_sign_in(visit: Visit) -> Response:
    here = visit.request.url.path
    query = visit.request.url.query
    target = f"{here}?{query}" if query else here
    return redirect(visit, f"{visit.base}/login?next={quote(target, safe='/')}")


def _role_refused(visit: Visit) -> Response | None:
    """The 403 page, naming the roles that may, when the signed-in role may not use this page
    (``gateway.api.access``, the same rules as the API's)."""
    assert visit.identity is not None
    try:
        ACCESS.check(visit.identity, visit.request.method, route_path(visit.request))
    except Forbidden as exc:
        return render_problem(visit, 403, exc.title, exc.detail)
    return None
