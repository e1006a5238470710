"""The HTTP layer both clients share: requests, retries with backoff, problem details.

It does no I/O itself. A call of the API is a ``Flow``: a generator that yields the steps to
take (a ``Request`` to send, a ``Pause`` to wait) and gets each request's response back, or its
``httpx.TransportError`` thrown in. ``MandateClient`` carries the steps out with blocking calls,
``AsyncMandateClient`` by awaiting; everything else (what to send, when to try again, which
error an answer is) is written once, here and in ``gateway.client.calls``.

Retries: a connection that fails, breaks or times out, and a 503 (the gateway failed closed:
nothing was executed), are tried again with exponential backoff and jitter, a bounded number of
times. That is safe for every call: a proposal's retries send the same idempotency key (so the
gateway answers the first verdict again), reads change nothing, a vote repeated while the
approval is pending counts once, and an outcome report that may have landed before its
connection broke is recognised when the retry finds it recorded (``Calls.report_outcome``).
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import logging
import random
import uuid
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar, cast

import httpx
from pydantic import ValidationError

from gateway.client.errors import MandateError, Unreachable, classify
from gateway.schemas import Problem

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "Attempts",
    "Call",
    "Flow",
    "Link",
    "Pause",
    "Request",
    "encode",
    "error_from",
    "json_default",
    "unreachable",
]

log = logging.getLogger("mandate.client")

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0  # seconds per HTTP request
DEFAULT_RETRIES = 3  # further attempts after the first, for connection errors and 503
DEFAULT_BACKOFF = 0.25  # seconds before the first retry; doubles, with jitter
_MAX_BACKOFF = 5.0
_USER_AGENT = "mandate-python/0.1.0"
_JSON = {"Content-Type": "application/json"}


def json_default(value: Any) -> Any:
    """What ``json`` cannot encode itself: money and other decimals become strings."""
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode(body: Any) -> bytes:
    """``body`` as the JSON a request carries."""
    return json.dumps(body, default=json_default, allow_nan=False).encode()


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request of the API: method, path, JSON body and query, and how to read the answer
    (``read`` gets the body of a 2xx response). ``proposing`` makes a 422 an
    ``InvalidProposal``."""

    method: str
    path: str
    read: Callable[[bytes], T]
    body: Any = None
    params: Mapping[str, str] | None = None
    proposing: bool = False


@dataclass(frozen=True)
class Request:
    """A step of a flow: send this (relative to the client's base URL) and hand back the
    response."""

    method: str
    path: str
    content: bytes | None
    params: Mapping[str, str] | None
    headers: Mapping[str, str] | None


@dataclass(frozen=True)
class Pause:
    """A step of a flow: wait this many seconds, then carry on."""

    seconds: float


# A request step is answered with its response (or has its TransportError thrown in), a pause
# with None; the flow's return value is the call's answer.
Flow: TypeAlias = Generator[Request | Pause, httpx.Response | None, T]


@dataclass
class Attempts:
    """The retry schedule of one call: how long to pause before each further attempt."""

    retries: int
    backoff: float
    made: int = 0
    broke: bool = False  # a connection broke after the request may have been sent

    def pause(self, response: httpx.Response | None) -> float | None:
        """Seconds to wait before trying again, or None to stop trying."""
        self.made += 1
        if self.made > self.retries:
            return None
        delay: float = min(_MAX_BACKOFF, self.backoff * 2.0 ** (self.made - 1))
        delay *= 0.5 + random.random() / 2  # noqa: S311 - jitter, not secrecy
        if response is not None:
            after = response.headers.get("Retry-After", "")
            if after.isdigit():
                delay = min(_MAX_BACKOFF, max(delay, float(after)))
        return delay

    def note(self, exc: httpx.TransportError) -> None:
        """Note a failed attempt; one whose request may have reached the gateway breaks the
        call."""
        if not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
            self.broke = True


class Link:
    """One gateway as a client reaches it: its base URL, the headers every request carries
    (the token, the SDK's user agent) and the retry schedule."""

    def __init__(self, url: str, token: str, *, retries: int, backoff: float) -> None:
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must not be negative")
        self.url = url.rstrip("/")
        self._retries = retries
        self._backoff = backoff
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json, application/problem+json",
            "User-Agent": _USER_AGENT,
        }

    def attempts(self) -> Attempts:
        """A fresh retry schedule for one call."""
        return Attempts(self._retries, self._backoff)

    def exchange(self, call: Call[T], attempts: Attempts | None = None) -> Flow[T]:
        """Send ``call``, trying again after a connection error or a 503 as ``attempts``
        allows; return its answer, or raise the ``MandateError`` the gateway's answer stands
        for (``Unreachable`` when no answer came)."""
        attempts = attempts or self.attempts()
        content = None if call.body is None else encode(call.body)
        request = Request(
            call.method, call.path, content, call.params, None if content is None else _JSON
        )
        while True:
            try:
                response = cast(httpx.Response, (yield request))
            except httpx.TransportError as exc:
                attempts.note(exc)
                delay = attempts.pause(None)
                if delay is None:
                    raise unreachable(self.url, exc) from exc
                log.info("retrying %s %s in %.2fs after %r", call.method, call.path, delay, exc)
                yield Pause(delay)
                continue
            if response.status_code == 503:
                delay = attempts.pause(response)
                if delay is not None:
                    log.info("retrying %s %s in %.2fs after 503", call.method, call.path, delay)
                    yield Pause(delay)
                    continue
            if response.is_success:
                return call.read(response.content)
            raise error_from(response, proposing=call.proposing)


def error_from(response: httpx.Response, *, proposing: bool = False) -> MandateError:
    """The exception for an error response, with its problem details."""
    try:
        problem = Problem.model_validate_json(response.content)
    except ValidationError:
        # Not from the gateway (a proxy's error page, say): describe it as a problem anyway.
        text = response.text.strip().splitlines()
        problem = Problem(
            title=response.reason_phrase.lower() or "error",
            status=response.status_code,
            detail=f"HTTP {response.status_code} from {response.request.url}"
            + (f": {text[0][:200]}" if text else ""),
        )
    error = classify(response.status_code, proposing=proposing)
    return error(problem.detail or problem.title, problem=problem, status=response.status_code)


def unreachable(url: str, exc: httpx.TransportError) -> Unreachable:
    what = type(exc).__name__
    return Unreachable(f"the gateway at {url} could not be reached ({what}: {exc})")
