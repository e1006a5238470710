"""``webhook``: POST the action to the executor's endpoint, signed, with an idempotency key.

One call makes one attempt; the gateway's dispatcher schedules retries with exponential
backoff and jitter, so that each attempt is its own ledger entry. A 2xx answer is success; a
4xx other than 408, 409 (the receiver is still carrying out an earlier attempt with this
Idempotency-Key) and 429 will not improve with retries; anything else is retried.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import httpx

from adapters.base import Dispatch, DispatchResult
from adapters.signing import SIGNATURE_HEADER, sign

__all__ = ["WebhookAdapter", "create"]


class WebhookAdapter:
    """Delivers actions by HTTP POST."""

    name = "webhook"

    def __init__(self, secret: bytes, timeout: float = 5.0) -> None:
        self._secret = secret
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None

    async def dispatch(self, dispatch: Dispatch) -> DispatchResult:
        """POST the payload to ``dispatch.target``."""
        if not dispatch.target:
            return DispatchResult("failed", "no webhook URL is configured for this action")
        body = json.dumps(dispatch.payload, separators=(",", ":"), sort_keys=True).encode()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": dispatch.action_id,
            SIGNATURE_HEADER: sign(self._secret, body, int(time.time())),
            "Mandate-Attempt": str(dispatch.attempt),
        }
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout)
        try:
            response = await self._client.post(dispatch.target, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return DispatchResult("retry", f"{type(exc).__name__}: {exc}")
        status = response.status_code
        if 200 <= status < 300:
            return DispatchResult("succeeded", f"HTTP {status}", status)
        if 400 <= status < 500 and status not in (408, 409, 429):
            return DispatchResult("failed", f"HTTP {status}: {response.text[:200]}", status)
        return DispatchResult("retry", f"HTTP {status}", status)

    async def close(self) -> None:
        """Close the connections kept open to the executors' endpoints."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def create(options: Mapping[str, Any]) -> WebhookAdapter:
    """Factory for the entry point: ``secret`` (bytes or str), optional ``timeout`` seconds."""
    secret = options["secret"]
    return WebhookAdapter(
        secret if isinstance(secret, bytes) else str(secret).encode(),
        float(options.get("timeout", 5.0)),
    )
