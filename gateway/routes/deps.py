"""Request dependencies: the runtime, and who is calling (the pipeline's authenticate step)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.errors import Forbidden
from gateway.identity import Identity, authenticate
from gateway.runtime import Runtime
from gateway.schemas import Problem

__all__ = ["AUTH_PROBLEMS", "Caller", "Rt", "problem_doc", "require_role"]


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
    403: problem_doc("The caller's role may not do this."),
}

_bearer = HTTPBearer(auto_error=False, description="A token from `mandate token create`.")


def _runtime(request: Request) -> Runtime:
    runtime = request.app.state.runtime
    assert isinstance(runtime, Runtime)
    return runtime


Rt = Annotated[Runtime, Depends(_runtime)]


def _caller(
    runtime: Rt,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Identity:
    header = None if credentials is None else f"{credentials.scheme} {credentials.credentials}"
    return authenticate(runtime.tokens, header)


Caller = Annotated[Identity, Depends(_caller)]


def require_role(identity: Identity, *roles: str) -> None:
    """Refuse (403) a caller whose role is not one of ``roles``."""
    if identity.role not in roles:
        raise Forbidden(
            f"role {identity.role!r} may not do this; it needs one of {', '.join(roles)}"
        )
