"""Pages from the templates in ``web/templates``: every page gets who is signed in, the
session's CSRF value and its one-time message; an error page says what the API would."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from fastapi.responses import Response
from fastapi.templating import Jinja2Templates

from gateway.api.access import ACCESS
from gateway.web.format import JINJA_FILTERS
from gateway.web.session import Visit, finish

__all__ = ["STATIC", "render_page", "render_problem"]

HERE = Path(__file__).parent
STATIC = HERE / "static"

templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters.update(JINJA_FILTERS)
# The nav shows a section only to roles whose rule lets them in (the same rules as the pages').
templates.env.globals["allows"] = ACCESS.allows
# In the stylesheet's URL, so a browser fetches it again when it changes.
_CSS_VERSION = hashlib.sha256((STATIC / "ui.css").read_bytes()).hexdigest()[:12]


def render_page(
    visit: Visit, name: str, context: dict[str, Any], status_code: int = 200
) -> Response:
    """The template ``name`` with ``context``; the session's message is shown once."""
    flash = visit.session.flash
    if flash is not None:
        visit.session.flash = None
        visit.session.changed = True
    merged = {
        "identity": visit.identity,
        "csrf": visit.session.csrf,
        "flash": None if flash is None else {"kind": flash[0], "text": flash[1]},
        "base": visit.base,
        "static": f"{visit.base}/static",
        "css_version": _CSS_VERSION,
        "section": None,
    } | context
    response = templates.TemplateResponse(visit.request, name, merged, status_code=status_code)
    return finish(visit, response)


def render_problem(visit: Visit, status: int, title: str, detail: str) -> Response:
    """An error page: the problem's status, title and detail, as the API would say them."""
    context = {"status": status, "title": title, "detail": detail}
    return render_page(visit, "error.html", context, status)
