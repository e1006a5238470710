"""Two gateway processes on one PostgreSQL database, started together on an empty schema, as a
deployment behind a load balancer has them: what one process records, the other answers from
(an idempotency key, an approval's votes, a revoked token), and one of them at a time signs the
periodic checkpoints, never one over another."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from gateway.db.connect import open_engine
from gateway.db.tables import INTENTS
from gateway.web.session import SESSION_COOKIE
from tests.approvals.harness import (
    POLICIES,
    action_status,
    held_claim,
    http_client,
    pending_ids,
    proposal,
    unique,
    verified_ledger,
    vote,
    wait_for,
)
from tests.conftest import Database
from tests.scale.conftest import (
    MANDATE,
    Gateway,
    Gateways,
    gateway_environment,
    gateway_settings,
    make_tokens,
    pg_schema,
)


@dataclass
class Pair:
    """Two processes on one database, and what makes more of their tokens."""

    a: Gateway
    b: Gateway
    database: Database
    data_dir: Path

    def tokens(self, roles: dict[str, str]) -> dict[str, str]:
        """Tokens for these roles under fresh names (the tests share the processes)."""
        names = {name: unique(name) for name in roles}
        made = make_tokens(
            gateway_settings(self.database, self.data_dir),
            {names[name]: role for name, role in roles.items()},
        )
        return {name: made[names[name]] for name in roles}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Two processes started together on an empty schema, shared by this module's tests
    (starting them is most of what a test here costs)."""
    tmp = tmp_path_factory.mktemp("pair")
    with pg_schema() as database:
        gateways = Gateways(tmp / "logs")
        try:
            # Each process's checkpoint timer fires every half second (and, in the one that
            # does not hold the signer lease, tries to take it).
            env = gateway_environment(database, MANDATE_CHECKPOINT_INTERVAL="0.5")
            a, b = gateways.start(2, tmp / "data", env)
            yield Pair(a, b, database, tmp / "data")
        finally:
            gateways.stop()


