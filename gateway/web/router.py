"""The pages under ``/ui/``: one router assembled from the page families, and the static files.

The pages call the same domain objects as the API (``runtime.approvals``, ``runtime.audits``,
``runtime.governance``, ``runtime.ledger``, and ``gateway.execution.views`` for an action with
its ledger timeline): who may see and vote or audit, separation of duties, the reason a
rejection or an incorrect finding needs, expiry and conflicts are decided there. The pages turn
the answers (and the domain errors) into HTML with the same HTTP status the API would give.
Every page passes ``gateway.web.gate``; sessions are ``gateway.web.session``.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.staticfiles import StaticFiles

from gateway.web.pages import audits, autonomy, exceptions, inbox, ledger, login, policies
from gateway.web.render import STATIC

__all__ = ["router", "static_files"]

router = APIRouter(include_in_schema=False)
# Each family's router carries the /ui prefix on its routes: the page gate checks a request
# against the path of the route it matched (``gateway.api.access.route_path``), and FastAPI
# gives that route's own path, without the prefixes of the routers that include it.
for family in (login, inbox, exceptions, autonomy, audits, ledger, policies):
    router.include_router(family.router)


def static_files() -> StaticFiles:
    """The stylesheet, served at ``/ui/static``."""
    return StaticFiles(directory=STATIC)
