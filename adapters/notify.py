"""``notify``: post a Slack-compatible message to a webhook so approvers learn of a hold.

Everything in the message but its link comes from what a proposer sent (the resource, the
amount, reasons that quote them) or from names people chose, and Slack's mrkdwn reads markup in
it: ``<!channel>`` pings everyone, ``<https://…|Open approval>`` is a link that shows other
words, ``&`` starts an entity and a new line starts a line that looks like the message's own.
So every value is escaped as Slack asks (``&amp;``, ``&lt;``, ``&gt;``), its control characters
(new lines included) become spaces, and the text is marked ``verbatim``, so that Slack does not
turn bare addresses, ``@channel`` or channel names into links and mentions either. The one
link is the gateway's own, to the approval's page. (Emphasis, ``*`` and ``_``, is left: it
changes how a value looks, not where a click goes or who is told.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import httpx

from adapters.base import DispatchResult

__all__ = ["NotifyAdapter", "create", "slack_message"]

_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def _plain(value: Any) -> str:
    """``value`` as text that Slack shows as it is, on one line."""
    return _CONTROL.sub(" ", str(value).translate(_ESCAPES))


def slack_message(event: Mapping[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook payload (``text`` plus blocks) for a gateway event."""
    title = str(event.get("title", "Mandate"))
    lines = [f"*{_plain(title)}*"]
    keys = ("workflow", "case_type", "executor", "amount", "confidence", "reasons")
    for key in (*keys, "approval_id"):  # the id, so an approver can find the hold
        if event.get(key) not in (None, "", []):
            value = event[key]
            shown = "; ".join(map(_plain, value)) if isinstance(value, list) else _plain(value)
            lines.append(f"• {key.replace('_', ' ')}: {shown}")
    if event.get("url"):  # made by the gateway from its public URL and an id of its own
        lines.append(f"• url: <{event['url']}>")
    text = "\n".join(lines)
    block = {"type": "mrkdwn", "text": text, "verbatim": True}
    return {"text": text, "blocks": [{"type": "section", "text": block}]}


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

    async def close(self) -> None:
        """Nothing is held: each message has a connection of its own."""


def create(options: Mapping[str, Any]) -> NotifyAdapter:
    """Factory for the entry point: ``url`` of the incoming webhook, optional ``timeout``."""
    return NotifyAdapter(str(options["url"]), float(options.get("timeout", 5.0)))
