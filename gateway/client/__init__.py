"""The Python SDK: ``MandateClient`` and ``AsyncMandateClient`` for the HTTP API, ``@governed``
to route a function call through the gateway. It imports nothing of the server (no FastAPI, no
SQLAlchemy), so an executor installs and runs it alone.

- ``errors``: the exceptions, one tree under ``MandateError``;
- ``transport``: requests, retries with backoff and problem details, written without I/O;
- ``calls``: each call of the API (what to send, which model reads the answer), once;
- ``sync`` and ``aio``: the two clients, which carry those calls out (blocking, or awaited);
- ``governed``: the decorator.
"""

from gateway.client.aio import AsyncMandateClient
from gateway.client.calls import ApprovalStatus, OutcomeStatus
from gateway.client.errors import (
    ActionRejected,
    Conflict,
    Forbidden,
    InvalidInput,
    InvalidProposal,
    MandateError,
    NotFound,
    OutcomeNotRecorded,
    Unauthorized,
    Unavailable,
    Unreachable,
    WaitTimeout,
)
from gateway.client.governed import governed
from gateway.client.sync import MandateClient

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
