"""Measured figures over real HTTP, on SQLite and PostgreSQL: they move with every event that
judges an action (decision, vote, expiry, outcome, correction), they reach Rego as
``input.stats`` and are recorded in the decision entry, and their window slides (decisions and
days) and restarts when the level changes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import rfc8785

from gateway.decision.steps import rego_input
from gateway.identity import Identity
from tests.approvals.conftest import Launch
from tests.approvals.harness import (
    Clock,
    action_status,
    assert_problem,
    proposal,
    propose,
    verified_ledger,
    vote,
    wait_for,
)
from tests.autonomy.support import bundle, case_terms, figures, refund, report, set_level
from tests.conftest import Database

COUNTS = (
    "decisions",
    "holds",
    "approvals",
    "expiries",
    "reviewed",
    "agreements",
    "overrides",
    "executions",
    "failures",
    "audits",
    "audit_findings",
    "corrections",
    "checked",
    "errors",
    "warnings",
)


def counts(view: dict[str, object], **expected: int) -> None:
    """The figures are the expected counts, and zero where none is expected."""
    got = view["figures"]
    assert isinstance(got, dict)
    assert {name: got[name] for name in COUNTS} == {name: expected.get(name, 0) for name in COUNTS}


def test_figures_move_with_every_event_and_reach_the_next_decision(
    database: Database, launch: Launch, tmp_path: Path
) -> None:
    clock = Clock()
    live = launch(database, clock=clock, sweep_interval=0.1)
    agent = live.as_role("payments-agent")
    approver = live.as_role("approver", workflow="parking")
    reader = live.as_role("auditor")
    wf, ct = "parking", "refund.issue"
    counts(figures(reader, wf, ct))

    # A decision: held at level 1, the gateway recommending execute; the executor's first
    # refund, which the shipped bundle warns about (first_of_its_kind).
    first = refund(agent)
    counts(figures(reader, wf, ct), decisions=1, holds=1, warnings=1)

    # A person approves: a review that agrees; then the executor reports success.
    assert vote(approver, first["approval"]["id"], "approve").json()["status"] == "approved"
    counts(
        figures(reader, wf, ct),
        decisions=1,
        holds=1,
        approvals=1,
        reviewed=1,
        agreements=1,
        checked=1,
        warnings=1,
    )
    wait_for(lambda: action_status(agent, first["action_id"]) == "approved", what="the callback")
    report(agent, first["action_id"], "succeeded")
    view = figures(reader, wf, ct)
    counts(
        view,
        decisions=1,
        holds=1,
        approvals=1,
        reviewed=1,
        agreements=1,
        executions=1,
        checked=1,
        warnings=1,
    )
    assert (view["figures"]["agreement_bp"], view["figures"]["error_bp"]) == (10_000, 0)

    # A person rejects what the gateway recommended: an override.
    second = refund(agent, amount="30")
    assert vote(approver, second["approval"]["id"], "reject", "wrong customer").status_code == 200

    # Nobody decides in time: an expiry.
    third = refund(agent, amount="40")
    clock.advance(hours=25)
    wait_for(lambda: action_status(agent, third["action_id"]) == "expired", what="the expiry")

    # Approved, carried out, and it failed.
    fourth = refund(agent, amount="50")
    vote(approver, fourth["approval"]["id"], "approve")
    wait_for(lambda: action_status(agent, fourth["action_id"]) == "approved", what="the callback")
    report(agent, fourth["action_id"], "failed")

    # The first one had to be corrected afterwards (by its executor).
    corrected = agent.post(
        f"/v1/actions/{first['action_id']}/corrections",
        json={"reason": "refunded to the wrong card", "details": {"ticket": "T-1"}},
    )
    assert corrected.status_code == 200, corrected.text
    assert corrected.json()["timeline"][-1]["body"]["status"] == "corrected"
    again = agent.post(f"/v1/actions/{first['action_id']}/corrections", json={"reason": "twice"})
    assert_problem(again, 409)
    assert_problem(
        agent.post(f"/v1/actions/{second['action_id']}/corrections", json={"reason": "x"}), 409
    )  # never carried out
    stranger = live.as_role("approver", workflow="parking")
    assert_problem(
        stranger.post(f"/v1/actions/{fourth['action_id']}/corrections", json={"reason": "x"}), 403
    )

    view = figures(reader, wf, ct)
    counts(
        view,
        decisions=4,
        holds=4,
        approvals=2,
        expiries=1,
        reviewed=3,
        agreements=2,
        overrides=1,
        executions=2,
        failures=1,
        corrections=1,
        checked=3,
        errors=3,
        warnings=1,
    )
    assert view["figures"]["agreement_bp"] == 6666  # 2 of 3, rounded down
    assert view["figures"]["failure_bp"] == 5000
    assert view["figures"]["error_bp"] == 10_000
    listed = reader.get("/v1/autonomy", params={"workflow": "parking"}).json()
    (item,) = [i for i in listed if i["case_type"] == ct]
    assert item["figures"] == view["figures"]
    assert item["level"] == 1
    assert item["source"] == "bundle initial level"

    # The next decision sees exactly these figures, and its entry records them.
    fifth = refund(agent, amount="60")
    ledger = verified_ledger(live.url, live.settings, tmp_path)
    (decision,) = ledger.of("decision", fifth["action_id"])
    assert decision["body"]["stats"] == view["figures"]
    assert [e["body"]["status"] for e in ledger.of("outcome", first["action_id"])] == [
        "succeeded",
        "corrected",
    ]


STATS_RULE = """
hold contains {
	"code": "unproven",
	"message": sprintf("only %v decisions of this case type so far", [input.stats.decisions]),
} if {
	input.proposal.action_type == "booking.create"
	input.stats.decisions < 2
}
"""


def test_input_stats_reach_rego_and_replay_from_the_entry(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    policies = bundle(tmp_path / "bundle", rego={"parking.rego": STATS_RULE})
    live = launch(sqlite_database, policies=policies)
    agent = live.as_role("booking-agent")

    def book() -> dict[str, Any]:
        response = agent.post("/v1/actions", json=proposal("parking", "booking.create"))
        assert response.status_code == 200, response.text
        answer = response.json()
        assert isinstance(answer, dict)
        return answer

    verdicts = [book() for _ in range(3)]
    assert [v["verdict"] for v in verdicts] == ["hold", "hold", "execute"]
    assert verdicts[0]["reasons"][0]["message"] == "only 0 decisions of this case type so far"
    assert verdicts[1]["reasons"][0]["message"] == "only 1 decisions of this case type so far"

    # Every decision is reproducible from its entry: the recorded stats rebuild the digest.
    ledger = verified_ledger(live.url, live.settings, tmp_path)
    for answer, expected in zip(verdicts, (0, 1, 2), strict=True):
        (entry,) = ledger.of("decision", str(answer["action_id"]))
        (proposed,) = ledger.of("proposal", str(answer["action_id"]))
        body, trace = entry["body"], entry["body"]["trace"]
        assert body["stats"]["decisions"] == expected
        executor = proposed["body"]["executor"]
        recorded = proposed["body"]["proposal"]
        input_ = rego_input(
            recorded,
            Identity(**executor),
            trace["autonomy"]["case_type"],
            trace["autonomy"]["level"],
            body["stats"],
            trace["decided_at"],
            body["history"],
        )
        digest = hashlib.sha256(rfc8785.dumps({**input_, "proposal": recorded})).hexdigest()
        assert digest == trace["rego"]["input_digest"]


def test_the_window_slides_by_decisions_and_days_and_restarts_at_a_level_change(
    database: Database, launch: Launch, tmp_path: Path
) -> None:
    policies = bundle(
        tmp_path / "bundle",
        data=case_terms("parking", "booking.create", window={"decisions": 3, "days": 2}),
    )
    clock = Clock()
    live = launch(database, policies=policies, clock=clock)
    agent = live.as_role("booking-agent")
    reader = live.as_role("governor")
    wf, ct = "parking", "booking.create"
    for _ in range(5):
        propose(agent, proposal(wf, ct, confidence=0.95), "execute")
    view = figures(reader, wf, ct)
    assert view["window"] == {"decisions": 3, "days": 2, "since_seq": None, "since": None}
    assert view["figures"]["decisions"] == 3  # the latest 3 of 5

    clock.advance(days=3)  # every decision is older than the window's 2 days
    assert figures(reader, wf, ct)["figures"]["decisions"] == 0
    propose(agent, proposal(wf, ct, confidence=0.95), "execute")
    assert figures(reader, wf, ct)["figures"]["decisions"] == 1

    # A change of level starts a new window, recorded with the figures that stood.
    changed = set_level(reader, wf, ct, 2, "new booking system: watch it again")
    assert changed.status_code == 200, changed.text
    view = changed.json()
    assert view["level"] == 2
    assert view["source"].startswith("set at ledger #")
    assert view["figures"]["decisions"] == 0
    assert view["window"]["since_seq"] is not None
    (change,) = view["history"]
    assert (change["event"], change["from_level"], change["to_level"]) == ("set", 3, 2)
    assert change["figures"]["decisions"] == 1
    propose(agent, proposal(wf, ct, confidence=0.95), "execute")
    assert figures(reader, wf, ct)["figures"]["decisions"] == 1