def post(client: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    return client.post("/v1/actions", json=body)


def at_once(
    one: Callable[[], httpx.Response], other: Callable[[], httpx.Response]
) -> tuple[httpx.Response, httpx.Response]:
    """Send two requests at the same moment (each from a thread of its own)."""
    start = threading.Barrier(2)
    got: list[httpx.Response | None] = [None, None]

    def send(i: int, request: Callable[[], httpx.Response]) -> None:
        start.wait()
        got[i] = request()

    threads = [threading.Thread(target=send, args=pair) for pair in enumerate((one, other))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    first, second = got
    assert first is not None, "a request did not finish"
    assert second is not None, "a request did not finish"
    return first, second


def refused(client: httpx.Client) -> bool:
    """Whether the client's token is refused (401)."""
    return client.get("/v1/approvals").status_code == 401


def intents(pair: Pair, action_ids: list[str]) -> dict[str, int]:
    """Execution intents per action, of those given that have any (the outbox's rows)."""
    engine = open_engine(gateway_settings(pair.database, pair.data_dir))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(INTENTS.c.action_id, sa.func.count())
                .where(INTENTS.c.action_id.in_(action_ids))
                .group_by(INTENTS.c.action_id)
            ).all()
    finally:
        engine.dispose()
    return {action_id: count for action_id, count in rows}


@pytest.mark.slow
def test_an_idempotency_key_gets_one_answer_from_either_process(pair: Pair) -> None:
    token = pair.tokens({"booker": "booking-agent"})["booker"]
    with http_client(pair.a.url, token) as on_a, http_client(pair.b.url, token) as on_b:
        body = proposal("parking", "booking.create", confidence=0.95)
        first = post(on_a, body)
        assert first.status_code == 200, first.text
        again = post(on_b, body)
        assert again.status_code == 200, again.text
        assert again.json() == first.json()
        changed = post(on_b, body | {"resource": "thing/2"})
        assert changed.status_code == 409, changed.text
        assert first.json()["action_id"] not in changed.json()["detail"]  # names no action

        # The same new key sent to both processes at the same moment: one action.
        for _ in range(10):
            body = proposal("parking", "booking.create", confidence=0.95)
            on_one, on_other = at_once(partial(post, on_a, body), partial(post, on_b, body))
            assert on_one.status_code == on_other.status_code == 200, on_one.text
            assert on_one.json() == on_other.json()


@pytest.mark.slow
def test_a_vote_on_one_process_and_the_quorum_on_the_other(pair: Pair) -> None:
    tokens = pair.tokens({"claimer": "claims-agent", "ann": "approver", "bob": "approver"})
    with (
        http_client(pair.a.url, tokens["claimer"]) as claimer,
        http_client(pair.a.url, tokens["ann"]) as ann_on_a,
        http_client(pair.b.url, tokens["bob"]) as bob_on_b,
        http_client(pair.b.url, tokens["ann"]) as ann_on_b,
    ):
        held = held_claim(claimer)
        approval_id = held["approval"]["id"]

        first = vote(ann_on_a, approval_id, "approve", "checked the invoice")
        assert first.status_code == 200, first.text
        assert first.json()["status"] == "pending"
        # Ann's vote counts once, on whichever process she casts it again.
        repeat = vote(ann_on_b, approval_id, "approve", "checked it twice")
        assert repeat.status_code == 200, repeat.text
        assert repeat.json()["status"] == "pending"

        second = vote(bob_on_b, approval_id, "approve", "policy holder confirmed")
        assert second.status_code == 200, second.text
        assert second.json()["status"] == "approved"
        # Process A sees the approval decided and the action allowed.
        assert action_status(ann_on_a, held["action_id"]) == "approved"
        assert approval_id not in pending_ids(ann_on_a)
    assert intents(pair, [held["action_id"]]) == {held["action_id"]: 1}


@pytest.mark.slow
def test_votes_cast_at_once_on_two_processes_are_each_counted_once(pair: Pair) -> None:
    tokens = pair.tokens({"claimer": "claims-agent", "ann": "approver", "bob": "approver"})
    with (
        http_client(pair.a.url, tokens["claimer"]) as claimer,
        http_client(pair.a.url, tokens["ann"]) as ann_on_a,
        http_client(pair.b.url, tokens["bob"]) as bob_on_b,
    ):
        # Both approve the first three at the same moment; on the other three Bob rejects
        # while Ann approves.
        plans = [("approve", "approve")] * 3 + [("approve", "reject")] * 3
        held = [held_claim(claimer) for _ in plans]
        votes = [
            at_once(
                partial(vote, ann_on_a, h["approval"]["id"], ann_says, "looks right"),
                partial(vote, bob_on_b, h["approval"]["id"], bob_says, "looks wrong"),
            )
            for h, (ann_says, bob_says) in zip(held, plans, strict=True)
        ]
        for ann, bob in votes[:3]:
            assert (ann.status_code, bob.status_code) == (200, 200), (ann.text, bob.text)
            # One of them was second, and the second vote reached the quorum.
            assert sorted([ann.json()["status"], bob.json()["status"]]) == ["approved", "pending"]
        for h in held[3:]:
            # One rejection rejects, whichever vote came first.
            assert action_status(ann_on_a, h["action_id"]) == "rejected"
    approved = [h["action_id"] for h in held[:3]]
    assert intents(pair, [h["action_id"] for h in held]) == dict.fromkeys(approved, 1)


@pytest.mark.slow
def test_a_token_revoked_on_the_command_line_stops_working_on_every_process(
    pair: Pair, tmp_path: Path
) -> None:
    # The command checks the role against the bundle's Casbin policy.
    env = gateway_environment(pair.database, MANDATE_POLICIES=str(POLICIES))
    carol = unique("carol")
    create = [str(MANDATE), "token", "create", "--name", carol, "--role", "approver"]
    made = subprocess.run(
        [*create, "--data-dir", str(pair.data_dir)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    token = made.stdout.strip()
    clients = [http_client(url, token) for url in (pair.a.url, pair.b.url)]
    try:
        for client in clients:  # known, and so cached, on both
            assert client.get("/v1/approvals").status_code == 200

        subprocess.run(
            [str(MANDATE), "token", "revoke", carol, "--data-dir", str(pair.data_dir)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            check=True,
        )
        revoked_at = time.monotonic()
        # A second, as promised; 3 s leaves room for a slow machine without hiding a cache
        # that never expires.
        for client in clients:
            wait_for(
                partial(refused, client),
                timeout=3 - (time.monotonic() - revoked_at),
                what=f"401 from {client.base_url} after the revocation",
            )
    finally:
        for client in clients:
            client.close()


def _csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, page.text
    return found.group(1)


@pytest.mark.slow
def test_signing_out_on_one_process_ends_the_session_on_every_process(pair: Pair) -> None:
    token = pair.tokens({"dana": "approver"})["dana"]
    with httpx.Client(base_url=pair.a.url, timeout=30.0) as on_a:
        login = on_a.get("/ui/login")
        signed_in = on_a.post("/ui/login", data={"token": token, "csrf": _csrf(login)})
        assert signed_in.status_code == 303, signed_in.text
        cookie = {"Cookie": f"{SESSION_COOKIE}={on_a.cookies[SESSION_COOKIE]}"}
    with httpx.Client(base_url=pair.b.url, timeout=30.0, headers=cookie) as on_b:
        inbox = on_b.get("/ui/")
        assert inbox.status_code == 200  # the session is the database's, not A's
        assert on_b.post("/ui/logout", data={"csrf": _csrf(inbox)}).status_code == 303
    with httpx.Client(base_url=pair.a.url, timeout=30.0, headers=cookie) as replayed_on_a:
        again = replayed_on_a.get("/ui/")
    assert again.status_code == 303
    assert "/ui/login?next=" in again.headers["location"]


@pytest.mark.slow
def test_each_new_tail_is_signed_once_whichever_process_signs_it(
    pair: Pair, tmp_path: Path
) -> None:
    """One process holds the signer lease and signs when its checkpoint interval passes with
    entries unsigned; the other's timer signs nothing (it only tries to take the lease). The
    decision is made on A, and whichever holds the lease signs it. Never a checkpoint over a
    checkpoint, though both timers fire twice a second all along."""
    tokens = pair.tokens({"booker": "booking-agent", "auditor": "auditor"})
    with (
        http_client(pair.a.url, tokens["booker"]) as booker,
        http_client(pair.b.url, tokens["auditor"]) as auditor,
        http_client(pair.a.url, tokens["auditor"]) as auditor_on_a,
    ):
        signers = [
            client.get("/readyz").json()["checks"]["checkpoint_signer"]
            for client in (auditor_on_a, auditor)
        ]
        assert sorted(signers) == [
            "ok (another process holds the signer lease)",
            "ok (this process signs the periodic checkpoints)",
        ], signers
        answer = post(booker, proposal("parking", "booking.create", confidence=0.95))
        assert answer.status_code == 200, answer.text
        decided = answer.json()["ledger"]["decision_seq"]
        wait_for(
            lambda: latest_checkpoint(auditor)["size"] > decided,
            timeout=10,
            what="a checkpoint covering the decision",
        )
    time.sleep(2)  # four more intervals of each process's timer, with nothing new to sign
    ledger = verified_ledger(pair.a.url, gateway_settings(pair.database, pair.data_dir), tmp_path)
    kinds = [entry["kind"] for entry in ledger.entries]
    assert ("checkpoint", "checkpoint") not in set(pairwise(kinds))


def latest_checkpoint(client: httpx.Client) -> dict[str, Any]:
    """The latest signed checkpoint, as a process serves it."""
    response = client.get("/v1/ledger/checkpoint")
    assert response.status_code == 200, response.text
    checkpoint = response.json()
    assert isinstance(checkpoint, dict)
    return checkpoint
