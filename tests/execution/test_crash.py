"""The crash test: a real gateway process is killed with SIGKILL while webhooks are in flight,
restarted on the same data, and the receiver on loopback must end up having carried out every
allowed action exactly once (by Idempotency-Key), with a ledger that still verifies."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from adapters.examples.receiver import Receiver, running_receiver
from gateway.db.connect import open_engine
from gateway.db.migrations import ensure_schema
from gateway.identity import TokenBook
from gateway.settings import Settings
from tests.approvals.harness import (
    SECRET,
    action_status,
    held_refund,
    http_client,
    proposal,
    propose,
    verified_ledger,
    vote,
    wait_for,
)
from tests.conftest import Database
from tests.scale.conftest import Gateways

HOLDS = 8  # refunds held at level 1, then approved
EXECUTES = 4  # bookings executed at once


def environment(database: Database, receiver_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANDATE_")}
    env |= {
        "MANDATE_WEBHOOKS": json.dumps({"parking": receiver_url}),
        "MANDATE_WEBHOOK_SECRET": SECRET,
        "MANDATE_DISPATCH_LEASE": "2",
        "MANDATE_DISPATCH_TIMEOUT": "1.5",  # a lease must outlast an attempt
        "MANDATE_DISPATCH_BACKOFF": "0.1",
        "MANDATE_DISPATCH_ATTEMPTS": "50",
    }
    if database.backend == "postgresql":
        env["MANDATE_DATABASE_URL"] = database.url
        if database.schema:
            env["MANDATE_DATABASE_SCHEMA"] = database.schema
    return env


class SlowForBookings(Receiver):
    """The example receiver, slow to answer: refunds take ``delay``; bookings wait until the
    test lets them through, so they are surely in flight when the gateway is killed."""

    def __init__(self) -> None:
        super().__init__(SECRET.encode(), delay=0.2)
        self.gate = threading.Event()
        self.waiting: set[str] = set()

    def handle(self, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        if json.loads(body).get("action_type") == "booking.create":
            with self.lock:
                self.waiting.add(headers.get("idempotency-key", ""))
            self.gate.wait(timeout=120)
        return super().handle(headers, body)


@pytest.mark.slow
def test_sigkill_during_dispatch_then_restart_carries_out_every_action_exactly_once(
    database: Database, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    receiver = SlowForBookings()
    with running_receiver(receiver) as url:
        # On SQLite the gateway's default: a database file in its data dir.
        postgres = database.backend == "postgresql"
        settings = Settings(
            data_dir=data_dir,
            database_url=database.url if postgres else None,
            database_schema=database.schema if postgres else None,
        )
        env = environment(database, url)

        # Tokens, made in the gateway's database as `mandate token create` would.
        engine = open_engine(settings)
        ensure_schema(engine, auto_migrate=True)
        book = TokenBook(engine)
        payments, _ = book.create(name="payments-bot", role="payments-agent")
        bookings, _ = book.create(name="booking-bot", role="booking-agent")
        approver_token, _ = book.create(name="ann", role="approver", workflow="parking")
        engine.dispose()

        gateways = Gateways(tmp_path / "logs")
        try:
            (first,) = gateways.start(1, data_dir, env)
            with (
                http_client(first.url, payments) as agent,
                http_client(first.url, bookings) as booker,
                http_client(first.url, approver_token) as approver,
            ):
                holds = [held_refund(agent) for _ in range(HOLDS)]
                for held in holds:
                    answer = vote(approver, held["approval"]["id"], "approve")
                    assert answer.json()["status"] == "approved", answer.text
                executed = [
                    propose(
                        booker,
                        proposal("parking", "booking.create", confidence=0.95),
                        "execute",
                    )
                    for _ in range(EXECUTES)
                ]
            refunds = {a["action_id"] for a in holds}
            in_flight = {a["action_id"] for a in executed}
            allowed = refunds | in_flight

            # Kill the gateway while every booking is being delivered (refunds may be too),
            # then let the receiver finish: it carries them out, but the gateway never hears.
            def bookings_in_flight() -> bool:
                with receiver.lock:
                    return receiver.waiting == in_flight

            wait_for(bookings_in_flight, what="every booking in flight")
            first.kill()
            receiver.gate.set()

            (second,) = gateways.start(1, data_dir, env)
            with http_client(second.url, approver_token) as watcher:

                def all_settled() -> bool:
                    return all(
                        action_status(watcher, a) in ("succeeded", "failed") for a in allowed
                    )

                wait_for(all_settled, timeout=60, what="every intent to settle")
                statuses = {action_status(watcher, a) for a in allowed}
            assert statuses == {"succeeded"}

            # At the receiver: every allowed action carried out, each once, nothing else.
            with receiver.lock:
                done, calls = dict(receiver.done), dict(receiver.calls)
            assert set(done) == allowed
            assert len(done) == HOLDS + EXECUTES
            assert set(calls) == allowed
            # What was in flight at the kill was sent again after the restart, and the
            # receiver answered it from its memory of the Idempotency-Key.
            assert all(calls[key] >= 2 for key in in_flight), (in_flight, calls)
            assert receiver.refused == []

            ledger = verified_ledger(second.url, settings, tmp_path)
            for action_id in allowed:
                outcomes = ledger.of("outcome", action_id)
                assert [o["body"]["status"] for o in outcomes] == ["succeeded"], action_id
                assert ledger.of("execution", action_id), action_id
            for action_id in in_flight:
                assert len(ledger.of("execution", action_id)) >= 2, ledger.about(action_id)
        finally:
            gateways.stop()
