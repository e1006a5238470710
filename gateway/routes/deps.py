"""Request dependencies: the runtime, and who is calling (the pipeline's authenticate step)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.errors import Forbidden
from gateway.identity import Identity, authenticate
from gateway.runtime import Runtime

__all__ = ["Caller", "Rt", "require_role"]

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
