"""History signals (``input.history``) and warnings, through a gateway on loopback: what a decision
saw is recorded with it and replays exactly; the shipped bundle holds a novel pattern at level 3
and warns on an executor's first action type; warnings never change a verdict, are counted in the
figures, and a rule moved from warn to hold to deny is measured by replay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.approvals.conftest import Launch
from tests.approvals.harness import Live, proposal, propose, verified_ledger
from tests.conftest import Database
from tests.policies.support import (
    bundle_copy,
    clean_env,
    edit_data,
    mandate,
    replace_in,
    texts,
)
from tests.policies.test_replay import replay


def _history_of(live: Live, tmp_path: Path, action_id: str) -> dict[str, Any]:
    (entry,) = verified_ledger(live.url, live.settings, tmp_path).of("decision", action_id)
    history = entry["body"]["history"]
    assert isinstance(history, dict)
    return history


def _claim(amount: str, resource: str) -> dict[str, Any]:
    return proposal("claims", "claim.approve", amount=amount, confidence=0.97, resource=resource)


def test_a_novel_claim_is_held_once_the_case_type_has_a_usual_amount(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    # Three executed claims make a history (the shipped bundle waits for 20).
    bundle = bundle_copy(
        tmp_path / "three",
        edit_data(lambda d: d["workflows"]["claims"].update(novelty_min_history=3)),
    )
    live = launch(sqlite_database, policies=bundle)
    agent = live.as_role("claims-agent")
    first = propose(agent, _claim("100", "claim/A"), "execute")
    history = _history_of(live, tmp_path, first["action_id"])
    assert history == {
        "first_action_type": True,
        "first_resource": True,
        "proposals_last_hour": 0,
        "amounts": {"count": 0, "p95": None, "max": None},
    }
    assert [w["code"] for w in first["warnings"]] == []  # claims have no warn rule
    propose(agent, _claim("120", "claim/B"), "execute")
    # 900 on a new claim: not usual yet (two amounts), so it runs.
    propose(agent, _claim("900", "claim/C"), "execute")

    # Now 100, 120 and 900 went ahead: 900 is the p95; 950 on a new claim is novel.
    novel = propose(agent, _claim("950", "claim/D"), "hold")
    assert [r["code"] for r in novel["reasons"]] == ["novel_pattern"]
    assert "above the usual 900" in novel["reasons"][0]["message"]
    history = _history_of(live, tmp_path, novel["action_id"])
    assert history["first_resource"] is True
    assert history["first_action_type"] is False
    assert history["proposals_last_hour"] == 3
    assert history["amounts"] == {"count": 3, "p95": "900", "max": "900"}

    # The same amount on a claim seen before is not novel.
    again = propose(agent, _claim("950", "claim/A"), "execute")
    assert _history_of(live, tmp_path, again["action_id"])["first_resource"] is False

    # Replayed from the ledger, every decision gets the history it recorded: nothing changes.
    _, report = replay(live.as_role("policy-admin"))
    assert (report["changed"], report["reasons_changed"], report["input_mismatches"]) == (0, 0, 0)


def _bookings(live: Live, executors: int) -> list[dict[str, Any]]:
    """Each of ``executors`` new booking agents books twice: the first with a warning."""
    answers = []
    for n in range(executors):
        agent = live.client(live.token("booking-agent"))
        for m in range(2):
            body = proposal("parking", "booking.create", confidence=0.95, resource=f"lot/{n}-{m}")
            answers.append(propose(agent, body, "execute"))
    return answers


def test_a_first_of_its_kind_warns_without_changing_the_verdict_and_is_counted(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(sqlite_database)
    answers = _bookings(live, 2)
    warned = [[w["code"] for w in a["warnings"]] for a in answers]
    assert warned == [["first_of_its_kind"], [], ["first_of_its_kind"], []]
    assert all(a["reasons"] == [] for a in answers)  # a warning is not a reason
    assert "proposes booking.create for the first time" in answers[0]["warnings"][0]["message"]
    assert answers[0]["warnings"][0]["source"] == "rego"
    # The decision entry records them, beside the reasons and in the Rego output.
    (entry,) = verified_ledger(live.url, live.settings, tmp_path).of(
        "decision", answers[0]["action_id"]
    )
    assert [w["code"] for w in entry["body"]["warnings"]] == ["first_of_its_kind"]
    assert entry["body"]["trace"]["rego"]["output"]["warn"][0]["code"] == "first_of_its_kind"
    view = live.as_role("auditor").get("/v1/autonomy/parking/booking.create").json()
    assert view["figures"]["warnings"] == 2
    assert view["figures"]["decisions"] == 4


def test_a_warning_moved_to_hold_then_to_deny_is_measured_by_replay(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(sqlite_database)
    _bookings(live, 3)
    admin = live.as_role("policy-admin")
    rule = 'warn contains {\n\t"code": "first_of_its_kind",'

    held = bundle_copy(
        tmp_path / "held", replace_in("rego/parking.rego", rule, rule.replace("warn", "hold"))
    )
    _, report = replay(admin, files=texts(held))
    assert report["transitions"] == [{"from": "execute", "to": "hold", "count": 3}]
    assert report["rules"] == [{"code": "first_of_its_kind", "added": 3, "removed": 0}]
    assert report["warnings_changed"] == 3
    assert report["warning_rules"] == [{"code": "first_of_its_kind", "added": 0, "removed": 3}]

    denied = bundle_copy(
        tmp_path / "denied", replace_in("rego/parking.rego", rule, rule.replace("warn", "deny"))
    )
    _, report = replay(admin, files=texts(denied))
    assert report["transitions"] == [{"from": "execute", "to": "reject", "count": 3}]
    assert (report["warnings_changed"], report["messages_changed"]) == (3, 0)

    # The CLI says it in words.
    done = mandate(
        "policy", "replay", "--candidate", held, "--url", live.url,
        cwd=tmp_path, env=clean_env(MANDATE_TOKEN=live.token("policy-admin")),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "execute → hold: 3" in done.stdout
    assert "warnings that would change: 3, -first_of_its_kind 3" in done.stdout
