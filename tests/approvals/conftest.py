"""Fixtures: gateways started on demand (all stopped after the test) and a loopback receiver."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from adapters.examples.receiver import Receiver, running_receiver
from tests.approvals.harness import SECRET, Live, settings_for, start
from tests.conftest import Database


class Launch(Protocol):
    def __call__(
        self,
        database: Database,
        *,
        data_dir: Path | None = ...,
        clock: Callable[[], dt.datetime] | None = ...,
        **overrides: Any,
    ) -> Live: ...


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Start a gateway (its own data dir unless one is given); every one stops after the test."""
    running: list[Live] = []
    count = itertools.count()

    def launch(
        database: Database,
        *,
        data_dir: Path | None = None,
        clock: Callable[[], dt.datetime] | None = None,
        **overrides: Any,
    ) -> Live:
        where = data_dir or tmp_path / f"data-{next(count)}"
        live = start(settings_for(database, where, **overrides), clock=clock)
        running.append(live)
        return live

    yield launch
    for live in running:
        live.stop()


class Hook:
    """The example receiver on loopback, with the gateway's webhook secret."""

    def __init__(self, receiver: Receiver, url: str) -> None:
        self.receiver = receiver
        self.url = url

    def delivered(self) -> set[str]:
        """Idempotency keys (action ids) the receiver carried out."""
        with self.receiver.lock:
            return set(self.receiver.done)


@pytest.fixture
def hook() -> Iterator[Hook]:
    receiver = Receiver(SECRET.encode())
    with running_receiver(receiver) as url:
        yield Hook(receiver, url)
