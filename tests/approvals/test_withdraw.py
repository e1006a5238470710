"""Withdrawing a held proposal, over real HTTP on SQLite and PostgreSQL: the proposer (or a
token of its standing) withdraws it while it waits; the approval leaves the inbox, a later vote
is refused, the ledger says who withdrew it and why, and nothing executes. A decided action
cannot be withdrawn, and nobody else may withdraw it."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.approvals.conftest import Launch
from tests.approvals.harness import (
    action_status,
    assert_problem,
    held_refund,
    intent_count,
    pending_ids,
    verified_ledger,
    vote,
)
from tests.conftest import Database


def withdraw(
    client: httpx.Client, action_id: str, reason: str = "nobody waits for it any more"
) -> httpx.Response:
    return client.post(f"/v1/actions/{action_id}/withdraw", json={"reason": reason})


def test_a_held_proposal_withdrawn_by_its_proposer_leaves_the_inbox_and_takes_no_votes(
    database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(database)
    agent = live.client(live.token("payments-agent", owner="payments"))
    answer = held_refund(agent)
    action_id, approval_id = answer["action_id"], answer["approval"]["id"]
    approver = live.as_role("approver")
    assert approval_id in pending_ids(approver)

    done = withdraw(agent, action_id, "the MCP client gave up waiting")
    assert done.status_code == 200, done.text
    view = done.json()
    assert (view["action_id"], view["status"]) == (action_id, "withdrawn")
    assert [e["kind"] for e in view["timeline"]] == ["proposal", "decision", "withdrawal"]

    assert approval_id not in pending_ids(approver)
    shown = approver.get(f"/v1/approvals/{approval_id}").json()
    assert shown["status"] == "withdrawn"
    assert shown["closed_reason"] == "the MCP client gave up waiting"
    withdrawn = approver.get("/v1/approvals", params={"status": "withdrawn"}).json()
    assert approval_id in {item["id"] for item in withdrawn}
    refused = assert_problem(vote(approver, approval_id, "approve"), 409)
    assert "withdrawn" in refused["detail"]
    assert intent_count(live, action_id) == 0  # nothing to carry out

    # Once is enough: a second withdrawal is refused, and says why.
    again = assert_problem(withdraw(agent, action_id), 409)
    assert "withdrawn" in again["detail"]

    # The inbox shows it closed, with who withdrew it and why, and no vote to cast.
    page = _signed_in(live.client(), live.token("approver")).get(f"/ui/approvals/{approval_id}")
    assert page.status_code == 200, page.text
    assert "withdrawn: the MCP client gave up waiting" in page.text
    assert 'value="approve"' not in page.text

    ledger = verified_ledger(live.url, live.settings, tmp_path)
    assert ledger.about(action_id) == ["proposal", "decision", "withdrawal"]
    (entry,) = ledger.of("withdrawal", action_id)
    assert entry["actor"] == view["executor"]
    assert entry["body"]["approval_id"] == approval_id
    assert entry["body"]["reason"] == "the MCP client gave up waiting"


def test_a_rotated_token_of_the_same_standing_may_withdraw_and_no_other_may(
    database: Database, launch: Launch
) -> None:
    live = launch(database)
    proposer = live.client(live.token("payments-agent", owner="payments"))
    action_id = held_refund(proposer)["action_id"]

    other_role = live.client(live.token("booking-agent", owner="payments"))
    assert_problem(withdraw(other_role, action_id), 403)
    stranger = live.client(live.token("payments-agent", owner="someone-else"))
    assert_problem(withdraw(stranger, action_id), 403)
    bound = live.client(live.token("payments-agent", owner="payments", workflow="parking"))
    assert_problem(withdraw(bound, action_id), 403)  # another binding: another standing
    approver = live.as_role("approver")
    refused = assert_problem(withdraw(approver, action_id), 403)
    assert "executor" in refused["detail"]
    assert action_status(proposer, action_id) == "held"

    rotated = live.client(live.token("payments-agent", owner="payments"))
    assert withdraw(rotated, action_id).status_code == 200
    assert action_status(proposer, action_id) == "withdrawn"


def test_a_decided_action_cannot_be_withdrawn(database: Database, launch: Launch) -> None:
    live = launch(database)
    agent = live.client(live.token("payments-agent", owner="payments"))
    approver = live.as_role("approver")
    approved = held_refund(agent)
    assert vote(approver, approved["approval"]["id"], "approve").status_code == 200
    refused = assert_problem(withdraw(agent, approved["action_id"]), 409)
    assert "approved" in refused["detail"]

    executed = agent.post(
        "/v1/actions",
        json={
            "workflow": "parking",
            "action_type": "refund.issue",
            "resource": "booking/B-2",
            "params": {"amount": "5000"},
            "idempotency_key": "too-much",
        },
    ).json()
    assert executed["verdict"] == "reject"
    assert_problem(withdraw(agent, executed["action_id"]), 409)
    assert_problem(withdraw(agent, "act_nosuchaction"), 404)
    missing = assert_problem(agent.post(f"/v1/actions/{approved['action_id']}/withdraw"), 422)
    assert missing["detail"]


def _signed_in(client: httpx.Client, token: str) -> httpx.Client:
    """``client`` with a session of the pages, signed in with ``token``."""
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/ui/login").text)
    assert csrf is not None
    client.post("/ui/login", data={"token": token, "csrf": csrf.group(1)})
    return client
