"""``AsyncMandateClient``: ``MandateClient`` for asyncio, the same methods awaited.

What each method sends, and its retries, are the sync client's (``gateway.client.calls`` and
``gateway.client.transport``); this module only carries the steps out, awaiting each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

import httpx

from gateway.client.calls import ApprovalStatus, Calls, OutcomeStatus
from gateway.client.transport import (
    DEFAULT_BACKOFF,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    Flow,
    Link,
    Pause,
)
from gateway.schemas import ActionView, ApprovalView, Verdict, WorkflowView

__all__ = ["AsyncMandateClient"]

T = TypeVar("T")


class AsyncMandateClient:
    """``MandateClient`` for asyncio: the same methods, awaited. Use ``async with``, or
    ``await aclose()``."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._calls = Calls(Link(url, token, retries=retries, backoff=backoff))
        self._http = httpx.AsyncClient(
            base_url=self._calls.link.url,
            headers=self._calls.link.headers,
            timeout=timeout,
            transport=transport,
        )

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return self._calls.link.url

    async def __aenter__(self) -> AsyncMandateClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def _run(self, flow: Flow[T]) -> T:
        """Carry out ``flow``: send its requests, sleep through its pauses, return its answer."""
        answer: httpx.Response | None = None
        failure: httpx.TransportError | None = None
        while True:
            try:
                step = flow.send(answer) if failure is None else flow.throw(failure)
            except StopIteration as done:
                result: T = done.value
                return result
            answer, failure = None, None
            if isinstance(step, Pause):
                await asyncio.sleep(step.seconds)
                continue
            try:
                answer = await self._http.request(
                    step.method,
                    step.path,
                    content=step.content,
                    params=step.params,
                    headers=step.headers,
                )
            except httpx.TransportError as exc:
                failure = exc

    async def propose(
        self,
        *,
        workflow: str,
        action_type: str,
        resource: str,
        params: Mapping[str, Any] | None = None,
        case_type: str | None = None,
        confidence: float | None = None,
        context: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Verdict:
        """See ``MandateClient.propose``."""
        return await self._run(
            self._calls.propose(
                workflow=workflow,
                action_type=action_type,
                resource=resource,
                params=params,
                case_type=case_type,
                confidence=confidence,
                context=context,
                idempotency_key=idempotency_key,
            )
        )

    async def get_action(self, action_id: str) -> ActionView:
        """See ``MandateClient.get_action``."""
        return await self._run(self._calls.get_action(action_id))

    async def wait(self, action_id: str, timeout: float) -> ActionView:
        """See ``MandateClient.wait``."""
        return await self._run(self._calls.wait(action_id, timeout))

    async def report_outcome(
        self,
        action_id: str,
        outcome: bool | OutcomeStatus,
        details: Mapping[str, Any] | None = None,
    ) -> ActionView:
        """See ``MandateClient.report_outcome``."""
        return await self._run(self._calls.report_outcome(action_id, outcome, details))

    async def withdraw(self, action_id: str, reason: str) -> ActionView:
        """See ``MandateClient.withdraw``."""
        return await self._run(self._calls.withdraw(action_id, reason))

    async def workflow(self, workflow: str) -> WorkflowView:
        """See ``MandateClient.workflow``."""
        return await self._run(self._calls.workflow(workflow))

    async def approvals(self, status: ApprovalStatus = "pending") -> list[ApprovalView]:
        """See ``MandateClient.approvals``."""
        return await self._run(self._calls.approvals(status))

    async def get_approval(self, approval_id: str) -> ApprovalView:
        """See ``MandateClient.get_approval``."""
        return await self._run(self._calls.get_approval(approval_id))

    async def decide(
        self, approval_id: str, decision: Literal["approve", "reject"], reason: str = ""
    ) -> ApprovalView:
        """See ``MandateClient.decide``."""
        return await self._run(self._calls.decide(approval_id, decision, reason))
