"""The one small interface adapters implement, and how the gateway finds them.

An adapter carries out an approved action (``dispatch``) or tells people about one
(``notify``). Adapters are plug-ins: a package names its factory in the entry-point group
``mandate.adapters``; the factory takes the adapter's options (a mapping from settings) and
returns the adapter. This module imports nothing of the gateway, and adapters import only it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
    "load_factories",
]

ENTRY_POINT_GROUP = "mandate.adapters"


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


@runtime_checkable
class Notifier(Protocol):
    """Tells people about something that needs them (a held action, a demotion)."""

    name: str

    async def notify(self, event: Mapping[str, Any]) -> DispatchResult:
        """Send one notification."""
        ...


AdapterFactory = Callable[[Mapping[str, Any]], Adapter | Notifier]


def load_factories() -> dict[str, AdapterFactory]:
    """Every adapter factory installed under the ``mandate.adapters`` entry-point group."""
    return {point.name: point.load() for point in entry_points(group=ENTRY_POINT_GROUP)}
