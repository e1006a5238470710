"""``callback``: the executor carries the action out itself after an execute verdict, and
reports the outcome with ``POST /v1/actions/{id}/outcome``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adapters.base import Dispatch, DispatchResult

__all__ = ["CallbackAdapter", "create"]


class CallbackAdapter:
    """Nothing to send: the intent waits for the executor's report."""

    name = "callback"

    async def dispatch(self, dispatch: Dispatch) -> DispatchResult:
        """Mark the intent as waiting for the executor's outcome."""
        return DispatchResult("awaiting_outcome", "the executor reports the outcome")

    async def close(self) -> None:
        """Nothing is held."""


def create(options: Mapping[str, Any]) -> CallbackAdapter:
    """Factory for the entry point; the callback adapter takes no options."""
    return CallbackAdapter()
