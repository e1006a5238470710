"""Post-hoc audit at level 2: the sample is a deterministic function of the action id and the
recorded rate, an auditor draws it again from an export alone and gets exactly the gateway's
queue; findings are ledger entries, by auditors only, and feed the figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.autonomy.sampling import sampled
from tests.approvals.conftest import Launch
from tests.approvals.harness import assert_problem, proposal, propose, verified_ledger
from tests.autonomy.support import bundle, drawn, figures
from tests.conftest import Database

RATE = 5000  # half of what runs at level 2


def _half_audited(data: dict[str, Any]) -> None:
    data.setdefault("autonomy", {})["audit_rate_bp"] = {"2": RATE, "3": 0, "4": 0}


def test_the_sample_recomputed_from_an_export_alone_equals_the_gateways(
    database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(database, policies=bundle(tmp_path / "bundle", data=_half_audited))
    agent = live.as_role("booking-agent")
    executed = [
        propose(agent, proposal("parking", "booking.cancel", confidence=0.95), "execute")
        for _ in range(40)
    ]  # booking.cancel starts at level 2 (supervised)
    at_level_3 = propose(agent, proposal("parking", "booking.create", confidence=0.95), "execute")
    held = propose(agent, proposal("parking", "booking.cancel", confidence=0.5), "hold")

    auditor = live.as_role("auditor")
    queue = auditor.get("/v1/audits", params={"status": "pending"})
    assert queue.status_code == 200, queue.text
    gateway_sample = {item["action_id"] for item in queue.json()}
    assert all(item["rate_bp"] == RATE and item["level"] == 2 for item in queue.json())
    assert 5 < len(gateway_sample) < 35  # a sample, not all or nothing

    # The auditor's side: the export, verified offline, and the documented rule.
    ledger = verified_ledger(live.url, live.settings, tmp_path)
    recomputed, recorded = set(), {}
    for entry in ledger.of("decision"):
        body = entry["body"]
        if body["verdict"] != "execute":
            assert "audit" not in body  # only what runs alone is audited after the fact
            continue
        audit = body["audit"]
        recorded[entry["subject"]] = audit
        assert drawn(entry["subject"], audit["rate_bp"]) == audit["sampled"]
        if drawn(entry["subject"], audit["rate_bp"]):
            recomputed.add(entry["subject"])
    assert recomputed == gateway_sample
    assert set(recorded) == {a["action_id"] for a in [*executed, at_level_3]}
    assert recorded[at_level_3["action_id"]] == {"rate_bp": 0, "sampled": False}
    assert held["action_id"] not in recorded
    assert {recorded[a["action_id"]]["rate_bp"] for a in executed} == {RATE}

    # Deterministic: the same id draws the same way at any time, in any process.
    for action_id in recorded:
        assert sampled(action_id, RATE) == drawn(action_id, RATE)
        assert sampled(action_id, 10_000)
        assert not sampled(action_id, 0)


def test_findings_are_ledgered_by_auditors_only_and_feed_the_figures(
    database: Database, launch: Launch, tmp_path: Path
) -> None:
    everything = {"2": 10_000, "3": 0, "4": 0}
    policies = bundle(
        tmp_path / "bundle",
        data=lambda d: d.setdefault("autonomy", {}).update(audit_rate_bp=everything),
    )
    live = launch(database, policies=policies)
    agent = live.client(live.token("booking-agent", owner="ops-team"))
    answers = [
        propose(agent, proposal("parking", "booking.cancel", confidence=0.95), "execute")
        for _ in range(3)
    ]
    auditor = live.as_role("auditor")
    queue = auditor.get("/v1/audits").json()
    assert [item["action_id"] for item in queue] == [a["action_id"] for a in answers]
    first, second, third = (item["id"] for item in queue)

    # Who may: auditors of the workflow, never the proposer's owner, nobody else.
    finding = {"finding": "correct", "note": ""}
    assert_problem(live.as_role("approver").post(f"/v1/audits/{first}", json=finding), 403)
    assert_problem(live.as_role("approver").get("/v1/audits"), 403)
    elsewhere = live.as_role("auditor", workflow="claims")
    assert_problem(elsewhere.post(f"/v1/audits/{first}", json=finding), 403)
    assert elsewhere.get("/v1/audits").json() == []
    colleague = live.as_role("auditor", owner="ops-team")
    assert (
        "separation of duties"
        in assert_problem(colleague.post(f"/v1/audits/{first}", json=finding), 403)["detail"]
    )
    assert_problem(auditor.post("/v1/audits/aud_nope", json=finding), 404)
    refused = assert_problem(
        auditor.post(f"/v1/audits/{second}", json={"finding": "incorrect", "note": " "}), 422
    )
    assert refused["errors"][0]["field"] == "note"
    assert_problem(auditor.post(f"/v1/audits/{second}", json={"finding": "maybe"}), 422)

    done = auditor.post(f"/v1/audits/{first}", json=finding)
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "correct"
    assert auditor.post(f"/v1/audits/{first}", json=finding).status_code == 200  # counts once
    assert_problem(
        auditor.post(f"/v1/audits/{first}", json={"finding": "incorrect", "note": "no"}), 409
    )
    wrong = {"finding": "incorrect", "note": "cancelled the wrong booking"}
    assert auditor.post(f"/v1/audits/{second}", json=wrong).status_code == 200

    assert [item["id"] for item in auditor.get("/v1/audits").json()] == [third]
    settled = auditor.get("/v1/audits", params={"status": "incorrect"}).json()
    assert [(s["id"], s["note"]) for s in settled] == [(second, "cancelled the wrong booking")]

    view = figures(auditor, "parking", "booking.cancel")["figures"]
    assert (view["audits"], view["audit_findings"], view["reviewed"], view["agreements"]) == (
        2,
        1,
        2,
        1,
    )
    assert (view["errors"], view["checked"], view["agreement_bp"]) == (1, 2, 5000)

    ledger = verified_ledger(live.url, live.settings, tmp_path)
    findings = ledger.of("audit")
    assert [(e["subject"], e["body"]["finding"]) for e in findings] == [
        (answers[0]["action_id"], "correct"),
        (answers[1]["action_id"], "incorrect"),
    ]
    assert findings[1]["body"]["note"] == "cancelled the wrong booking"
    assert findings[1]["body"]["rate_bp"] == 10_000
    assert ledger.about(answers[1]["action_id"])[:2] == ["proposal", "decision"]
    assert "audit" in ledger.about(answers[1]["action_id"])
