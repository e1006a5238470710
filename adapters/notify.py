"""``notify``: post a Slack-compatible message to a webhook so approvers learn of a hold."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from adapters.base import DispatchResult

__all__ = ["NotifyAdapter", "create", "slack_message"]


def slack_message(event: Mapping[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook payload (``text`` plus blocks) for a gateway event."""
    title = str(event.get("title", "Mandate"))
    lines = [f"*{title}*"]
    keys = ("workflow", "case_type", "executor", "amount", "confidence", "reasons")
    for key in (*keys, "approval_id", "url"):  # the id, so an approver can find the hold
        if event.get(key) not in (None, "", []):
            value = event[key]
            if isinstance(value, list):
                value = "; ".join(str(v) for v in value)
            lines.append(f"• {key.replace('_', ' ')}: {value}")
    text = "\n".join(lines)
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


class NotifyAdapter:
    """Posts notifications to one incoming-webhook URL."""

    name = "notify"

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self._url = url
        self._timeout = timeout

    async def notify(self, event: Mapping[str, Any]) -> DispatchResult:
        """Post one message; report, never raise, when the hook is down."""
        try:
            async with httpx.AsyncClient(timeout=self._timeout) as client:
                response = await client.post(self._url, json=slack_message(event))
        except httpx.HTTPError as exc:
            return DispatchResult("retry", f"{type(exc).__name__}: {exc}")
        if 200 <= response.status_code < 300:
            return DispatchResult("succeeded", f"HTTP {response.status_code}", response.status_code)
        return DispatchResult("failed", f"HTTP {response.status_code}", response.status_code)


def create(options: Mapping[str, Any]) -> NotifyAdapter:
    """Factory for the entry point: ``url`` of the incoming webhook, optional ``timeout``."""
    return NotifyAdapter(str(options["url"]), float(options.get("timeout", 5.0)))
