"""A token bound to a workflow sees and does nothing of another one, whatever its role: its
actions, approvals, audits, case types and ledger entries are refused (403, naming the binding)
or left out of lists; what spans every workflow (the export, policy bundles) is refused.

The world: parking and claims actions proposed by tokens of one owner, a parking refund held,
a parking cancellation executed and drawn for audit, a claim held, a level set by hand in each
workflow; then tokens bound to claims, one per role, look at parking.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.approvals.conftest import Launch
from tests.approvals.harness import (
    Live,
    assert_problem,
    held_claim,
    held_refund,
    proposal,
    propose,
)
from tests.autonomy.support import bundle, set_level
from tests.conftest import Database

OWNER = "ops"  # every proposer's owner: a binding must hold even against one's own owner
SEE = ("claims-agent", "approver", "governor", "auditor")  # who may see actions, approvals
READ = ("auditor", "governor", "policy-admin")  # who may read entries, exports, bundles
EVERY = (*SEE, "policy-admin")
BOUND = "bound to workflow 'claims'"


@dataclass
class World:
    live: Live
    refund: dict[str, Any]  # parking: held for approval
    cancelled: dict[str, Any]  # parking: executed at level 2, drawn for audit, no outcome yet
    canceller: httpx.Client
    audit_id: str
    claim: dict[str, Any]  # claims: held for approval
    bound: dict[str, httpx.Client]  # a token bound to claims, per role

    @property
    def parking_subjects(self) -> set[str]:
        return {self.refund["action_id"], self.cancelled["action_id"], "parking/booking.create"}

    @property
    def claims_subjects(self) -> set[str]:
        return {self.claim["action_id"], "claims/claim.pay"}


def _world(database: Database, launch: Launch, tmp_path: Path) -> World:
    every_run = {"2": 10_000, "3": 0, "4": 0}  # claims keeps its own rates
    policies = bundle(
        tmp_path / "bundle",
        data=lambda d: d.setdefault("autonomy", {}).update(audit_rate_bp=every_run),
    )
    live = launch(database, policies=policies)
    refund = held_refund(live.as_role("payments-agent", owner=OWNER))
    canceller = live.as_role("booking-agent", owner=OWNER)
    cancelled = propose(
        canceller, proposal("parking", "booking.cancel", confidence=0.95), "execute"
    )
    claims_agent = live.as_role("claims-agent", workflow="claims", owner=OWNER)
    claim = held_claim(claims_agent)
    governor = live.as_role("governor")
    for workflow, case_type in (("parking", "booking.create"), ("claims", "claim.pay")):
        changed = set_level(governor, workflow, case_type, 1, "a level of each workflow moved")
        assert changed.status_code == 200, changed.text
    audits = live.as_role("auditor").get("/v1/audits").json()
    (audit_id,) = [a["id"] for a in audits if a["action_id"] == cancelled["action_id"]]
    bound = {role: live.as_role(role, workflow="claims") for role in EVERY if "agent" not in role}
    bound["claims-agent"] = claims_agent
    return World(live, refund, cancelled, canceller, audit_id, claim, bound)


def assert_bound_refusal(response: httpx.Response, role: str, path: str) -> None:
    problem = assert_problem(response, 403)
    assert BOUND in problem["detail"], (role, path, problem["detail"])


def test_a_bound_token_of_any_role_reads_nothing_of_another_workflow(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    world = _world(sqlite_database, launch, tmp_path)
    refund, cancelled = world.refund["action_id"], world.cancelled["action_id"]
    refused = [
        (f"/v1/actions/{refund}", SEE),
        (f"/v1/actions/{cancelled}", SEE),
        (f"/v1/approvals/{world.refund['approval']['id']}", SEE),
        (f"/v1/audits/{world.audit_id}", ("auditor",)),
        ("/v1/autonomy/parking/refund.issue", EVERY),
        ("/v1/autonomy?workflow=parking", EVERY),
        ("/v1/ledger/export", READ),
        ("/v1/policies/active", READ),
        ("/v1/policies/shadow", READ),
    ]
    for path, roles in refused:
        for role in roles:
            assert_bound_refusal(world.bound[role].get(path), role, path)

    # Lists leave the other workflow out.
    claim_approval = world.claim["approval"]["id"]
    for role in EVERY:
        client = world.bound[role]
        approvals = {a["id"] for a in client.get("/v1/approvals").json()}
        assert world.refund["approval"]["id"] not in approvals, role
        if role in ("approver", "governor", "auditor"):  # who decides or oversees them
            assert claim_approval in approvals, role
        levels = client.get("/v1/autonomy").json()
        assert {v["workflow"] for v in levels} == {"claims"}, role
        promotions = client.get("/v1/autonomy/promotions", params={"status": "pending"}).json()
        assert {p["workflow"] for p in promotions} <= {"claims"}, role
    audits = world.bound["auditor"].get("/v1/audits").json()
    assert world.audit_id not in {a["id"] for a in audits}

    # Its own workflow stays open to it, and the other one to tokens bound to none.
    auditor = world.bound["auditor"]
    assert auditor.get(f"/v1/actions/{world.claim['action_id']}").status_code == 200
    assert auditor.get(f"/v1/approvals/{claim_approval}").status_code == 200
    assert world.bound["governor"].get("/v1/autonomy/claims/claim.pay").status_code == 200
    anyone = world.live.as_role("auditor")
    assert anyone.get(f"/v1/actions/{refund}").status_code == 200
    assert anyone.get(f"/v1/audits/{world.audit_id}").status_code == 200


def test_a_bound_token_reads_only_its_workflows_ledger_entries_and_no_export(
    database: Database, launch: Launch, tmp_path: Path
) -> None:
    world = _world(database, launch, tmp_path)
    everything = world.live.as_role("auditor").get("/v1/ledger/entries", params={"limit": 1000})
    assert everything.status_code == 200, everything.text
    subjects = {e["entry"]["subject"] for e in everything.json()}
    assert world.parking_subjects | world.claims_subjects <= subjects
    ours = [e for e in everything.json() if e["entry"]["subject"] in world.claims_subjects]
    assert [e["entry"]["kind"] for e in ours] == ["proposal", "decision", "autonomy"]

    for role in READ:
        client = world.bound[role]
        got = client.get("/v1/ledger/entries", params={"limit": 1000})
        assert got.status_code == 200, got.text
        assert got.json() == ours, role  # the same entries, as stored, in seq order
        # A page starts at `start` and holds up to `limit` of its workflow's entries.
        page = client.get("/v1/ledger/entries", params={"start": ours[0]["seq"] + 1, "limit": 1})
        assert page.json() == [ours[1]], role
        assert client.get("/v1/ledger/entries", params={"start": ours[-1]["seq"] + 1}).json() == []
        # Each entry still proves its place in the whole, signed log.
        proof = client.get("/v1/ledger/proofs/inclusion", params={"seq": ours[0]["seq"]})
        assert proof.status_code == 200, proof.text
        assert proof.json()["leaf_hash"] == ours[0]["leaf_hash"]

        export = client.get("/v1/ledger/export")
        assert_bound_refusal(export, role, "/v1/ledger/export")
        assert "GET /v1/ledger/entries" in export.json()["detail"]  # it says what to do instead


def test_a_bound_token_reports_nothing_for_another_workflows_action(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    world = _world(sqlite_database, launch, tmp_path)
    action_id = world.cancelled["action_id"]
    outcome = world.bound["claims-agent"].post(
        f"/v1/actions/{action_id}/outcome", json={"status": "succeeded", "details": {}}
    )
    assert_bound_refusal(outcome, "claims-agent", "outcome")
    done = world.canceller.post(
        f"/v1/actions/{action_id}/outcome", json={"status": "succeeded", "details": {}}
    )
    assert done.status_code == 200, done.text

    for role in ("claims-agent", "auditor", "governor"):
        response = world.bound[role].post(
            f"/v1/actions/{action_id}/corrections", json={"reason": "undone by hand"}
        )
        assert_bound_refusal(response, role, "corrections")
    timeline = world.canceller.get(f"/v1/actions/{action_id}").json()["timeline"]
    assert [step["kind"] for step in timeline].count("outcome") == 1  # its executor's alone
