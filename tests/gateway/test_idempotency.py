"""An idempotency key, and an action's outcome, belong to the token that proposed it and to any
other token of the same owner, role and workflow binding (a rotated token): that is who could
have proposed the action itself. Another token of the same owner that resends the key gets a
409 that names no action, whether the key's proposal is recorded or still being decided, and
may not report the action's outcome."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gateway.errors import Conflict
from gateway.identity import Identity
from gateway.schemas import Proposal, Verdict
from gateway.server.runtime import Runtime
from gateway.settings import Settings
from tests.conftest import Database
from tests.gateway.support import POLICIES, Gateway, assert_problem, proposal


def refund(key: str | None = None) -> dict[str, Any]:
    """A small refund: payments-agent's, held at level 1 (advisory)."""
    return proposal("parking", "refund.issue", amount="20.00", confidence=0.95, key=key)


def assert_names_no_action(problem: dict[str, object], action_id: str) -> None:
    detail = str(problem["detail"])
    assert action_id not in detail, detail
    assert "act_" not in detail, detail


def test_a_key_answers_only_a_token_that_could_have_proposed_it(gateway: Gateway) -> None:
    payments = gateway.as_role("payments-agent", owner="ops")
    body = refund()
    first = payments.post("/v1/actions", json=body)
    assert first.status_code == 200, first.text
    assert first.json()["verdict"] == "hold"
    action_id = first.json()["action_id"]
    recorded = gateway.proposals_recorded()

    # Same owner, another role: neither the same body nor another one gets the refund's answer.
    booking = gateway.as_role("booking-agent", owner="ops")
    for sent in (body, proposal("parking", "booking.create", key=body["idempotency_key"])):
        problem = assert_problem(booking.post("/v1/actions", json=sent), 409)
        assert_names_no_action(problem, action_id)
        assert body["idempotency_key"] in problem["detail"]
    # Same owner and role, another binding: not the same standing either.
    bound = gateway.as_role("payments-agent", workflow="parking", owner="ops")
    assert_names_no_action(assert_problem(bound.post("/v1/actions", json=body), 409), action_id)
    assert gateway.proposals_recorded() == recorded

    # Another token of the same owner, role and binding (a rotated one) gets the answer.
    successor = gateway.as_role("payments-agent", owner="ops")
    again = successor.post("/v1/actions", json=body)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert payments.post("/v1/actions", json=body).json() == first.json()
    assert gateway.proposals_recorded() == recorded


def test_only_a_token_of_the_proposers_standing_reports_the_outcome(
    sqlite_gateway: Gateway,
) -> None:
    booking = sqlite_gateway.as_role("booking-agent", owner="ops-outcomes")
    cancel = proposal("parking", "booking.cancel", confidence=0.95)
    answer = booking.post("/v1/actions", json=cancel)
    assert answer.status_code == 200, answer.text
    assert answer.json()["verdict"] == "execute"  # level 2; no webhook: the callback adapter
    action_id = answer.json()["action_id"]
    outcome = {"status": "succeeded", "details": {}}

    others = {
        "bound to claims": sqlite_gateway.as_role(
            "claims-agent", workflow="claims", owner="ops-outcomes"
        ),
        "another role": sqlite_gateway.as_role("payments-agent", owner="ops-outcomes"),
        "another binding": sqlite_gateway.as_role(
            "booking-agent", workflow="parking", owner="ops-outcomes"
        ),
    }
    for why, client in others.items():
        problem = assert_problem(client.post(f"/v1/actions/{action_id}/outcome", json=outcome), 403)
        detail = problem["detail"]
        if why == "bound to claims":
            assert "bound to workflow 'claims'" in detail, detail
        else:
            assert "same owner, role and workflow binding" in detail, (why, detail)
    assert booking.get(f"/v1/actions/{action_id}").json()["status"] == "approved"

    successor = sqlite_gateway.as_role("booking-agent", owner="ops-outcomes")
    done = successor.post(f"/v1/actions/{action_id}/outcome", json=outcome)
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "succeeded"


# -- the in-flight path: a duplicate that arrives while the first is being decided ----------


def _start(database: Database, tmp_path: Path) -> Runtime:
    return Runtime.start(
        Settings(
            data_dir=tmp_path / "data",
            policies=POLICIES,
            database_url=database.url,
            database_schema=database.schema,
        )
    )


def _identity(runtime: Runtime, role: str, name: str, workflow: str | None = None) -> Identity:
    _, identity = runtime.tokens.create(name=name, role=role, workflow=workflow, owner="ops")
    return identity


def test_a_duplicate_in_flight_from_another_token_is_a_409_naming_no_action(
    sqlite_database: Database, tmp_path: Path
) -> None:
    runtime = _start(sqlite_database, tmp_path)
    try:
        payments = _identity(runtime, "payments-agent", "payments")
        booking = _identity(runtime, "booking-agent", "booking")
        bound = _identity(runtime, "payments-agent", "payments-bound", "parking")
        successor = _identity(runtime, "payments-agent", "payments-2")
        body = Proposal.model_validate(refund())
        size = runtime.ledger.size()

        async def at_once() -> list[Verdict | BaseException]:
            # The first is decided; the others arrive while its entries are being written.
            senders = (payments, booking, bound, successor)
            return await asyncio.gather(
                *(runtime.decider.propose(who, body) for who in senders), return_exceptions=True
            )

        first, other_role, other_binding, same_standing = asyncio.run(at_once())
        written = runtime.ledger.size() - size
    finally:
        runtime.close()
    assert isinstance(first, Verdict), first
    assert first.verdict == "hold"
    for refused in (other_role, other_binding):
        assert isinstance(refused, Conflict), refused
        assert first.action_id not in refused.detail
        assert "act_" not in refused.detail
    assert same_standing == first
    assert written == 2  # one proposal and its decision
