"""The gateway's domain errors, and the one table of the HTTP status each stands for.

The errors know nothing of HTTP. ``STATUS`` is the only place a status is chosen for one: the
API's problem details (``gateway.api.problems``), the pages (``gateway.web``) and the SDK
(``gateway.client``, which turns a status back into its error) all read it, so a fail-closed
answer is a 503 everywhere. This module imports nothing, so the SDK may import it alone.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "STATUS",
    "Conflict",
    "DecisionUnavailable",
    "Forbidden",
    "GatewayError",
    "InvalidInput",
    "NotFound",
    "Unauthenticated",
    "kind_of",
    "status_of",
]


class GatewayError(Exception):
    """Base of the errors a caller is told about."""

    title = "error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Unauthenticated(GatewayError):
    """No token, or one that is unknown or revoked."""

    title = "unauthorized"


class InvalidInput(GatewayError):
    """The request is well formed JSON but a field is wrong; ``errors`` names each field."""

    title = "invalid input"

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors))


class Forbidden(GatewayError):
    """The caller is known but may not do this."""

    title = "forbidden"


class NotFound(GatewayError):
    """There is no such thing (or the caller may not know of it)."""

    title = "not found"


class Conflict(GatewayError):
    """The request contradicts what was recorded before (an idempotency key reused)."""

    title = "conflict"


class DecisionUnavailable(GatewayError):
    """A part the decision depends on failed: nothing was executed (fail closed). ``cause``
    names the part for operators (metrics): casbin, rego, policy, ledger or database."""

    title = "decision unavailable"

    def __init__(self, detail: str, *, cause: str = "policy") -> None:
        super().__init__(detail)
        self.cause = cause


STATUS: Mapping[type[GatewayError], int] = {
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    InvalidInput: 422,
    DecisionUnavailable: 503,
}


def status_of(error: BaseException) -> int:
    """The HTTP status ``error`` stands for; 500 for anything that is not a ``GatewayError``."""
    return next((status for kind, status in STATUS.items() if isinstance(error, kind)), 500)


def kind_of(status: int) -> type[GatewayError] | None:
    """The error an HTTP status stands for (None for a status no error of ours answers)."""
    return next((kind for kind, known in STATUS.items() if known == status), None)
