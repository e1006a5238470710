"""The real gateway on loopback for the SDK and CLI tests, and what the tests share.

Nothing of ours is mocked: ``serve_in_background`` serves ``create_app`` with real settings, on
a real SQLite file, and the SDK talks to it over real HTTP.
"""

from __future__ import annotations

import itertools
import json
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import sqlalchemy as sa

from gateway.client import MandateClient
from gateway.db.tables import ACTIONS
from gateway.server.runtime import Runtime
from gateway.server.serving import serve_in_background
from gateway.settings import Settings

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"
TTL_SECONDS = 1.5  # approvals on the short-lived gateway expire this fast

_names = itertools.count()


@dataclass
class Live:
    """A serving gateway: its URL, its runtime (tokens, database), and helpers."""

    url: str
    runtime: Runtime

    def token(self, role: str, workflow: str | None = None) -> str:
        """A new token for ``role``, with a name (and so an owner) of its own."""
        token, _ = self.runtime.tokens.create(
            name=f"{role}-{next(_names)}", role=role, workflow=workflow
        )
        return token

    def client(self, role: str, **options: Any) -> MandateClient:
        """A sync client holding a fresh token for ``role``."""
        return MandateClient(self.url, self.token(role), **options)

    def action_id(self, idempotency_key: str) -> str:
        """The id of the action proposed with this key (read from the gateway's database)."""
        with self.runtime.engine.connect() as conn:
            found = conn.execute(
                sa.select(ACTIONS.c.id).where(ACTIONS.c.idempotency_key == idempotency_key)
            ).scalar_one()
        return str(found)

    def ledger_size(self) -> int:
        return self.runtime.ledger.size()


def closed_port() -> int:
    """A loopback port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def key() -> str:
    """A fresh idempotency key."""
    return f"test-{next(_names)}-{time.monotonic_ns()}"


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One gateway with the default bundle for the SDK tests."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("gateway"), policies=POLICIES)
    with serve_in_background(settings) as served:
        yield Live(served.url, served.runtime)


@pytest.fixture(scope="session")
def expiring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A gateway whose approvals expire after ``TTL_SECONDS``, swept five times a second."""
    bundle = tmp_path_factory.mktemp("bundle") / "policies"
    shutil.copytree(POLICIES, bundle)
    data = json.loads((bundle / "data.json").read_text())
    for workflow in data["workflows"].values():
        workflow["approval_ttl_hours"] = TTL_SECONDS / 3600
    (bundle / "data.json").write_text(json.dumps(data))
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("expiring"), policies=bundle, sweep_interval=0.2
    )
    with serve_in_background(settings) as served:
        yield Live(served.url, served.runtime)


# -- proposals the default bundle decides one way ---------------------------------------------


def executes(**extra: Any) -> dict[str, Any]:
    """booking-agent: a confident booking at level 3 executes."""
    return {
        "workflow": "parking",
        "action_type": "booking.create",
        "resource": "lot-7/space-42",
        "confidence": 0.95,
        "idempotency_key": key(),
    } | extra


def held(**extra: Any) -> dict[str, Any]:
    """booking-agent: an unsure booking is held (low_confidence)."""
    return executes(confidence=0.5) | extra


def rejected(**extra: Any) -> dict[str, Any]:
    """booking-agent: a refund is beyond its mandate (Casbin: not_permitted)."""
    return {
        "workflow": "parking",
        "action_type": "refund.issue",
        "resource": "booking/B-1",
        "params": {"amount": "20.00"},
        "confidence": 0.99,
        "idempotency_key": key(),
    } | extra


class Later:
    """Run ``work`` in another thread after ``delay`` seconds; ``join()`` re-raises its error."""

    def __init__(self, delay: float, work: Callable[[], object]) -> None:
        self._failure: list[BaseException] = []

        def run() -> None:
            time.sleep(delay)
            try:
                work()
            except BaseException as exc:  # handed to the test by join()
                self._failure.append(exc)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def join(self, timeout: float = 30.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the other thread did not finish"
        if self._failure:
            raise self._failure[0]


def approve_when_held(
    live: Live,
    resource: str,
    *,
    decision: Literal["approve", "reject"] = "approve",
    reason: str = "",
) -> Callable[[], None]:
    """Work for another thread: an approver waits for the approval of the action on
    ``resource`` to appear, then decides it."""

    def work() -> None:
        with live.client("approver") as approver:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                pending = [a for a in approver.approvals() if a.resource == resource]
                if pending:
                    approver.decide(pending[0].id, decision, reason)
                    return
                time.sleep(0.05)
            raise AssertionError(f"no approval for {resource} appeared")

    return work
