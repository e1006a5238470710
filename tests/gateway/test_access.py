"""Who may call what (``gateway.api.access``): every endpoint the app serves has a role rule, and
the running gateway keeps it: no token gets 401 (a page without a session is sent to sign in),
each role the rule leaves out gets a 403 that names the roles that may, and each role it lets
in gets past the gate (whatever the endpoint answers then).

The endpoints come from the app's own routes, so a new endpoint without a rule fails here.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from fastapi import routing

from gateway.api.access import (
    ACCESS,
    ANY_ROLE,
    EXECUTOR,
    PUBLIC,
    ROLES,
    RULES,
    WITNESS,
    markdown_table,
    may,
)
from gateway.server.app import create_app
from gateway.settings import Settings
from tests.gateway.support import REPO, Gateway, assert_problem

# The token each role of the rules is tried with: executors are the bundle's workflow roles.
TOKEN_ROLE = {EXECUTOR: "booking-agent"} | {role: role for role in ROLES if role != EXECUTOR}
# Path parameters that pass the routes' own patterns; the ids name nothing that exists.
PATH_VALUES = {"workflow": "parking", "case_type": "booking.create"}
NO_SUCH_ID = "x_0000"


def _app_endpoints() -> list[tuple[str, str]]:
    """Every (method, path) the app routes, through the routers it includes (the static
    files' mount has no methods and is left out)."""
    app = create_app(Settings())
    return sorted(
        (method, context.path)
        for context in routing.iter_route_contexts(app.routes)
        if context.path is not None
        for method in (context.methods or set()) - {"HEAD"}
    )


ENDPOINTS = _app_endpoints()
GUARDED = [endpoint for endpoint in ENDPOINTS if endpoint not in PUBLIC]
API = [endpoint for endpoint in GUARDED if not endpoint[1].startswith("/ui/")]
PAGES = [endpoint for endpoint in GUARDED if endpoint[1].startswith("/ui/")]
CALLERS = [None, *ROLES]  # None: no token (no session, for pages)


def _id(value: Any) -> str:
    if isinstance(value, tuple):
        return f"{value[0]} {value[1]}"
    return "no-token" if value is None else str(value)


def concrete(path: str) -> str:
    """The route's path with a value in each parameter."""
    return re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES.get(m.group(1), NO_SUCH_ID), path)


def may_call(role: str, method: str, path: str) -> bool:
    """What the rules written down say (not what the enforcer answers)."""
    rule = ACCESS.rule(method, path)
    assert rule is not None, f"{method} {path} has no access rule: add one to gateway.api.access"
    return may(role, rule)


def assert_names_the_roles(detail: str, method: str, path: str) -> None:
    rule = ACCESS.rule(method, path)
    assert rule is not None
    for role in rule.roles:
        assert ("any role" if role == ANY_ROLE else role) in detail, (role, detail)


@pytest.fixture(scope="module")
def tokens(sqlite_gateway: Gateway) -> dict[str, str]:
    """One token per role of the rules, bound to no workflow."""
    return {role: sqlite_gateway.token(TOKEN_ROLE[role]) for role in ROLES}


def test_every_endpoint_has_a_rule_and_every_rule_an_endpoint() -> None:
    written = {(rule.method, rule.path) for rule in RULES}
    assert sorted(set(GUARDED) - written) == [], "endpoints without an access rule"
    assert sorted(written - set(GUARDED)) == [], "rules for endpoints the app does not serve"
    assert sorted(PUBLIC - set(ENDPOINTS)) == [], "public endpoints the app does not serve"


def test_the_readme_table_is_the_rules() -> None:
    readme = (REPO / "README.md").read_text()
    assert markdown_table() in readme, (
        "README.md's 'Who may call what' is stale: paste `python -m gateway.api.access` into it"
    )


@pytest.mark.parametrize(
    "path", sorted(path for method, path in PUBLIC if method == "GET"), ids=str
)
def test_public_pages_answer_without_a_token(sqlite_gateway: Gateway, path: str) -> None:
    assert sqlite_gateway.client().get(path).status_code == 200


def _send(client: httpx.Client, method: str, path: str, **body: Any) -> httpx.Response:
    return client.request(method, concrete(path), **body)


@pytest.mark.parametrize("caller", CALLERS, ids=_id)
@pytest.mark.parametrize(("method", "path"), API, ids=_id)
def test_api_endpoint(
    sqlite_gateway: Gateway, tokens: dict[str, str], method: str, path: str, caller: str | None
) -> None:
    # A body no endpoint takes: the gate answers before the body is looked at, and past the
    # gate a 422 is as good an answer as any other.
    body = {"json": {"no_such_field": True}} if method in ("POST", "PUT", "PATCH") else {}
    if caller is None:
        assert_problem(_send(sqlite_gateway.client(), method, path, **body), 401)
        return
    response = _send(sqlite_gateway.client(tokens[caller]), method, path, **body)
    if may_call(caller, method, path):
        assert response.status_code not in (401, 403), response.text
    else:
        problem = assert_problem(response, 403)
        assert_names_the_roles(problem["detail"], method, path)


class Pages:
    """Signed-in browser sessions, one per role, with each session's CSRF nonce."""

    def __init__(self, gateway: Gateway, tokens: dict[str, str]) -> None:
        self.gateway = gateway
        self.tokens = tokens
        self.sessions: dict[str, tuple[httpx.Client, str]] = {}

    def session(self, role: str) -> tuple[httpx.Client, str]:
        if role not in self.sessions:
            client = self.gateway.client()
            client.post("/ui/login", data={"token": self.tokens[role], "csrf": _csrf(client)})
            page = client.get("/ui/autonomy")
            # A witness may use no page; the 403 page still carries the session's nonce.
            assert page.status_code == (403 if role == WITNESS else 200), page.text
            self.sessions[role] = (client, _csrf_of(page.text))
        return self.sessions[role]


def _csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, html
    return found.group(1)


def _csrf(client: httpx.Client) -> str:
    return _csrf_of(client.get("/ui/login").text)


@pytest.fixture(scope="module")
def pages(sqlite_gateway: Gateway, tokens: dict[str, str]) -> Pages:
    return Pages(sqlite_gateway, tokens)


@pytest.mark.parametrize("caller", CALLERS, ids=_id)
@pytest.mark.parametrize(("method", "path"), PAGES, ids=_id)
def test_page(pages: Pages, method: str, path: str, caller: str | None) -> None:
    if caller is None:
        anonymous = pages.gateway.client()
        form = {"csrf": _csrf(anonymous)} if method == "POST" else None
        response = _send(anonymous, method, path, data=form)
        assert response.status_code == 303, response.text
        assert response.headers["location"].startswith("/ui/login?next=")
        return
    client, csrf = pages.session(caller)
    # The session's own CSRF nonce, so that only the role decides; the form is otherwise
    # empty, and past the gate a 422 or 404 page is as good an answer as any other.
    response = _send(client, method, path, data={"csrf": csrf} if method == "POST" else None)
    if may_call(caller, method, path):
        assert response.status_code not in (401, 403), response.text
    else:
        assert response.status_code == 403, response.text
        assert response.headers["content-type"].startswith("text/html")
        assert_names_the_roles(response.text, method, path)
