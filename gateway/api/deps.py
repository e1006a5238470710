"""Request dependencies: the runtime, and who is calling (the pipeline's authenticate step,
with the gateway's role rule for the endpoint, ``gateway.api.access``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.api.access import ACCESS, route_path
from gateway.errors import InvalidInput
from gateway.identity import Identity, authenticate
from gateway.schemas import Problem
from gateway.server.runtime import Runtime

__all__ = [
    "AUTH_PROBLEMS",
    "MAX_INTEGER",
    "Caller",
    "Rt",
    "problem_doc",
    "reject_unknown_query",
]


def problem_doc(description: str) -> dict[str, Any]:
    """How an error response is documented: problem details, as RFC 9457 names its type."""
    return {
        "model": Problem,
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }


AUTH_PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: problem_doc("No token, or an unknown or revoked one."),
    403: problem_doc(
        "The caller's role may not call this endpoint; the detail names the roles "
        "that may (README: Who may call what)."
    ),
    429: problem_doc("The token is over its rate limit: wait `Retry-After` seconds.")
    | {
        "headers": {
            "Retry-After": {
                "description": "Seconds until the token may send again.",
                "schema": {"type": "integer", "minimum": 1},
            }
        }
    },
}

# The largest integer a parameter may carry: a SQL BIGINT's, the widest the database compares
# (seqs, tree sizes, ids). Past it, SQLite cannot even take it as a statement's parameter.
MAX_INTEGER = 2**63 - 1

_bearer = HTTPBearer(auto_error=False, description="A token from `mandate token create`.")


async def _runtime(request: Request) -> Runtime:
    runtime = request.app.state.runtime
    assert isinstance(runtime, Runtime)
    return runtime


Rt = Annotated[Runtime, Depends(_runtime)]


async def _caller(
    request: Request,
    runtime: Rt,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Identity:
    header = None if credentials is None else f"{credentials.scheme} {credentials.credentials}"
    identity = authenticate(runtime.tokens, header)
    ACCESS.check(identity, request.method, route_path(request))
    return identity


Caller = Annotated[Identity, Depends(_caller)]


def _query_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def reject_unknown_query(request: Request) -> None:
    """Refuse query parameters the endpoint does not take: a misspelt filter must not be
    silently ignored."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.query_params:
        return
    known = _query_names(route.dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        takes = ", ".join(sorted(known)) or "no query parameters"
        raise InvalidInput(
            [(name, f"unknown query parameter; this endpoint takes {takes}") for name in unknown]
        )
