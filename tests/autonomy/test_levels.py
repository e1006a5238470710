"""Levels change only through ledgered events, over real HTTP on SQLite and PostgreSQL: the
gateway proposes a promotion when the figures meet the entry criteria and applies it only at the
governors' quorum; it demotes by itself, at once, when the error rate crosses the threshold, and
says so; governors (only they) set a level by hand with a reason; the level in force is read by
every gateway process; every change verifies in the exported ledger."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.approvals.conftest import Launch
from tests.approvals.harness import (
    action_status,
    assert_problem,
    http_client,
    proposal,
    propose,
    verified_ledger,
    vote,
    wait_for,
)
from tests.autonomy.support import (
    NotifyHook,
    bundle,
    case_terms,
    figures,
    refund,
    report,
    set_level,
)
from tests.conftest import Database

EASY = {
    "min_reviewed": 3,
    "min_agreement_bp": 9000,
    "max_failure_bp": 10_000,
    "max_error_bp": 10_000,
}


def promotions(client: Any, status: str = "pending") -> list[dict[str, Any]]:
    response = client.get("/v1/autonomy/promotions", params={"status": status})
    assert response.status_code == 200, response.text
    listed = response.json()
    assert isinstance(listed, list)
    return listed


def decide(client: Any, promotion_id: str, decision: str, reason: str = "") -> Any:
    return client.post(
        f"/v1/autonomy/promotions/{promotion_id}/decisions",
        json={"decision": decision, "reason": reason},
    )


def approved_refund(agent: Any, approver: Any, amount: str = "20") -> dict[str, Any]:
    answer = refund(agent, amount=amount)
    assert vote(approver, answer["approval"]["id"], "approve").status_code == 200
    return answer


def test_a_promotion_is_proposed_at_the_criteria_and_applied_only_at_quorum(
    database: Database, launch: Launch, slack: NotifyHook, tmp_path: Path
) -> None:
    terms = case_terms("parking", "refund.issue", promotion={"quorum": 2, "criteria": {"2": EASY}})
    live = launch(database, policies=bundle(tmp_path / "bundle", data=terms), notify_url=slack.url)
    agent = live.as_role("payments-agent")
    approver = live.as_role("approver", workflow="parking")
    alice = live.as_role("governor")
    bob = live.as_role("governor", workflow="parking")
    wf, ct = "parking", "refund.issue"

    for amount in ("20", "21"):
        approved_refund(agent, approver, amount)
    assert promotions(alice) == []
    assert figures(alice, wf, ct)["promotion"]["unmet"] == ["reviewed 2 < 3"]
    approved_refund(agent, approver, "22")  # the third review meets the criteria

    (proposed,) = promotions(alice)
    assert (proposed["workflow"], proposed["case_type"]) == (wf, ct)
    assert (proposed["from_level"], proposed["to_level"], proposed["quorum"]) == (1, 2, 2)
    assert (proposed["figures"]["reviewed"], proposed["figures"]["agreement_bp"]) == (3, 10_000)
    view = figures(alice, wf, ct)
    assert view["pending_promotion"]["id"] == proposed["id"]
    assert view["promotion"]["met"] is True
    wait_for(lambda: any("Promotion proposed" in t for t in slack.texts()), what="the notice")

    # Proposed is not applied: level 1 still holds everything.
    refund(agent, amount="23")

    # Only governors vote; each once; a rejection needs a reason.
    pid = proposed["id"]
    assert_problem(decide(approver, pid, "approve"), 403)
    assert_problem(decide(live.as_role("auditor"), pid, "approve"), 403)
    assert_problem(decide(live.as_role("governor", workflow="claims"), pid, "approve"), 403)
    assert_problem(decide(alice, "prm_nope", "approve"), 404)
    first = decide(alice, pid, "approve", "figures look right")
    assert first.status_code == 200, first.text
    assert (first.json()["status"], first.json()["approvals"]) == ("pending", 1)
    assert decide(alice, pid, "approve").json()["approvals"] == 1  # counts once
    assert_problem(decide(alice, pid, "reject", "changed my mind"), 409)
    assert_problem(decide(bob, pid, "reject", " "), 422)
    assert figures(alice, wf, ct)["level"] == 1
    refund(agent, amount="24")

    second = decide(bob, pid, "approve", "agreed")
    assert second.status_code == 200, second.text
    assert (second.json()["status"], second.json()["approvals"]) == ("approved", 2)
    assert_problem(decide(live.as_role("governor"), pid, "approve"), 409)

    view = figures(alice, wf, ct)
    assert view["level"] == 2
    assert view["source"].startswith("promotion at ledger #")
    assert view["figures"]["decisions"] == 0  # a new window for the new level
    assert view["pending_promotion"] is None
    executed = propose(agent, proposal(wf, ct, amount="25"), "execute")
    assert executed["trace"]["autonomy"]["level"] == 2

    ledger = verified_ledger(live.url, live.settings, tmp_path)
    changes = ledger.of("autonomy")
    assert [e["body"]["event"] for e in changes] == ["promotion_proposed", "promotion"]
    opened, applied = changes
    votes = ledger.of("approval", pid)
    assert [v["body"]["voter"]["role"] for v in votes] == ["governor", "governor"]
    assert applied["seq"] == votes[1]["seq"] + 1  # the quorum vote and the change, together
    assert applied["subject"] == f"{wf}/{ct}"
    assert (applied["body"]["from_level"], applied["body"]["to_level"]) == (1, 2)
    assert applied["body"]["figures"] == opened["body"]["figures"] == proposed["figures"]
    assert applied["body"]["promotion_id"] == pid
    assert opened["body"]["criteria"]["min_reviewed"] == 3


def test_a_rejected_promotion_waits_for_new_evidence(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    criteria = EASY | {"min_reviewed": 2}
    terms = case_terms("parking", "refund.issue", promotion={"criteria": {"2": criteria}})
    live = launch(sqlite_database, policies=bundle(tmp_path / "bundle", data=terms))
    agent = live.as_role("payments-agent")
    approver = live.as_role("approver", workflow="parking")
    governor = live.as_role("governor")
    approved_refund(agent, approver, "20")
    approved_refund(agent, approver, "21")
    (first,) = promotions(governor)
    rejected = decide(governor, first["id"], "reject", "not in the busy season")
    assert rejected.json()["status"] == "rejected"

    approved_refund(agent, approver, "22")
    assert promotions(governor) == []  # one review since the rejected proposal: not enough
    approved_refund(agent, approver, "23")
    (second,) = promotions(governor)
    assert second["id"] != first["id"]
    assert second["figures"]["reviewed"] == 2
    assert [p["id"] for p in promotions(governor, "rejected")] == [first["id"]]


def test_demotion_is_automatic_immediate_ledgered_and_announced(
    database: Database, launch: Launch, slack: NotifyHook, tmp_path: Path
) -> None:
    terms = case_terms(
        "parking", "booking.cancel", demotion={"max_error_bp": 3000, "min_checked": 3}
    )
    live = launch(database, policies=bundle(tmp_path / "bundle", data=terms), notify_url=slack.url)
    agent = live.as_role("booking-agent")
    governor = live.as_role("governor")
    wf, ct = "parking", "booking.cancel"
    answers = [propose(agent, proposal(wf, ct, confidence=0.95), "execute") for _ in range(3)]

    def released() -> bool:
        return all(action_status(agent, a["action_id"]) == "approved" for a in answers)

    wait_for(released, what="the callback intents")

    report(agent, answers[0]["action_id"], "succeeded")
    report(agent, answers[1]["action_id"], "failed")
    view = figures(governor, wf, ct)
    assert (view["level"], view["figures"]["errors"], view["figures"]["checked"]) == (2, 1, 2)
    assert view["demotion"] == {"max_error_bp": 3000, "min_checked": 3, "due": False}

    report(agent, answers[2]["action_id"], "failed")  # 2 errors in 3: 66.66 % > 30 %
    view = figures(governor, wf, ct)
    assert view["level"] == 1
    assert view["source"].startswith("demotion at ledger #")
    (change,) = view["history"]
    assert (change["event"], change["from_level"], change["to_level"], change["actor"]) == (
        "demotion",
        2,
        1,
        "mandate",
    )
    assert (change["figures"]["errors"], change["figures"]["checked"]) == (2, 3)
    assert change["figures"]["error_bp"] == 6666
    held = propose(agent, proposal(wf, ct, confidence=0.95), "hold")
    assert held["reasons"][-1]["code"] == "advisory_level"

    wait_for(lambda: any("Autonomy lowered" in t for t in slack.texts()), what="the notice")
    (notice,) = [t for t in slack.texts() if "Autonomy lowered" in t]
    assert "parking booking.cancel from level 2 (supervised) to 1 (advisory)" in notice
    assert "66.66 %" in notice
    assert "/ui/autonomy" in notice

    # Reversible: a governor restores it, and it runs alone again.
    assert set_level(governor, wf, ct, 2, "the failing integration is fixed").status_code == 200
    propose(agent, proposal(wf, ct, confidence=0.95), "execute")

    ledger = verified_ledger(live.url, live.settings, tmp_path)
    demoted, restored = ledger.of("autonomy")
    assert demoted["actor"] == "mandate"
    assert demoted["subject"] == f"{wf}/{ct}"
    assert demoted["body"]["event"] == "demotion"
    assert demoted["body"]["threshold"] == {"max_error_bp": 3000, "min_checked": 3}
    assert demoted["body"]["figures"] == change["figures"]
    last_outcome = ledger.of("outcome", answers[2]["action_id"])[-1]
    assert demoted["seq"] > last_outcome["seq"]
    assert restored["body"]["event"] == "set"
    assert restored["body"]["reason"] == "the failing integration is fixed"
    assert (restored["body"]["from_level"], restored["body"]["to_level"]) == (1, 2)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"level": 0, "reason": "r"}, "level"),
        ({"level": 5, "reason": "r"}, "level"),
        ({"level": "2", "reason": "r"}, "level"),
        ({"level": 2.5, "reason": "r"}, "level"),
        ({"level": 2}, "reason"),
        ({"level": 2, "reason": ""}, "reason"),
        ({"level": 2, "reason": "   "}, "reason"),
        ({"level": 2, "reason": "r", "until": "never"}, "until"),
    ],
)
def test_a_level_outside_1_to_4_or_without_a_reason_is_refused(
    sqlite_database: Database, launch: Launch, body: dict[str, Any], field: str
) -> None:
    live = launch(sqlite_database)
    governor = live.as_role("governor")
    refused = assert_problem(governor.post("/v1/autonomy/parking/refund.issue", json=body), 422)
    assert [e["field"] for e in refused["errors"]] == [field]
    assert figures(governor, "parking", "refund.issue")["level"] == 1


def test_only_governors_set_levels_by_hand(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(sqlite_database)
    wf, ct = "parking", "refund.issue"
    for client in (
        live.as_role("approver"),
        live.as_role("auditor"),
        live.as_role("policy-admin"),
        live.as_role("payments-agent"),
        live.as_role("governor", workflow="claims"),
    ):
        assert_problem(set_level(client, wf, ct, 2, "why not"), 403)
    assert_problem(set_level(live.client(), wf, ct, 2, "anonymous"), 401)
    governor = live.as_role("governor")
    assert_problem(set_level(governor, "nowhere", ct, 2, "no such workflow"), 404)
    assert_problem(set_level(governor, wf, ct, 1, "it is 1 already"), 409)
    agent = live.as_role("payments-agent")
    refund(agent)

    changed = set_level(governor, wf, ct, 3, "proven by hand")
    assert changed.status_code == 200, changed.text
    assert changed.json()["level"] == 3
    executed = propose(agent, proposal(wf, ct, amount="20"), "execute")
    assert executed["trace"]["autonomy"]["level"] == 3
    assert set_level(governor, wf, ct, 1, "back to advisory").status_code == 200
    refund(agent)

    ledger = verified_ledger(live.url, live.settings, tmp_path)
    up, down = ledger.of("autonomy")
    assert up["actor"] == down["actor"]
    assert up["body"]["actor"]["role"] == "governor"
    assert (up["body"]["event"], up["body"]["from_level"], up["body"]["to_level"]) == ("set", 1, 3)
    assert up["body"]["reason"] == "proven by hand"
    assert up["body"]["figures"]["decisions"] == 1
    assert up["body"]["figures"]["holds"] == 1
    assert (down["body"]["from_level"], down["body"]["to_level"]) == (3, 1)


def test_a_level_set_on_one_gateway_is_in_force_on_another(
    pg_database: Database, launch: Launch, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"  # one signing key, as a deployment shares it
    first = launch(pg_database, data_dir=shared)
    second = launch(pg_database, data_dir=shared)
    agent_token = first.token("payments-agent")
    with http_client(second.url, agent_token) as agent:
        refund(agent)  # level 1 on the second gateway, read into its cache
        governor = first.as_role("governor")
        assert set_level(governor, "parking", "refund.issue", 2, "shared").status_code == 200
        time.sleep(1.2)  # the level cache lives a second
        executed = propose(agent, proposal("parking", "refund.issue", amount="20"), "execute")
    assert executed["trace"]["autonomy"]["level"] == 2
    assert executed["trace"]["autonomy"]["source"].startswith("set at ledger #")
