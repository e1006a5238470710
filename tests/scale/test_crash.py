"""The crash test of several gateway processes on one database (PostgreSQL, and one SQLite
file): concurrent clients spread proposals over three processes, one process is killed with
SIGKILL in the middle of it and started again, and clients retry what failed on another
process with the same idempotency key.

Afterwards, as a user and an auditor see it: every proposal got one answer, however often it
was retried; each is in the ledger exactly once; ``seq`` runs without a gap; the export
verifies with the gateways' public key; and every executed action was carried out once, each
delivery an attempt the ledger recorded before it was made.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.examples.receiver import Receiver
from tests.approvals.harness import verified_ledger, wait_for
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

PROCESSES = 3
CLIENTS = 6
VICTIM = 1  # the process killed
RESEND_EVERY = 20  # each client sends every 20th proposal again, to another process


@dataclass
class Tally:
    """What the clients saw, shared by their threads."""

    answers: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    failures: Counter[str] = field(default_factory=Counter)  # what made a client retry
    in_flight: Counter[int] = field(default_factory=Counter)  # requests under way, by process
    unexpected: list[str] = field(default_factory=list)
    done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def plan(client: int, count: int) -> list[tuple[str, dict[str, Any]]]:
    """A client's proposals (token name, body): bookings that execute (delivered to the
    webhook receiver), refunds held for approval, and claims the booking bot may not make."""
    made = []
    for i in range(count):
        key = f"c{client}-p{i}"
        if i % 3 == 0:
            body = _body("parking", "booking.create", key, {"customer": f"C-{key}"}, 0.95)
            made.append((f"booking-{client}", body))
        elif i % 3 == 1:
            body = _body("parking", "refund.issue", key, {"amount": "20"}, 0.99)
            made.append((f"payments-{client}", body))
        else:
            body = _body("claims", "claim.approve", key, {"amount": "100"}, 0.99)
            made.append((f"booking-{client}", body))
    return made


def _body(
    workflow: str, action_type: str, key: str, params: dict[str, Any], confidence: float
) -> dict[str, Any]:
    return {
        "workflow": workflow,
        "action_type": action_type,
        "case_type": action_type,
        "resource": f"thing/{key}",
        "params": params,
        "confidence": confidence,
        "idempotency_key": key,
    }


def run_client(
    client: int, urls: list[str], tokens: dict[str, str], count: int, tally: Tally
) -> None:
    """Send the plan, each proposal to the next process in turn; a connection error or a 5xx
    is retried at once on the process after it, with the same body and idempotency key."""
    sessions = [httpx.Client(base_url=url, timeout=60.0) for url in urls]
    turn = itertools.count(client)
    try:
        for i, (name, body) in enumerate(plan(client, count)):
            sends = 2 if i % RESEND_EVERY == 0 else 1
            for _ in range(sends):
                answer = _until_answered(sessions, turn, tokens[name], body, tally)
                with tally.lock:
                    tally.answers[body["idempotency_key"]].append(answer)
            with tally.lock:
                tally.done += 1
    except AssertionError as exc:  # a thread cannot fail the test: the test reads this
        with tally.lock:
            tally.unexpected.append(str(exc))
    finally:
        for session in sessions:
            session.close()


def _until_answered(
    sessions: list[httpx.Client],
    turn: itertools.count[int],
    token: str,
    body: dict[str, Any],
    tally: Tally,
) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        process = next(turn) % len(sessions)
        with tally.lock:
            tally.in_flight[process] += 1
        try:
            response = sessions[process].post(
                "/v1/actions", json=body, headers={"Authorization": f"Bearer {token}"}
            )
        except httpx.TransportError as exc:
            with tally.lock:
                tally.failures[type(exc).__name__] += 1
            continue
        finally:
            with tally.lock:
                tally.in_flight[process] -= 1
        if response.status_code == 200:
            answer = response.json()
            assert isinstance(answer, dict)
            return answer
        if response.status_code >= 500:
            with tally.lock:
                tally.failures[str(response.status_code)] += 1
            continue
        raise AssertionError(
            f"proposal {body['idempotency_key']}: {response.status_code} {response.text}"
        )
    raise AssertionError(f"proposal {body['idempotency_key']} got no answer in 60 s")


def crash_under_load(
    database: Database,
    tmp_path: Path,
    gateways: Gateways,
    receiver: tuple[Receiver, str],
    per_client: int,
) -> None:
    """The whole test, on ``database``: see the module docstring."""
    hook, hook_url = receiver
    data_dir = tmp_path / "data"  # one data dir: every process signs with the same key
    settings = gateway_settings(database, data_dir)
    # A checkpoint every 200 entries: each process signs those that fall due in its batches.
    env = gateway_environment(
        database, MANDATE_WEBHOOKS=webhooks(hook_url), MANDATE_CHECKPOINT_EVERY="200"
    )
    processes = gateways.start(PROCESSES, data_dir, env)
    urls = [process.url for process in processes]
    roles = {f"booking-{c}": "booking-agent" for c in range(CLIENTS)}
    roles |= {f"payments-{c}": "payments-agent" for c in range(CLIENTS)}
    tokens = make_tokens(settings, roles)

    tally = Tally()
    total = CLIENTS * per_client
    threads = [
        threading.Thread(target=run_client, args=(c, urls, tokens, per_client, tally), daemon=True)
        for c in range(CLIENTS)
    ]
    began = time.monotonic()
    for thread in threads:
        thread.start()

    # In the middle of it, while requests to it are under way, kill one process outright
    # and start it again on its port.
    def halfway() -> bool:
        with tally.lock:
            busy = tally.done >= total // 3 and tally.in_flight[VICTIM] >= 2
            return busy or bool(tally.unexpected)

    wait_for(halfway, timeout=120, what="a third of the proposals answered")
    victim = processes[VICTIM]
    victim.kill()
    killed_at = tally.done
    time.sleep(0.5)  # the others take the load alone meanwhile
    victim.start()
    victim.wait_ready()
    for thread in threads:
        thread.join(timeout=240)
    elapsed = time.monotonic() - began
    print(
        f"\n{total} proposals over {PROCESSES} processes ({database.backend}) in "
        f"{elapsed:.1f} s: {total / elapsed:.0f}/s; killed after {killed_at}; "
        f"retried because of {dict(tally.failures)}"
    )
    assert not any(thread.is_alive() for thread in threads), "a client did not finish"
    assert tally.unexpected == []
    assert len(tally.answers) == total
    assert tally.failures, "the kill did not interrupt any request"

    # Every retry of a key, and every deliberate resend, got the answer the first one got.
    first = {key: answers[0] for key, answers in tally.answers.items()}
    for key, answers in tally.answers.items():
        seen = {(a["action_id"], a["verdict"], a["ledger"]["decision_seq"]) for a in answers}
        assert len(seen) == 1, (key, answers)
    verdicts = Counter(a["verdict"] for a in first.values())
    assert verdicts == {"execute": total // 3, "hold": total // 3, "reject": total // 3}
    executed = {a["action_id"] for a in first.values() if a["verdict"] == "execute"}

    # The dispatchers (the restarted one among them) carry out every allowed booking.
    wait_until_delivered(settings)
    ledger = verified_ledger(urls[0], settings, tmp_path)
    assert [e["seq"] for e in ledger.entries] == list(range(len(ledger.entries)))
    # Three processes opened the empty ledger at once: one of them wrote its first entry.
    assert [e["seq"] for e in ledger.of("key")] == [0]
    proposals = ledger.of("proposal")
    keys = Counter(
        (e["body"]["executor"]["owner"], e["body"]["proposal"]["idempotency_key"])
        for e in proposals
    )
    assert len(keys) == total
    assert set(keys.values()) == {1}, keys.most_common(3)
    decisions = {e["subject"]: e["body"]["verdict"] for e in ledger.of("decision")}
    assert len(decisions) == len(ledger.of("decision")) == total
    assert {a["action_id"]: a["verdict"] for a in first.values()} == decisions
    assert_carried_out_once(hook, ledger, executed)
    # Signed under the append lock, by whichever process appended when one fell due (the
    # killed one too): the signed tree sizes only grow, never two tree heads of one size.
    sizes = [int(e["body"]["note"].split("\n")[1]) for e in ledger.of("checkpoint")]
    assert len(sizes) >= len(ledger.entries) // 250, sizes
    assert sizes == sorted(set(sizes))


@pytest.mark.slow
def test_three_postgresql_gateways_one_killed_mid_load(
    pg_database: Database,
    tmp_path: Path,
    gateways: Gateways,
    receiver: tuple[Receiver, str],
) -> None:
    # The numbers: 6 clients x 300 proposals (about 20 s on 2 idle cores).
    crash_under_load(pg_database, tmp_path, gateways, receiver, per_client=300)


@pytest.mark.slow
def test_three_gateways_on_one_sqlite_file_one_killed_mid_burst(
    sqlite_database: Database,
    tmp_path: Path,
    gateways: Gateways,
    receiver: tuple[Receiver, str],
) -> None:
    # Half the PostgreSQL test's proposals: enough for a kill in the middle of a burst, and
    # the suite's time goes further elsewhere.
    crash_under_load(sqlite_database, tmp_path, gateways, receiver, per_client=150)
