"""``mandate serve --workers 2``: two worker processes behind one port, sharing the database and
the ledger as separate gateway processes do, each running its own dispatcher, expiry sweep and
policy watcher."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.examples.receiver import Receiver
from tests.approvals.harness import (
    action_status,
    copy_bundle,
    held_refund,
    http_client,
    proposal,
    verified_ledger,
    wait_for,
)
from tests.conftest import Database
from tests.scale.conftest import (
    Gateways,
    assert_carried_out_once,
    gateway_environment,
    gateway_settings,
    make_tokens,
    wait_until_delivered,
    webhooks,
)

# Odd, so that the two workers' counts of decisions differ and each can be told from the
# other in /metrics, which reports the counts of the worker that answers the scrape.
PROPOSALS = 61
HOLDS = 10
_DECISIONS = re.compile(r'^mandate_decisions_total\{.*verdict="(\w+)".*\} (\S+)$', re.MULTILINE)


def decided_here(client: httpx.Client) -> int:
    """How many decisions the worker that answers this scrape made."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    return sum(int(float(count)) for _, count in _DECISIONS.findall(response.text))


@pytest.mark.slow
def test_two_workers_share_the_port_the_ledger_the_outbox_and_the_sweep(
    sqlite_database: Database,
    tmp_path: Path,
    gateways: Gateways,
    receiver: tuple[Receiver, str],
) -> None:
    hook, hook_url = receiver
    data_dir = tmp_path / "data"
    # Held refunds expire after a second, and both workers' sweepers look ten times a second.
    bundle = copy_bundle(tmp_path / "bundle", expire_parking_holds_after_a_second)
    env = gateway_environment(
        sqlite_database, MANDATE_WEBHOOKS=webhooks(hook_url), MANDATE_SWEEP_INTERVAL="0.1"
    )
    (gateway,) = gateways.start(1, data_dir, env, workers=2, policies=bundle)
    settings = gateway_settings(sqlite_database, data_dir)
    tokens = make_tokens(settings, {"booker": "booking-agent", "payer": "payments-agent"})
    token = tokens["booker"]

    # Concurrent clients on connections of their own: the kernel hands each connection to
    # whichever worker accepts it first, so both get some.
    answers: list[dict[str, Any]] = []
    refused: list[str] = []  # what a thread cannot fail the test with, it reports here
    lock = threading.Lock()

    def send(count: int) -> None:
        for _ in range(count):
            body = proposal("parking", "booking.create", confidence=0.95)
            with http_client(gateway.url, token) as client:  # a new connection each time
                response = client.post("/v1/actions", json=body)
            with lock:
                if response.status_code == 200:
                    answers.append(response.json())
                else:
                    refused.append(f"{response.status_code} {response.text}")

    def burst(count: int, clients: int = 4) -> None:
        threads = [threading.Thread(target=send, args=(count,)) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)

    # Both workers decided some: scrapes (answered by either) see two different counts that
    # add up to every decision. Odd totals, so the counts differ; should the kernel have
    # favoured one worker, another burst gives the other its turn.
    burst(PROPOSALS // 4)
    send(PROPOSALS % 4)
    counts: set[int] = set()
    deadline = time.monotonic() + 60
    while not (len(counts) == 2 and sum(counts) == len(answers)):
        assert refused == []
        assert time.monotonic() < deadline, f"only one worker answered: {counts}"
        counts.clear()
        for _ in range(20):
            with http_client(gateway.url, token) as scraper:
                counts.add(decided_here(scraper))
        if len(counts) < 2:
            burst(2)  # eight more: the total stays odd
    assert 0 not in counts, counts
    assert {a["verdict"] for a in answers} == {"execute"}

    # Held refunds, each expired once, though both workers' sweepers find it due.
    with http_client(gateway.url, tokens["payer"]) as payer:
        held = [held_refund(payer)["action_id"] for _ in range(HOLDS)]
        wait_for(
            lambda: all(action_status(payer, a) == "expired" for a in held),
            timeout=30,
            what="every hold expired",
        )

    # Each booking carried out once, though both workers' dispatchers watch the outbox.
    wait_until_delivered(settings)
    ledger = verified_ledger(gateway.url, settings, tmp_path)
    assert [e["seq"] for e in ledger.entries] == list(range(len(ledger.entries)))
    assert len(ledger.of("proposal")) == len(answers) + HOLDS
    assert_carried_out_once(hook, ledger, {a["action_id"] for a in answers})
    assert sorted(e["subject"] for e in ledger.of("expiry")) == sorted(held)


def expire_parking_holds_after_a_second(data: dict[str, Any]) -> None:
    """Bundle data: parking approvals expire a second after they are asked for."""
    data["workflows"]["parking"]["approval_ttl_hours"] = 1 / 3600
