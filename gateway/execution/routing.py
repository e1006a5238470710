"""Routing: which adapter carries out an allowed action, and what the gateway writes when it
hands one over.

A ``webhook`` (HTTP POST, HMAC-signed with the key ``load_webhook_secret`` keeps) carries out
the actions of the executors and workflows that have one configured; any other action is the
executor's own to carry out (``callback``): it gets the ``execute`` verdict and reports the
outcome (``gateway.execution.outcomes``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Routing", "handover", "intent_row", "load_webhook_secret"]


@dataclass(frozen=True)
class Routing:
    """Which adapter carries out an executor's actions: a webhook URL configured for the
    executor's token name or, failing that, its workflow; otherwise the executor itself
    (callback)."""

    webhooks: Mapping[str, str]

    def route(self, executor: str, workflow: str) -> tuple[str, str | None]:
        """(adapter name, target)."""
        url = self.webhooks.get(executor) or self.webhooks.get(workflow)
        return ("webhook", url) if url else ("callback", None)


def load_webhook_secret(given: str | None, path: Path) -> bytes:
    """The webhook HMAC key: the configured one, or one kept (mode 0600) in the data dir.

    Made on first use: written whole to a private temporary file, then linked into place,
    which fails rather than overwrite. Processes that share the data dir and start at once
    (gateways, ``serve --workers``) therefore all read the one key that was published first;
    none reads a file still being written (an empty key) or dies on losing the race.
    """
    if given:
        return given.encode()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_hex(32).encode())
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):  # another process published one first
            os.link(scratch, path)
        scratch.unlink()
    secret = path.read_bytes().strip()
    if not secret:  # left so by an earlier version that died while writing it
        raise RuntimeError(f"{path} is empty; delete it to have a new key made")
    return secret


def intent_row(
    action_id: str, routing: Routing, executor: str, workflow: str, now: str
) -> dict[str, Any]:
    """The outbox row an allowed action starts with."""
    adapter, target = routing.route(executor, workflow)
    return {
        "action_id": action_id,
        "adapter": adapter,
        "target": target,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "lease_until": None,
        "last_error": None,
        "created_at": now,
        "updated_at": now,
    }


def handover(action_id: str) -> dict[str, Any]:
    """The ``execution`` entry of an action handed to its executor (the callback adapter):
    one attempt, now waiting for the executor's outcome."""
    return {
        "action_id": action_id,
        "attempt": 1,
        "adapter": "callback",
        "target": None,
        "result": "awaiting_outcome",
    }
