"""The Python SDK: ``MandateClient`` and ``AsyncMandateClient`` for the HTTP API, ``@governed``
to route a function call through the gateway. It imports nothing of the server (no FastAPI, no
SQLAlchemy), so an executor installs and runs it alone."""

from gateway.client.sync import (
    ActionRejected,
    ApprovalStatus,
    AsyncMandateClient,
    Conflict,
    Forbidden,
    InvalidInput,
    InvalidProposal,
    MandateClient,
    MandateError,
    NotFound,
    OutcomeNotRecorded,
    OutcomeStatus,
    Unauthorized,
    Unavailable,
    Unreachable,
    WaitTimeout,
    governed,
)

__all__ = [
    "ActionRejected",
    "ApprovalStatus",
    "AsyncMandateClient",
    "Conflict",
    "Forbidden",
    "InvalidInput",
    "InvalidProposal",
    "MandateClient",
    "MandateError",
    "NotFound",
    "OutcomeNotRecorded",
    "OutcomeStatus",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
    "WaitTimeout",
    "governed",
]
