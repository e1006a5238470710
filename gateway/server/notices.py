"""Telling people: held actions, failed executions handed to them, and autonomy changes,
through the notify adapter if one is set.

A notice never delays or fails what it tells of: it is sent on the event loop in the
background, and a hook that is down is the adapter's to report.
"""

from __future__ import annotations

import asyncio
from typing import Any

from adapters.base import Notifier
from gateway.identity import Identity
from gateway.schemas import ExceptionView, Proposal, Verdict
from gateway.settings import Settings

__all__ = ["Notices"]


class Notices:
    """The notices of one gateway process, and the ones still on their way."""

    def __init__(self, settings: Settings, notifier: Notifier | None) -> None:
        self._notifier = notifier
        self._base = (settings.public_url or f"http://{settings.host}:{settings.port}").rstrip("/")
        self._sending: set[asyncio.Task[Any]] = set()

    @property
    def notifier(self) -> Notifier | None:
        """The notify adapter, if one is set (the runtime closes it at shutdown)."""
        return self._notifier

    def hold(self, verdict: Verdict, proposal: Proposal, identity: Identity) -> None:
        """Tell approvers of a held action, with a link to its approval in the inbox."""
        if self._notifier is None:
            return
        event = {
            "title": f"Held for approval: {proposal.action_type} on {proposal.resource}",
            "workflow": proposal.workflow,
            "case_type": verdict.trace.autonomy.case_type,
            "executor": identity.name,
            "amount": proposal.params.get("amount"),
            "confidence": proposal.confidence,
            "reasons": [f"{r.code}: {r.message}" for r in verdict.reasons],
            "action_id": verdict.action_id,
            "approval_id": verdict.approval.id if verdict.approval else None,
        }
        if verdict.approval is not None:
            event["url"] = f"{self._base}/ui/approvals/{verdict.approval.id}"
        self._send(event)

    def exception(self, view: ExceptionView) -> None:
        """Tell approvers of a failed execution handed to them, with the last attempt's error
        and a link to the exception in the inbox."""
        if self._notifier is None:
            return
        last = view.attempts[-1] if view.attempts else None
        tried = "" if last is None or last.attempt is None else f"attempt {last.attempt}: "
        self._send(
            {
                "title": f"Execution failed, handed to people: {view.action_type}",
                "workflow": view.workflow,
                "case_type": view.case_type,
                "executor": view.executor,
                "reasons": [] if last is None else [f"{tried}{last.error}"],
                "action_id": view.action_id,
                "url": f"{self._base}/ui/exceptions/{view.id}",
            }
        )

    def announce(self, event: dict[str, Any], path: str = "/ui/autonomy") -> None:
        """Tell people of an autonomy change (a demotion, a proposed or applied promotion),
        with a link to ``path`` in the inbox."""
        if self._notifier is not None:
            self._send(event | {"url": f"{self._base}{path}"})

    def _send(self, event: dict[str, Any]) -> None:
        assert self._notifier is not None
        task = asyncio.get_running_loop().create_task(self._notifier.notify(event))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def drain(self) -> None:
        """Wait for the notices on their way (at shutdown)."""
        await asyncio.gather(*self._sending, return_exceptions=True)
