"""Who may call what: the gateway's own role rule for every endpoint, decided by Casbin.

These rules are the gateway's, not the policy bundle's. The bundle (``policies/casbin``) says
which executor role may propose which action in which workflow, and who may approve, audit or
govern there; these say which roles may call an endpoint at all. Both apply: an approver passes
this gate for ``POST /v1/approvals/{approval_id}/decisions`` and the bundle then decides whether
they may approve in that approval's workflow.

Executor roles are named by the bundle and change with it, so every role that is not one the
gateway names (the people's roles and ``witness``, ``gateway.identity.GATEWAY_ROLES``) is an
``executor`` here. A witness is another party's program: ``any-role`` does not include it, so
it reads checkpoints and consistency proofs and posts cosignatures, and calls nothing else.
Rules name the route as FastAPI does (``/v1/actions/{action_id}``); Casbin matches it with
``keyMatch3``. ``python -m gateway.api.access`` prints the table the README shows.
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass

import casbin
from casbin.model import Model
from fastapi import Request
from fastapi.routing import APIRoute

from gateway.errors import Forbidden
from gateway.identity import GATEWAY_ROLES, WITNESS_ROLE, Identity

__all__ = [
    "ACCESS",
    "ANY_ROLE",
    "EXECUTOR",
    "PUBLIC",
    "ROLES",
    "RULES",
    "WITNESS",
    "Access",
    "Rule",
    "markdown_table",
    "may",
    "route_path",
]

EXECUTOR = "executor"
APPROVER, GOVERNOR, AUDITOR, POLICY_ADMIN = "approver", "governor", "auditor", "policy-admin"
WITNESS = WITNESS_ROLE
ROLES = (EXECUTOR, APPROVER, GOVERNOR, AUDITOR, POLICY_ADMIN, WITNESS)
ANY_ROLE = "any-role"  # every role but the witness inherits it (a Casbin grouping)
_IN_ANY_ROLE = tuple(role for role in ROLES if role != WITNESS)
assert set(GATEWAY_ROLES) == set(ROLES) - {EXECUTOR}, "a gateway role without access rules"

_MODEL = """
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = g(r.sub, p.sub) && keyMatch3(r.obj, p.obj) && r.act == p.act
"""


@dataclass(frozen=True, slots=True)
class Rule:
    """The roles that may call one endpoint, and what calling it does (for the 403's words)."""

    method: str
    path: str
    roles: tuple[str, ...]
    what: str


_SEE = (EXECUTOR, APPROVER, GOVERNOR, AUDITOR)  # the proposer, and who decides or oversees it
_READERS = (AUDITOR, GOVERNOR, POLICY_ADMIN)  # ledger bodies and bundles may be sensitive

RULES: tuple[Rule, ...] = (
    Rule("POST", "/v1/actions", (EXECUTOR,), "propose actions"),
    Rule("GET", "/v1/actions/{action_id}", _SEE, "see actions"),
    Rule("POST", "/v1/actions/{action_id}/outcome", (EXECUTOR,), "report outcomes"),
    Rule("POST", "/v1/actions/{action_id}/withdraw", (EXECUTOR,), "withdraw held actions"),
    Rule(
        "POST",
        "/v1/actions/{action_id}/corrections",
        (EXECUTOR, AUDITOR, GOVERNOR),
        "report corrections",
    ),
    Rule("GET", "/v1/approvals", (ANY_ROLE,), "list approvals"),
    Rule("GET", "/v1/approvals/{approval_id}", _SEE, "see approvals"),
    Rule(
        "POST",
        "/v1/approvals/{approval_id}/decisions",
        (APPROVER,),
        "approve or reject held actions",
    ),
    Rule("GET", "/v1/exceptions", (APPROVER, GOVERNOR, AUDITOR), "see exceptions"),
    Rule("GET", "/v1/exceptions/{exception_id}", (APPROVER, GOVERNOR, AUDITOR), "see exceptions"),
    Rule(
        "POST",
        "/v1/exceptions/{exception_id}/decisions",
        (APPROVER, GOVERNOR),
        "retry or close failed executions",
    ),
    Rule("GET", "/v1/audits", (AUDITOR,), "audit executed actions"),
    Rule("GET", "/v1/audits/{audit_id}", (AUDITOR,), "audit executed actions"),
    Rule("POST", "/v1/audits/{audit_id}", (AUDITOR,), "audit executed actions"),
    Rule("GET", "/v1/autonomy", (ANY_ROLE,), "see autonomy levels"),
    Rule("GET", "/v1/autonomy/promotions", (ANY_ROLE,), "see promotions"),
    Rule(
        "POST",
        "/v1/autonomy/promotions/{promotion_id}/decisions",
        (GOVERNOR,),
        "govern autonomy levels",
    ),
    Rule("GET", "/v1/autonomy/{workflow}/{case_type}", (ANY_ROLE,), "see autonomy levels"),
    Rule("POST", "/v1/autonomy/{workflow}/{case_type}", (GOVERNOR,), "govern autonomy levels"),
    Rule("GET", "/v1/ledger/checkpoint", (ANY_ROLE, WITNESS), "read checkpoints"),
    Rule("GET", "/v1/ledger/entries", _READERS, "read ledger entries"),
    Rule("GET", "/v1/ledger/proofs/inclusion", (ANY_ROLE,), "get ledger proofs"),
    Rule("GET", "/v1/ledger/proofs/consistency", (ANY_ROLE, WITNESS), "get ledger proofs"),
    Rule("POST", "/v1/ledger/cosignatures", (WITNESS,), "cosign checkpoints"),
    Rule("GET", "/v1/ledger/export", _READERS, "export the ledger"),
    Rule("POST", "/v1/erasures", (GOVERNOR,), "erase personal data"),
    Rule("GET", "/v1/policies/active", _READERS, "read policy bundles"),
    Rule("POST", "/v1/policies", (POLICY_ADMIN,), "change policy bundles"),
    Rule("GET", "/v1/policies/shadow", _READERS, "read policy bundles"),
    Rule("DELETE", "/v1/policies/shadow", (POLICY_ADMIN,), "change policy bundles"),
    Rule("POST", "/v1/policies/replay", (POLICY_ADMIN,), "replay policy bundles"),
    Rule("GET", "/v1/workflows/{workflow}", (ANY_ROLE,), "see what a workflow takes"),
    Rule("GET", "/readyz", (ANY_ROLE,), "check readiness"),
    Rule("GET", "/metrics", (ANY_ROLE,), "read metrics"),
    Rule("GET", "/ui/", (ANY_ROLE,), "use the inbox"),
    Rule("GET", "/ui/approvals/{approval_id}", _SEE, "see approvals"),
    Rule("POST", "/ui/approvals/{approval_id}", (APPROVER,), "approve or reject held actions"),
    Rule("GET", "/ui/exceptions", (APPROVER, GOVERNOR, AUDITOR), "see exceptions"),
    Rule("GET", "/ui/exceptions/{exception_id}", (APPROVER, GOVERNOR, AUDITOR), "see exceptions"),
    Rule(
        "POST",
        "/ui/exceptions/{exception_id}",
        (APPROVER, GOVERNOR),
        "retry or close failed executions",
    ),
    Rule("GET", "/ui/autonomy", (ANY_ROLE,), "see autonomy levels"),
    Rule(
        "POST",
        "/ui/autonomy/promotions/{promotion_id}",
        (GOVERNOR,),
        "govern autonomy levels",
    ),
    Rule("POST", "/ui/autonomy/{workflow}/{case_type}", (GOVERNOR,), "govern autonomy levels"),
    Rule("GET", "/ui/audits", (AUDITOR,), "audit executed actions"),
    Rule("GET", "/ui/audits/{audit_id}", (AUDITOR,), "audit executed actions"),
    Rule("POST", "/ui/audits/{audit_id}", (AUDITOR,), "audit executed actions"),
    Rule("GET", "/ui/ledger", (ANY_ROLE,), "see the ledger's status"),
    Rule("GET", "/ui/policies", _READERS, "read policy bundles"),
)

# Endpoints anyone may call, without a token or a session: liveness, the API's documentation,
# and signing in and out of the pages.
PUBLIC: frozenset[tuple[str, str]] = frozenset(
    {
        ("GET", "/healthz"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/docs/oauth2-redirect"),
        ("GET", "/redoc"),
        ("GET", "/ui/login"),
        ("POST", "/ui/login"),
        ("POST", "/ui/logout"),
    }
)


def route_path(request: Request) -> str:
    """The path of the route the request matched, as FastAPI names it (``/v1/actions/{action_id}``):
    what the rules are written for, and few enough that every answer is cached."""
    route = request.scope.get("route")
    return route.path if isinstance(route, APIRoute) else request.url.path


def _subject(role: str) -> str:
    return role if role in GATEWAY_ROLES else EXECUTOR


def _needs(roles: tuple[str, ...]) -> str:
    if ANY_ROLE in roles:
        return "any role but witness" if WITNESS not in roles else "any role"
    names = ", ".join(
        "an executor role (one the policy bundle lets propose)" if r == EXECUTOR else r
        for r in roles
    )
    return f"the role {names}" if len(roles) == 1 else f"one of the roles {names}"


class Access:
    """The Casbin enforcer over ``rules``, with its answers cached (the rules never change
    while the process runs, and there are few roles and endpoints)."""

    def __init__(self, rules: tuple[Rule, ...] = RULES) -> None:
        self.rules = rules
        self._by_endpoint = {(rule.method, rule.path): rule for rule in rules}
        model = Model()
        model.load_model_from_text(_MODEL)
        self._enforcer = casbin.Enforcer(model)
        self._enforcer.add_policies(
            [[role, rule.path, rule.method] for rule in rules for role in rule.roles]
        )
        self._enforcer.add_grouping_policies([[role, ANY_ROLE] for role in _IN_ANY_ROLE])
        self._answers: dict[tuple[str, str, str], bool] = {}

    def rule(self, method: str, path: str) -> Rule | None:
        """The rule written for this endpoint (method and route path), if there is one."""
        return self._by_endpoint.get((method, path))

    def allows(self, role: str, method: str, path: str) -> bool:
        """Whether a token of ``role`` may call ``method path`` (a route path, as FastAPI
        names it, or a concrete request path)."""
        key = (_subject(role), path, "GET" if method == "HEAD" else method)  # r = sub, obj, act
        answer = self._answers.get(key)
        if answer is None:
            answer = bool(self._enforcer.enforce(*key))
            if len(self._answers) < 4096:  # route paths are few; concrete paths are not
                self._answers[key] = answer
        return answer

    def check(self, identity: Identity, method: str, path: str) -> None:
        """Refuse (Forbidden, 403) a caller whose role may not call this endpoint, naming the
        roles that may."""
        if self.allows(identity.role, method, path):
            return
        rule = self.rule("GET" if method == "HEAD" else method, path)
        role = repr(identity.role)
        if _subject(identity.role) == EXECUTOR:
            role += " (an executor role)"
        if rule is None:  # deny by default: an endpoint nobody wrote a rule for
            raise Forbidden(f"no role may call {method} {path}: it has no access rule")
        raise Forbidden(
            f"role {role} may not {rule.what} ({method} {path}); it needs {_needs(rule.roles)}"
        )


ACCESS = Access()


def may(role: str, rule: Rule) -> bool:
    """Whether ``role`` (one of ``ROLES``) may call the endpoint of ``rule``, as written."""
    return role in rule.roles or (ANY_ROLE in rule.roles and role in _IN_ANY_ROLE)


def markdown_table(rules: tuple[Rule, ...] = RULES) -> str:
    """The README's table "Who may call what": one row per endpoint, a column per role."""
    lines = [
        "| endpoint | to | " + " | ".join(f"`{role}`" for role in ROLES) + " |",
        "|" + "---|" * (len(ROLES) + 2),
    ]
    for rule in rules:
        marks = ["✓" if may(role, rule) else "" for role in ROLES]
        lines.append(f"| `{rule.method} {rule.path}` | {rule.what} | " + " | ".join(marks) + " |")
    public = sorted(PUBLIC, key=lambda endpoint: (endpoint[1], endpoint[0]))
    listed = ", ".join(f"`{method} {path}`" for method, path in public)
    lines += ["", textwrap.fill(f"No token needed: {listed}.", width=96)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
