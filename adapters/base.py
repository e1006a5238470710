"""The one small interface adapters implement, and how the gateway finds them.

An adapter carries out an approved action (``dispatch``) or tells people about one
(``notify``), and releases what it holds (``close``, once, when the gateway stops). Adapters are
plug-ins: a package names its factory in the entry-point group ``mandate.adapters``; the factory
takes the adapter's options (a mapping from settings) and returns the adapter. This module
imports nothing of the gateway, and adapters import only it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "ENTRY_POINT_GROUP",
    "Adapter",
    "AdapterFactory",
    "Dispatch",
    "DispatchResult",
    "Notifier",
    "close_adapters",
    "load_factories",
]

ENTRY_POINT_GROUP = "mandate.adapters"

log = logging.getLogger("mandate.dispatch")


@dataclass(frozen=True)
class Dispatch:
    """One attempt to carry out an action: what to do, where, and which attempt this is."""

    action_id: str
    attempt: int
    target: str | None
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DispatchResult:
    """How an attempt ended.

    ``succeeded``: done. ``failed``: will never succeed (do not retry). ``retry``: try again
    later. ``awaiting_outcome``: the executor carries it out and reports the outcome itself.
    """

    status: Literal["succeeded", "failed", "retry", "awaiting_outcome"]
    detail: str = ""
    http_status: int | None = None


@runtime_checkable
class Adapter(Protocol):
    """Carries out approved actions."""

    name: str

    async def dispatch(self, dispatch: Dispatch) -> DispatchResult:
        """Make one attempt; never raise for the target's failures, report them."""
        ...

    async def close(self) -> None:
        """Release what the adapter holds (connections); nothing is dispatched after."""
        ...


@runtime_checkable
class Notifier(Protocol):
    """Tells people about something that needs them (a held action, a demotion)."""

    name: str

    async def notify(self, event: Mapping[str, Any]) -> DispatchResult:
        """Send one notification."""
        ...

    async def close(self) -> None:
        """Release what the notifier holds; nothing is sent after."""
        ...


AdapterFactory = Callable[[Mapping[str, Any]], Adapter | Notifier]


def load_factories() -> dict[str, AdapterFactory]:
    """Every adapter factory installed under the ``mandate.adapters`` entry-point group."""
    return {point.name: point.load() for point in entry_points(group=ENTRY_POINT_GROUP)}


async def close_adapters(adapters: Iterable[Adapter | Notifier | None]) -> None:
    """Close every adapter given (None stands for one that is not configured). One that fails
    to close is logged and does not keep the others, or the gateway's shutdown, from going on."""
    given = [adapter for adapter in adapters if adapter is not None]
    results = await asyncio.gather(*(adapter.close() for adapter in given), return_exceptions=True)
    for adapter, result in zip(given, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("the %s adapter did not close: %r", adapter.name, result)
