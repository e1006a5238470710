"""Gateways on demand (tests.approvals' fixtures), and a loopback notify hook."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.approvals.conftest import hook, launch
from tests.autonomy.support import NotifyHook, notify_hook

__all__ = ["hook", "launch", "slack"]


@pytest.fixture
def slack() -> Iterator[NotifyHook]:
    """A Slack-compatible incoming webhook on loopback that keeps what it is sent."""
    with notify_hook() as made:
        yield made
