"""Replay: the recorded history decided again with a candidate bundle, and the decision
integrity it rests on: replayed with the bundles, levels and figures that decided it, the whole
history changes no verdict."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.cli.demo import proposals as demo_proposals
from gateway.client import Forbidden, InvalidInput, MandateClient
from gateway.lifecycle.replay import Replayer
from gateway.lifecycle.slots import BundleStore
from gateway.policy.active import build_policy
from gateway.policy.bundle import load_bundle
from gateway.policy.opa import opa_available
from tests.approvals.conftest import Hook, Launch
from tests.approvals.harness import (
    Clock,
    Live,
    assert_problem,
    pending_ids,
    proposal,
    propose,
    vote,
    wait_for,
)
from tests.conftest import Database
from tests.policies.support import (
    POLICIES,
    activate,
    bundle_copy,
    clean_env,
    decision_count,
    mandate,
    raised_review,
    renamed_limit,
    texts,
)


def replay(client: httpx.Client, **body: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """POST /v1/policies/replay; the progress events and the report."""
    lines = []
    with client.stream("POST", "/v1/policies/replay", json=body, timeout=300) as got:
        assert got.status_code == 200, got.read()
        assert got.headers["content-type"].startswith("application/x-ndjson")
        for line in got.iter_lines():
            if line.strip():
                lines.append(json.loads(line))
    *progress, report = lines
    assert all(p["event"] == "progress" for p in progress), lines
    assert report["event"] == "report", report
    return progress, report


def realistic_history(live: Live, clock: Clock, hook: Hook, tmp_path: Path) -> dict[str, int]:
    """A demo-like history: routine work, edge cases, mistakes; holds approved, rejected,
    left to expire; a bundle activated half-way, so that held approvals are re-evaluated; and
    more work under the new bundle. Returns what happened, by kind."""
    rng = random.Random(5)
    roles = ("booking-agent", "payments-agent", "claims-agent")
    tokens = {role: live.token(role) for role in roles}
    clients = {role: live.client(token) for role, token in tokens.items()}
    approvers = {
        workflow: [live.as_role("approver", workflow=workflow) for _ in range(2)]
        for workflow in ("parking", "claims")
    }
    seen: Counter[str] = Counter()

    def send(items: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        held = []
        for role, body in items:
            response = clients[role].post("/v1/actions", json=body)
            assert response.status_code == 200, response.text
            answer = response.json()
            seen[answer["verdict"]] += 1
            if answer["verdict"] == "hold":
                held.append(answer | {"_workflow": body["workflow"]})
        return held

    def settle(held: list[dict[str, Any]], leave: float) -> list[dict[str, Any]]:
        """Approve (to quorum), reject, or leave each hold pending."""
        left = []
        for answer in held:
            approval = answer["approval"]
            people = approvers[answer["_workflow"]]
            pick = rng.random()
            if pick < leave:
                left.append(answer)
            elif pick < 0.7:
                for person in people[: approval["quorum"]]:
                    assert vote(person, approval["id"], "approve").status_code == 200
                seen["approved"] += 1
            else:
                assert vote(people[0], approval["id"], "reject", "not this one").status_code == 200
                seen["rejected"] += 1
        return left

    items = list(demo_proposals(90, seed=3))
    items += [  # what the demo mix lacks: no confidence, litigation, a lot change, level 4
        ("booking-agent", proposal("parking", "booking.create", confidence=None)),
        ("claims-agent", proposal("claims", "claim.approve", amount="900", confidence=None)),
        (
            "claims-agent",
            proposal("claims", "claim.approve", amount="700", confidence=0.95)
            | {"context": {"litigation": True}},
        ),
        (
            "booking-agent",
            proposal("parking", "booking.modify", confidence=0.9)
            | {"params": {"lot": "lot-2"}, "context": {"current_lot": "lot-1"}},
        ),
    ]
    pending = settle(send(items), leave=0.45)
    assert len(pending) >= 4, pending
    waiting, expiring = pending[::2], pending[1::2]

    # Half-way, the policy admin raises the claims review threshold; the next vote on each
    # approval asked under the old bundle re-evaluates its proposal under the new one.
    candidate = bundle_copy(tmp_path / "raised", raised_review)
    assert activate(live.as_role("policy-admin"), candidate).status_code == 200
    for answer in waiting:
        response = vote(approvers[answer["_workflow"]][0], answer["approval"]["id"], "approve")
        assert response.status_code == 409, response.text
        assert "re-evaluated" in response.text
        seen["re-evaluated"] += 1

    # The rest wait too long: the sweeper expires them (and any hold the re-evaluation made).
    clock.advance(hours=25)
    wait_for(
        lambda: not (pending_ids(approvers["parking"][0]) | pending_ids(approvers["claims"][0])),
        what="the sweeper",
    )
    seen["expired"] = len(expiring)

    held = send(list(demo_proposals(60, seed=4)))
    settle(held, leave=0.3)
    wait_for(lambda: bool(hook.delivered()), what="a delivery")
    return dict(seen)


@pytest.mark.slow
def test_replaying_the_whole_history_with_what_decided_it_changes_no_verdict(
    database: Database, launch: Launch, hook: Hook, tmp_path: Path
) -> None:
    clock = Clock()
    live = launch(
        database,
        clock=clock,
        sweep_interval=0.05,
        webhooks={"parking": hook.url, "claims": hook.url},
    )
    seen = realistic_history(live, clock, hook, tmp_path)
    for kind in ("execute", "hold", "reject", "approved", "rejected", "expired"):
        assert seen.get(kind), (kind, seen)
    assert seen["re-evaluated"], seen  # re-evaluations are decisions too, replayed as such

    admin = live.as_role("policy-admin")
    progress, report = replay(admin)
    decisions = decision_count(live)
    assert report["candidate_digest"] == "as-recorded"
    assert report["decisions"] == decisions, report
    assert report["proposals_missing"] == 0
    assert (report["changed"], report["reasons_changed"]) == (0, 0), report["examples"]
    assert report["refused_or_failed"] == 0
    # Every Rego input was rebuilt byte for byte from the ledger: nothing unrecorded.
    assert report["input_mismatches"] == 0, report["input_mismatch_seqs"]
    assert progress[-1]["scanned"] == report["entries_scanned"] == report["entries"]

    # The CLI on the database directly says the same (SQLite: a file this process can open).
    if database.backend == "sqlite":
        done = mandate(
            "policy", "replay", "--data-dir", live.settings.data_dir, "--json",
            cwd=tmp_path, env=clean_env(MANDATE_DATABASE_URL=database.url),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        local = json.loads(done.stdout)
        assert (local["decisions"], local["changed"], local["input_mismatches"]) == (
            decisions,
            0,
            0,
        )
        # OPA's own evaluator decides the same history alike: verdicts, reasons, their words.
        if not opa_available():
            return
        on_opa = mandate(
            "policy", "replay", "--engine", "opa", "--data-dir", live.settings.data_dir, "--json",
            cwd=tmp_path, env=clean_env(MANDATE_DATABASE_URL=database.url),
        )  # fmt: skip
        assert on_opa.returncode == 0, on_opa.stderr
        opa = json.loads(on_opa.stdout)
        assert opa["decisions"] == decisions
        assert (opa["changed"], opa["reasons_changed"], opa["messages_changed"]) == (0, 0, 0), opa
        assert (opa["warnings_changed"], opa["refused_or_failed"], opa["input_mismatches"]) == (
            0,
            0,
            0,
        )


def _claims_history(live: Live) -> dict[str, list[str]]:
    """Claims under the default bundle at level 3; action ids by amount band."""
    agent = live.as_role("claims-agent")
    bands: dict[str, list[str]] = {"small": [], "review": [], "judgment": [], "over": []}
    amounts = {"small": "800", "review": "12000", "judgment": "30000", "over": "60000"}
    for band, amount in [*amounts.items(), *amounts.items(), ("review", "6000")]:
        body = proposal("claims", "claim.approve", amount=amount, confidence=0.97)
        verdict = {"small": "execute", "over": "reject"}.get(band, "hold")
        bands[band].append(propose(agent, body, verdict)["action_id"])
    return bands


def test_a_candidate_replay_reports_what_would_change_and_why(
    database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(database)
    bands = _claims_history(live)
    admin = live.as_role("policy-admin")
    candidate = bundle_copy(tmp_path / "raised", raised_review)

    progress, report = replay(admin, files=texts(candidate), examples=2)
    assert progress[0]["scanned"] == 0
    assert report["candidate_digest"] == load_bundle(candidate).digest
    assert report["decisions"] == 9
    # 12000 and 6000 were held for high_value; with review from 20000 they run alone.
    assert report["changed"] == len(bands["review"]) == 3
    assert report["transitions"] == [{"from": "hold", "to": "execute", "count": 3}]
    assert report["rules"] == [{"code": "high_value", "added": 0, "removed": 3}]
    (group,) = [g for g in report["groups"] if g["changed"]]
    assert (group["workflow"], group["case_type"], group["decisions"]) == (
        "claims",
        "claim.approve",
        9,
    )
    assert len(report["examples"]) == 2
    example = report["examples"][0]
    assert example["action_id"] in bands["review"]
    assert [r["code"] for r in example["before"]["reasons"]] == ["high_value"]
    assert example["after"]["verdict"] == "execute"
    assert example["proposal"]["params"]["amount"] in ("12000", "6000")
    assert report["input_mismatches"] == 0

    # --since: only what was decided from then on.
    later = report["examples"][1]["decided_at"]
    _, since = replay(admin, files=texts(candidate), since=later)
    assert since["since"] == later
    assert 0 < since["decisions"] < report["decisions"]


def test_replay_through_the_cli_with_a_progress_bar_and_an_exit_code(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(sqlite_database)
    _claims_history(live)
    candidate = bundle_copy(tmp_path / "raised", raised_review)
    env = clean_env(MANDATE_TOKEN=live.token("policy-admin"))
    args = ("policy", "replay", "--candidate", candidate, "--url", live.url)
    done = mandate(*args, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Replayed 9 decisions" in out
    assert "Verdicts that would change: 3 (33.33%)" in out
    assert "hold → execute: 3" in out
    assert "-high_value 3" in out
    assert "Every replayed decision's Rego input was rebuilt from the ledger exactly." in out
    failing = mandate(
        "policy", "replay", "--candidate", candidate, "--url", live.url, "--fail-on-change",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert failing.returncode == 1
    same = mandate(
        "policy", "replay", "--candidate", POLICIES, "--url", live.url, "--fail-on-change",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert same.returncode == 0, same.stderr
    assert "Verdicts that would change: 0" in same.stdout
    bad = mandate(
        "policy", "replay", "--candidate", tmp_path / "none", "--url", live.url,
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert bad.returncode == 2


def test_the_sdk_replays_and_activates_for_a_policy_admin(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(sqlite_database)
    _claims_history(live)
    candidate = bundle_copy(tmp_path / "raised", raised_review)
    seen: list[tuple[int, int | None]] = []
    with MandateClient(live.url, live.token("policy-admin")) as admin:
        report = admin.replay_policy(
            texts(candidate),
            examples=1,
            progress=lambda scanned, total: seen.append((scanned, total)),
        )
        assert (report["decisions"], report["changed"], len(report["examples"])) == (9, 3, 1)
        assert seen[0][0] == 0
        assert seen[-1][0] == report["entries_scanned"]
        with pytest.raises(InvalidInput) as bad:
            admin.replay_policy(since="last week")
        assert bad.value.errors[0].field == "since"

        same = admin.activate_policy(texts(POLICIES), "it is active already")
        assert not same.changed
        beside = admin.activate_policy(texts(candidate), "try it beside", mode="shadow")
        assert beside.changed
        assert (beside.policy.mode, beside.policy.digest) == (
            "shadow",
            load_bundle(candidate).digest,
        )
    with MandateClient(live.url, live.token("auditor")) as auditor, pytest.raises(Forbidden):
        auditor.replay_policy()


def test_replay_refusals(sqlite_database: Database, launch: Launch, tmp_path: Path) -> None:
    live = launch(sqlite_database)
    files = texts(POLICIES)
    for client in (live.as_role("claims-agent"), live.as_role("auditor")):
        assert_problem(client.post("/v1/policies/replay", json={"files": files}), 403)
    admin = live.as_role("policy-admin")
    problem = assert_problem(
        admin.post("/v1/policies/replay", json={"files": files, "since": "last week"}), 422
    )
    assert problem["errors"][0]["field"] == "since"
    broken = {**files, "rego/claims.rego": files["rego/claims.rego"] + "\nthis is not rego\n"}
    assert_problem(admin.post("/v1/policies/replay", json={"files": broken}), 422)


def test_pages_and_the_pending_proposals_do_not_change_the_result(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(sqlite_database)
    _claims_history(live)
    candidate = build_policy(load_bundle(bundle_copy(tmp_path / "raised", raised_review)))
    store = BundleStore(live.runtime.engine)
    reports = [
        Replayer(
            live.runtime.ledger,
            live.runtime.engine,
            candidate,
            recorded=lambda digest: build_policy(store.bundle(digest)),
            page=page,
        ).run()
        for page in (1, 3, 5000)
    ]
    timing = ("seconds", "decisions_per_second")
    wanted = {k: v for k, v in reports[-1].to_json().items() if k not in timing}
    for report in reports:
        assert {k: v for k, v in report.to_json().items() if k not in timing} == wanted


def test_a_replay_names_the_decisions_whose_reasons_change(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(sqlite_database)
    bands = _claims_history(live)  # the two claims of 60000 are refused for over_hard_limit
    candidate = bundle_copy(tmp_path / "renamed", renamed_limit)

    _, report = replay(live.as_role("policy-admin"), files=texts(candidate))
    assert (report["changed"], report["reasons_changed"]) == (0, 2)
    (change,) = report["reason_changes"]
    assert {k: v for k, v in change.items() if k != "decisions"} == {
        "workflow": "claims",
        "case_type": "claim.approve",
        "verdict": "reject",
        "added": ["over_claim_limit"],
        "removed": ["over_hard_limit"],
        "count": 2,
    }
    assert [d["action_id"] for d in change["decisions"]] == bands["over"]
    assert all(d["decision_seq"] and d["decided_at"] for d in change["decisions"])
    (group,) = report["groups"]
    assert (group["changed"], group["reasons_changed"]) == (0, 2)

    env = clean_env(MANDATE_TOKEN=live.token("policy-admin"))
    done = mandate(
        "policy", "replay", "--candidate", candidate, "--url", live.url, cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "same verdict for other reasons: 2" in out
    assert "Same verdict, other reasons (codes the candidate adds +, drops -):" in out
    assert "claims/claim.approve reject: +over_claim_limit -over_hard_limit: 2" in out
    assert f"      {', '.join(bands['over'])}" in out.splitlines()
