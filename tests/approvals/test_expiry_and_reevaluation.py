"""What happens to an approval over time: it expires (the sweeper, or the vote that finds it
late) and never executes; it is re-evaluated when the bundle changed before quorum; and votes
arriving at two gateway processes on one PostgreSQL are counted once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from gateway.policy.bundle import load_bundle
from tests.approvals.conftest import Hook, Launch
from tests.approvals.harness import (
    Clock,
    action_status,
    assert_problem,
    copy_bundle,
    held_claim,
    held_refund,
    intent_count,
    pending_ids,
    verified_ledger,
    vote,
    wait_for,
)
from tests.conftest import Database
from tests.scrape import scrape, total


def approval(client: Any, approval_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/approvals/{approval_id}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


def test_the_sweeper_expires_a_hold_and_it_never_executes(
    database: Database, launch: Launch, hook: Hook, tmp_path: Path
) -> None:
    clock = Clock()
    live = launch(database, clock=clock, sweep_interval=0.05, webhooks={"parking": hook.url})
    agent = live.as_role("payments-agent")
    approver = live.as_role("approver", workflow="parking")
    answer = held_refund(agent)
    action_id, approval_id = answer["action_id"], answer["approval"]["id"]
    assert approval_id in pending_ids(approver)

    clock.advance(hours=24, seconds=1)  # the default bundle's approval_ttl_hours is 24
    wait_for(lambda: approval(approver, approval_id)["status"] == "expired", what="the sweep")

    assert approval_id not in pending_ids(approver)
    expired = approver.get("/v1/approvals", params={"status": "expired"}).json()
    assert approval_id in {a["id"] for a in expired}
    for decision, reason in (("approve", ""), ("reject", "too late anyway")):
        problem = assert_problem(vote(approver, approval_id, decision, reason), 409)
        assert "expired" in problem["detail"]
    assert action_status(agent, action_id) == "expired"
    assert intent_count(live, action_id) == 0
    assert hook.delivered() == set()

    ledger = verified_ledger(live.url, live.settings, tmp_path)
    assert ledger.about(action_id) == ["proposal", "decision", "expiry"]
    assert ledger.of("expiry", action_id)[0]["body"]["approval_id"] == approval_id
    # What an operator's alert sees: the expiry counted, nothing pending any more.
    samples = scrape(approver)
    refund = {"workflow": "parking", "case_type": "refund.issue"}
    assert total(samples, "mandate_approvals_expired_total", **refund) == 1
    assert total(samples, "mandate_approvals_pending", **refund) == 0


def test_a_vote_that_finds_the_approval_past_its_time_expires_it_instead_of_counting(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    clock = Clock()
    live = launch(sqlite_database, clock=clock, sweep_interval=3600)  # no sweep in this test
    agent = live.as_role("payments-agent")
    approver = live.as_role("approver", workflow="parking")
    answer = held_refund(agent)
    action_id, approval_id = answer["action_id"], answer["approval"]["id"]

    clock.advance(hours=25)
    problem = assert_problem(vote(approver, approval_id, "approve"), 409)
    assert "expired" in problem["detail"]
    assert approval(approver, approval_id)["status"] == "expired"
    assert_problem(vote(approver, approval_id, "approve"), 409)
    assert action_status(agent, action_id) == "expired"
    assert intent_count(live, action_id) == 0

    ledger = verified_ledger(live.url, live.settings, tmp_path)
    assert ledger.about(action_id) == ["proposal", "decision", "expiry"]


def _lower_claims_hard_limit(data: dict[str, Any]) -> None:
    data["workflows"]["claims"]["hard_limit"] = "10000"


def _lower_claims_review_threshold(data: dict[str, Any]) -> None:
    data["workflows"]["claims"]["review_over"] = "4000"


def test_a_bundle_change_before_quorum_re_evaluates_and_nothing_executes(
    database: Database, launch: Launch, hook: Hook, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    before = launch(database, data_dir=data_dir, webhooks={"claims": hook.url})
    agent_token = before.token("claims-agent")
    alice_token = before.token("approver", workflow="claims")
    bob_token = before.token("approver", workflow="claims")
    answer = held_claim(before.client(agent_token))
    action_id, approval_id = answer["action_id"], answer["approval"]["id"]
    assert vote(before.client(alice_token), approval_id, "approve").json()["approvals"] == 1
    before.stop()

    # The same data dir and database, restarted with a bundle under which this claim is denied.
    bundle = copy_bundle(tmp_path / "lower-limit", _lower_claims_hard_limit)
    after = launch(database, data_dir=data_dir, policies=bundle, webhooks={"claims": hook.url})
    bob = after.client(bob_token)
    problem = assert_problem(vote(bob, approval_id, "approve"), 409)
    for words in ("policy bundle changed", "re-evaluated: reject", "over_hard_limit"):
        assert words in problem["detail"], problem
    assert "not counted" in problem["detail"]

    seen = approval(bob, approval_id)
    assert seen["status"] == "superseded"
    assert "policy bundle changed" in (seen["closed_reason"] or "")
    assert approval_id not in pending_ids(bob)
    assert_problem(vote(after.client(alice_token), approval_id, "approve"), 409)
    assert action_status(after.client(agent_token), action_id) == "rejected"
    assert intent_count(after, action_id) == 0
    assert hook.delivered() == set()

    ledger = verified_ledger(after.url, after.settings, tmp_path)
    assert ledger.about(action_id) == ["proposal", "decision", "approval", "decision"]
    first, again = ledger.of("decision", action_id)
    assert again["body"]["verdict"] == "reject"
    assert again["body"]["reevaluated"]["supersedes"] == approval_id
    assert again["body"]["trace"]["bundle_digest"] == load_bundle(bundle).digest
    assert first["body"]["trace"]["bundle_digest"] != again["body"]["trace"]["bundle_digest"]


def test_a_re_evaluation_that_still_holds_opens_a_new_approval_that_then_executes(
    sqlite_database: Database, launch: Launch, hook: Hook, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    before = launch(sqlite_database, data_dir=data_dir, webhooks={"claims": hook.url})
    agent_token = before.token("claims-agent")
    voters = [before.token("approver", workflow="claims") for _ in range(2)]
    answer = held_claim(before.client(agent_token))
    action_id, old_id = answer["action_id"], answer["approval"]["id"]
    before.stop()

    bundle = copy_bundle(tmp_path / "lower-review", _lower_claims_review_threshold)
    after = launch(
        sqlite_database, data_dir=data_dir, policies=bundle, webhooks={"claims": hook.url}
    )
    alice, bob = (after.client(token) for token in voters)
    problem = assert_problem(vote(alice, old_id, "approve"), 409)
    assert "re-evaluated: hold" in problem["detail"]
    assert "needs approval again" in problem["detail"]
    (new,) = [a for a in alice.get("/v1/approvals").json() if a["action_id"] == action_id]
    assert new["id"] != old_id
    assert new["id"] in problem["detail"]
    assert (new["quorum"], new["approvals"]) == (2, 0)

    assert vote(alice, new["id"], "approve").json()["approvals"] == 1
    assert vote(bob, new["id"], "approve").json()["status"] == "approved"
    wait_for(lambda: hook.delivered() == {action_id}, what="the delivery")
    wait_for(lambda: action_status(alice, action_id) == "succeeded", what="the outcome")

    ledger = verified_ledger(after.url, after.settings, tmp_path)
    assert ledger.about(action_id) == [
        "proposal",
        "decision",
        "decision",
        "approval",
        "approval",
        "execution",
        "outcome",
    ]
    assert {v["body"]["approval_id"] for v in ledger.of("approval", action_id)} == {new["id"]}


def _raise_claims_review_threshold(data: dict[str, Any]) -> None:
    data["workflows"]["claims"]["review_over"] = "20000"


def _drop_claims_agents(bundle: Path) -> None:
    policy = bundle / "casbin" / "policy.csv"
    lines = policy.read_text().splitlines()
    policy.write_text("\n".join(line for line in lines if "claims-agent" not in line) + "\n")


def test_a_rejection_after_a_bundle_change_rejects_even_if_the_new_bundle_would_execute(
    sqlite_database: Database, launch: Launch, hook: Hook, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    before = launch(sqlite_database, data_dir=data_dir, webhooks={"claims": hook.url})
    agent_token = before.token("claims-agent")
    approver_token = before.token("approver", workflow="claims")
    answer = held_claim(before.client(agent_token))
    action_id, approval_id = answer["action_id"], answer["approval"]["id"]
    before.stop()

    # Under the new bundle this claim would execute without anyone; a person said no.
    bundle = copy_bundle(tmp_path / "higher-review", _raise_claims_review_threshold)
    after = launch(
        sqlite_database, data_dir=data_dir, policies=bundle, webhooks={"claims": hook.url}
    )
    approver = after.client(approver_token)
    response = vote(approver, approval_id, "reject", "the claimant is under investigation")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "rejected"
    assert action_status(after.client(agent_token), action_id) == "rejected"
    assert intent_count(after, action_id) == 0
    assert hook.delivered() == set()

    ledger = verified_ledger(after.url, after.settings, tmp_path)
    assert ledger.about(action_id) == ["proposal", "decision", "rejection"]


def test_an_executor_the_new_bundle_no_longer_admits_is_rejected_on_re_evaluation(
    sqlite_database: Database, launch: Launch, hook: Hook, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    before = launch(sqlite_database, data_dir=data_dir, webhooks={"claims": hook.url})
    agent_token = before.token("claims-agent")
    approver_token = before.token("approver", workflow="claims")
    answer = held_claim(before.client(agent_token))
    action_id, approval_id = answer["action_id"], answer["approval"]["id"]
    before.stop()

    # The policy admin takes the claims agents' mandate away while their claims wait.
    bundle = copy_bundle(tmp_path / "no-agents", lambda data: None)
    _drop_claims_agents(bundle)
    after = launch(
        sqlite_database, data_dir=data_dir, policies=bundle, webhooks={"claims": hook.url}
    )
    approver = after.client(approver_token)
    problem = assert_problem(vote(approver, approval_id, "approve"), 409)
    assert "re-evaluated: reject (not_permitted" in problem["detail"], problem
    assert approval(approver, approval_id)["status"] == "superseded"
    assert action_status(after.client(agent_token), action_id) == "rejected"
    assert intent_count(after, action_id) == 0
    assert hook.delivered() == set()

    ledger = verified_ledger(after.url, after.settings, tmp_path)
    assert ledger.about(action_id) == ["proposal", "decision", "decision"]
    again = ledger.of("decision", action_id)[1]["body"]
    assert again["verdict"] == "reject"
    assert again["trace"]["casbin"]["allowed"] is False


@pytest.mark.postgres
def test_votes_on_two_gateway_processes_approve_exactly_once(
    pg_database: Database, launch: Launch, hook: Hook, tmp_path: Path
) -> None:
    # Two gateways, one PostgreSQL schema, one signing key (the same data dir).
    data_dir = tmp_path / "data"
    first = launch(pg_database, data_dir=data_dir, webhooks={"claims": hook.url})
    second = launch(pg_database, data_dir=data_dir, webhooks={"claims": hook.url})
    agent = first.client(first.token("claims-agent"))
    tokens = [first.token("approver", workflow="claims") for _ in range(3)]
    alice = first.client(tokens[0])
    bob_on_second, carol_on_first = second.client(tokens[1]), first.client(tokens[2])
    holds = [held_claim(agent, amount=f"{12000 + n}") for n in range(6)]
    ids = {h["action_id"] for h in holds}

    # One: a vote on the first process, the quorum vote on the second.
    one = holds[0]["approval"]["id"]
    assert vote(alice, one, "approve").json()["approvals"] == 1
    assert vote(bob_on_second, one, "approve").json()["status"] == "approved"
    # The rest: after a first vote, two quorum votes at once, one on each process.
    with ThreadPoolExecutor(max_workers=2) as pool:
        for held in holds[1:]:
            approval_id = held["approval"]["id"]
            assert vote(alice, approval_id, "approve").json()["approvals"] == 1
            racing = [
                pool.submit(vote, client, approval_id, "approve")
                for client in (bob_on_second, carol_on_first)
            ]
            codes = sorted(r.result().status_code for r in racing)
            assert codes == [200, 409], [r.result().text for r in racing]
            assert approval(alice, approval_id)["status"] == "approved"

    wait_for(lambda: all(action_status(agent, a) == "succeeded" for a in ids), what="the outcomes")
    assert hook.delivered() == ids
    assert all(hook.receiver.calls[a] == 1 for a in ids), hook.receiver.calls

    ledger = verified_ledger(second.url, second.settings, tmp_path)
    for action_id in ids:
        assert ledger.about(action_id) == [
            "proposal",
            "decision",
            "approval",
            "approval",
            "execution",
            "outcome",
        ]
