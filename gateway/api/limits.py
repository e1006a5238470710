"""Limits on what one caller may ask of the gateway, in one ASGI middleware in front of the
app: the size of a request body (413), a per-token request rate (429 with ``Retry-After``) and
how deeply a JSON body may nest (422, before it is parsed).

Page sizes and string lengths are bounded by the routes' parameters and ``gateway.schemas``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.direct import answer_directly
from gateway.api.problems import problem, replaying
from gateway.errors import Unauthenticated
from gateway.identity import Identity, authenticate

__all__ = ["Limits", "TokenBuckets", "json_too_deep"]

_MAX_BUCKETS = 10000  # past this many tokens seen, buckets that have refilled are dropped
# A JSON string (escapes included), or a bracket outside of one.
_SIGNIFICANT = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


class TokenBuckets:
    """A token bucket per key: ``burst`` requests at once, refilled at ``rate`` a second."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (level, when)

    def take(self, key: str) -> float:
        """Take one request from ``key``'s bucket: 0.0 if it may go now, else the seconds
        until it may."""
        now = self._clock()
        level, then = self._buckets.get(key, (float(self.burst), now))
        level = min(float(self.burst), level + (now - then) * self.rate)
        if level >= 1.0:
            self._buckets[key] = (level - 1.0, now)
            return 0.0
        if len(self._buckets) >= _MAX_BUCKETS:
            self._forget_full(now)
        self._buckets[key] = (level, now)
        return (1.0 - level) / self.rate

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled: they hold nothing a new bucket would not."""
        for key, (level, then) in list(self._buckets.items()):
            if level + (now - then) * self.rate >= self.burst:
                del self._buckets[key]


def json_too_deep(body: bytes, max_depth: int) -> bool:
    """Whether ``body`` nests arrays and objects deeper than ``max_depth``. Counts brackets
    outside strings, without parsing: a body crafted to exhaust a parser's recursion costs one
    scan. Malformed JSON is left to the parser to refuse."""
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return False  # too few brackets to nest that deep, strings or not
    depth = 0
    for match in _SIGNIFICANT.finditer(body):
        char = match.group()
        if char in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                return True
        elif char in (b"]", b"}"):
            depth -= 1
    return False


class Limits:
    """ASGI middleware, the first in front of the app.

    A body over ``max_bytes`` (paths in ``larger``, a policy bundle's upload, have their own
    limit) is refused with 413 before the app reads any of it: declared so, or read here as it
    grows. Then a request with a valid bearer token takes one from that token's bucket (429
    when it is empty) and its JSON body is refused (422) when nested deeper than
    ``max_depth``. A request without a valid token passes untouched: where a token is needed,
    the app answers 401, and an anonymous caller learns nothing about bodies from a 422. The
    body is read once, and handed on whole: to ``gateway.api.direct`` for a hot endpoint's
    common request, else to the app.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        rate: float,
        burst: int,
        max_depth: int,
        max_bytes: int,
        larger: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.buckets = TokenBuckets(rate, burst) if rate > 0 else None
        self.max_depth = max_depth
        self.max_bytes = max_bytes
        self.larger = dict(larger or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        body = b""
        if method not in ("GET", "HEAD", "OPTIONS"):
            limit = self.larger.get(scope["path"], self.max_bytes)
            declared = dict(scope["headers"]).get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                await _too_large(send, limit)
                return
            # Read the body here (at most the limit) and hand it on, so a chunked body that
            # grows past the limit is refused before the app sees any of it.
            chunks: list[bytes] = []
            size = 0
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    await _too_large(send, limit)
                    return
                chunks.append(chunk)
                more = message.get("more_body", False)
            body = b"".join(chunks)
            receive = replaying(body, receive)
        identity = _identity(scope)
        if identity is None:
            await self.app(scope, receive, send)
            return
        if self.buckets is not None:
            wait = self.buckets.take(identity.token_id)
            if wait > 0:
                await self._too_many(scope, receive, send, identity, wait)
                return
        if (
            method not in ("GET", "HEAD", "OPTIONS", "DELETE")
            and _json(scope)
            and json_too_deep(body, self.max_depth)
        ):
            message_ = f"JSON nested deeper than {self.max_depth} levels"
            response = problem(
                422,
                "invalid input",
                f"body: {message_}",
                errors=[{"field": "body", "message": message_}],
                instance=scope["path"],
            )
            await response(scope, receive, send)
            return
        if method == "POST" and await answer_directly(scope, receive, send, identity, body):
            return
        await self.app(scope, receive, send)

    async def _too_many(
        self, scope: Scope, receive: Receive, send: Send, identity: Identity, wait: float
    ) -> None:
        assert self.buckets is not None
        seconds = max(1, math.ceil(wait))
        response = problem(
            429,
            "too many requests",
            f"token {identity.name!r} is over its rate limit of {self.buckets.rate:g} "
            f"requests a second (burst {self.buckets.burst}); retry after {seconds} s",
            instance=scope["path"],
            headers={"Retry-After": str(seconds)},
        )
        await response(scope, receive, send)


async def _too_large(send: Send, limit: int) -> None:
    response = problem(413, "payload too large", f"request bodies are limited to {limit} bytes")
    scope: MutableMapping[str, Any] = {"type": "http"}

    async def no_body() -> Message:
        return {"type": "http.disconnect"}

    await response(scope, no_body, send)


def _identity(scope: Scope) -> Identity | None:
    """The caller behind the request's bearer token, or None (no token, or not a valid one,
    or the gateway not started yet)."""
    runtime = getattr(scope["app"].state, "runtime", None) if "app" in scope else None
    if runtime is None:
        return None
    header = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            header = value.decode("latin-1")
            break
    if header is None:
        return None
    try:
        return authenticate(runtime.tokens, header)
    except Unauthenticated:
        return None
    except Exception:  # the database failed: the app's own lookup meets it and answers 503
        return None


def _json(scope: Scope) -> bool:
    """Whether the body would be read as JSON: a JSON media type, or none at all (FastAPI
    reads a body without a Content-Type as JSON). Forms are not scanned."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            return b"json" in value.lower()
    return True
