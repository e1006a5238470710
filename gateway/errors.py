"""The gateway's domain errors. They know nothing of HTTP; ``gateway.api.problems`` maps them."""

from __future__ import annotations

__all__ = [
    "Conflict",
    "DecisionUnavailable",
    "Forbidden",
    "GatewayError",
    "InvalidInput",
    "NotFound",
]


class GatewayError(Exception):
    """Base of the errors a caller is told about."""

    title = "error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


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
    """A part the decision depends on failed: nothing was executed (fail closed)."""

    title = "decision unavailable"
