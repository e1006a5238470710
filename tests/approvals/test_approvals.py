"""Approvals over real HTTP, on SQLite and PostgreSQL: who sees and decides a held action,
separation of duties, quorum, one rejection rejects, votes that must not count, and that every
vote is a ledger entry of a ledger that still verifies."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.approvals.conftest import Hook, Launch
from tests.approvals.harness import (
    action_status,
    assert_problem,
    held_claim,
    held_refund,
    intent_count,
    pending_ids,
    verified_ledger,
    vote,
    wait_for,
)
from tests.conftest import Database


def test_a_hold_is_seen_and_decided_only_by_approvers_of_its_workflow(
    database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(database)
    agent_token, _ = live.runtime.tokens.create(
        name="claims-bot", role="claims-agent", owner="claims-team"
    )
    agent = live.client(agent_token)
    answer = held_claim(agent)
    approval_id = answer["approval"]["id"]

    claims_approver = live.as_role("approver", workflow="claims")
    listed = claims_approver.get("/v1/approvals", params={"status": "pending"}).json()
    (item,) = [a for a in listed if a["id"] == approval_id]
    assert item["action_id"] == answer["action_id"]
    assert (item["workflow"], item["case_type"]) == ("claims", "claim.approve")
    assert (item["executor"], item["amount"], item["quorum"], item["approvals"]) == (
        "claims-bot",
        "12000",
        2,
        0,
    )
    assert "high_value" in {r["code"] for r in item["reasons"]}

    parking_approver = live.as_role("approver", workflow="parking")
    assert approval_id not in pending_ids(parking_approver)
    assert_problem(parking_approver.get(f"/v1/approvals/{approval_id}"), 403)
    refused = assert_problem(vote(parking_approver, approval_id, "approve"), 403)
    assert "claims" in refused["detail"]

    # Separation of duties: the proposer, and a token of the same owner that is an approver.
    assert_problem(vote(agent, approval_id, "approve"), 403)
    colleague = live.as_role("approver", workflow="claims", owner="claims-team")
    refused = assert_problem(vote(colleague, approval_id, "approve"), 403)
    assert "separation of duties" in refused["detail"]

    # Nobody's vote counted; the action still waits.
    again = claims_approver.get(f"/v1/approvals/{approval_id}").json()
    assert (again["status"], again["approvals"], again["votes"]) == ("pending", 0, [])
    ledger = verified_ledger(live.url, live.settings, tmp_path)
    assert ledger.about(answer["action_id"]) == ["proposal", "decision"]


def test_rejecting_needs_a_reason_and_one_rejection_rejects(
    database: Database, launch: Launch, hook: Hook, tmp_path: Path
) -> None:
    live = launch(database, webhooks={"claims": hook.url})
    agent = live.as_role("claims-agent")
    answer = held_claim(agent)
    action_id, approval_id = answer["action_id"], answer["approval"]["id"]
    first, second = (live.as_role("approver", workflow="claims") for _ in range(2))

    assert vote(first, approval_id, "approve").json()["approvals"] == 1
    for blank in ("", "   "):
        problem = assert_problem(vote(second, approval_id, "reject", blank), 422)
        assert "reason" in {error["field"] for error in problem["errors"]}, problem

    rejected = vote(second, approval_id, "reject", "the claimant withdrew")
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["status"] == "rejected"
    assert rejected.json()["closed_reason"] == "the claimant withdrew"
    assert action_status(agent, action_id) == "rejected"
    assert intent_count(live, action_id) == 0
    assert approval_id not in pending_ids(first)
    assert hook.delivered() == set()

    ledger = verified_ledger(live.url, live.settings, tmp_path)
    assert ledger.about(action_id) == ["proposal", "decision", "approval", "rejection"]
    (rejection,) = ledger.of("rejection", action_id)
    assert rejection["body"]["approval_id"] == approval_id
    assert rejection["body"]["reason"] == "the claimant withdrew"


def test_quorum_of_two_approves_at_the_second_approver_and_dispatches(
    database: Database, launch: Launch, hook: Hook, tmp_path: Path
) -> None:
    live = launch(database, webhooks={"claims": hook.url})
    agent = live.as_role("claims-agent")
    answer = held_claim(agent)
    action_id, approval_id = answer["action_id"], answer["approval"]["id"]
    alice = live.as_role("approver", workflow="claims", owner="alice")
    alice_laptop = live.as_role("approver", workflow="claims", owner="alice")
    bob = live.as_role("approver", workflow="claims", owner="bob")

    first = vote(alice, approval_id, "approve", "looks right")
    assert first.status_code == 200, first.text
    assert (first.json()["status"], first.json()["approvals"]) == ("pending", 1)
    assert approval_id in pending_ids(bob)

    # The same person again, from the same or another token: counted once, nothing recorded.
    for repeat in (alice, alice_laptop):
        same = vote(repeat, approval_id, "approve")
        assert same.status_code == 200, same.text
        assert (same.json()["status"], same.json()["approvals"]) == ("pending", 1)
    other_way = assert_problem(vote(alice, approval_id, "reject", "second thoughts"), 409)
    assert "already voted approve" in other_way["detail"]
    assert action_status(agent, action_id) == "held"

    second = vote(bob, approval_id, "approve")
    assert second.status_code == 200, second.text
    assert (second.json()["status"], second.json()["approvals"]) == ("approved", 2)
    assert [v["decision"] for v in second.json()["votes"]] == ["approve", "approve"]

    wait_for(lambda: action_status(agent, action_id) == "succeeded", what="the outcome")
    assert hook.delivered() == {action_id}
    assert hook.receiver.done[action_id]["action_id"] == action_id
    assert hook.receiver.calls[action_id] == 1

    ledger = verified_ledger(live.url, live.settings, tmp_path)
    assert ledger.about(action_id) == [
        "proposal",
        "decision",
        "approval",
        "approval",
        "execution",
        "outcome",
    ]
    votes = ledger.of("approval", action_id)
    assert [v["body"]["voter"]["owner"] for v in votes] == ["alice", "bob"]
    assert all(v["body"]["approval_id"] == approval_id for v in votes)
    assert ledger.of("outcome", action_id)[0]["body"]["status"] == "succeeded"


def test_votes_on_settled_or_unknown_approvals_are_refused_and_write_nothing(
    database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(database)
    agent = live.as_role("payments-agent")
    approver = live.as_role("approver", workflow="parking")
    latecomer = live.as_role("approver", workflow="parking")
    approved = held_refund(agent)
    rejected = held_refund(agent)
    assert vote(approver, approved["approval"]["id"], "approve").json()["status"] == "approved"
    no = vote(approver, rejected["approval"]["id"], "reject", "duplicate refund")
    assert no.json()["status"] == "rejected"
    before = verified_ledger(live.url, live.settings, tmp_path)

    for answer, status in ((approved, "approved"), (rejected, "rejected")):
        for decision in ("approve", "reject"):
            problem = assert_problem(
                vote(latecomer, answer["approval"]["id"], decision, "too late"), 409
            )
            assert status in problem["detail"]
        # The voter who settled it: the same vote again (a retry whose answer was lost) is
        # answered as before and counts once; the other way is refused.
        mine, other = ("approve", "reject") if status == "approved" else ("reject", "approve")
        again = vote(approver, answer["approval"]["id"], mine, "again")
        assert again.status_code == 200
        assert again.json()["status"] == status
        assert_problem(vote(approver, answer["approval"]["id"], other, "again"), 409)
    assert_problem(vote(latecomer, "apr_000000000000000000000000", "approve"), 404)

    after = verified_ledger(live.url, live.settings, tmp_path)
    votes = [e for e in after.entries if e["kind"] in ("approval", "rejection")]
    assert votes == [e for e in before.entries if e["kind"] in ("approval", "rejection")]
    assert len(votes) == 2
    # Only checkpoints (the exports themselves) came in between.
    assert {e["kind"] for e in after.entries[len(before.entries) :]} <= {"checkpoint"}


def test_the_same_vote_sent_many_times_at_once_counts_once(
    database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(database)
    answer = held_claim(live.as_role("claims-agent"))
    approval_id = answer["approval"]["id"]
    # One person, two tokens (say a laptop and a phone), a double click on each.
    alice = [live.as_role("approver", workflow="claims", owner="alice") for _ in range(2)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda n: vote(alice[n % 2], approval_id, "approve"), range(8)))
    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
    assert {(a.json()["status"], a.json()["approvals"]) for a in answers} == {("pending", 1)}

    ledger = verified_ledger(live.url, live.settings, tmp_path)
    assert len(ledger.of("approval", answer["action_id"])) == 1


def test_malformed_votes_are_refused_before_anything_is_recorded(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(sqlite_database)
    answer = held_refund(live.as_role("payments-agent"))
    path = f"/v1/approvals/{answer['approval']['id']}/decisions"
    approver = live.as_role("approver", workflow="parking")
    for body, field in (
        ({"decision": "maybe"}, "decision"),
        ({}, "decision"),
        ({"decision": "approve", "weight": 2}, "weight"),
        ({"decision": "reject", "reason": "x" * 2001}, "reason"),
    ):
        problem = assert_problem(approver.post(path, json=body), 422)
        assert any(field in error["field"] for error in problem["errors"]), problem
    assert_problem(approver.post(path, content=b"{not json"), 422)
    assert_problem(live.client().post(path, json={"decision": "approve"}), 401)
    assert_problem(live.client("mdt_forged").post(path, json={"decision": "approve"}), 401)

    assert approver.get(path.removesuffix("/decisions")).json()["approvals"] == 0
    ledger = verified_ledger(live.url, live.settings, tmp_path)
    assert ledger.about(answer["action_id"]) == ["proposal", "decision"]
