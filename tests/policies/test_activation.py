"""Activating bundles: only policy admins, only bundles that pass their checks, a ``policy``
ledger entry for each, and every gateway process on the database following within its poll
interval (held approvals re-evaluated on their next vote)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gateway.lifecycle.activation import SYSTEM
from gateway.lifecycle.slots import write_slot
from gateway.policy.bundle import bundle_from_files, load_bundle, read_bundle_files
from tests.approvals.conftest import Launch
from tests.approvals.harness import (
    assert_problem,
    held_claim,
    proposal,
    propose,
    verified_ledger,
    vote,
    wait_for,
)
from tests.conftest import Database
from tests.policies.support import (
    CASES,
    POLICIES,
    activate,
    bundle_copy,
    clean_env,
    mandate,
    policy_entries,
    raised_review,
    replace_in,
    texts,
)


def default() -> str:
    """The default bundle's digest (read when used: the directory is the repository's)."""
    return load_bundle(POLICIES).digest


def claim(amount: str) -> dict[str, object]:
    return proposal("claims", "claim.approve", amount=amount, confidence=0.97)


def test_the_first_start_activates_the_directory_and_says_so(
    database: Database, launch: Launch
) -> None:
    live = launch(database)
    (entry,) = policy_entries(live)
    assert entry["subject"] == default()
    assert entry["actor"] == "mandate"
    body = entry["body"]
    assert (body["mode"], body["digest"], body["previous"]) == ("active", default(), None)
    assert body["why"].startswith("first start")
    files = read_bundle_files(POLICIES)
    assert {f["path"]: f["sha256"] for f in body["files"]} == {
        path: hashlib.sha256(content).hexdigest() for path, content in files.items()
    }

    for role in ("policy-admin", "auditor", "governor"):
        seen = live.as_role(role).get("/v1/policies/active")
        assert seen.status_code == 200, seen.text
        view = seen.json()
        assert (view["digest"], view["activated_by"], view["ledger_seq"]) == (
            default(),
            "mandate",
            entry["seq"],
        )
        assert view["workflows"] == ["claims", "files", "parking"]
        assert all(f["content"] is None for f in view["files"])
    full = live.as_role("auditor").get("/v1/policies/active", params={"content": "true"}).json()
    data = next(f for f in full["files"] if f["path"] == "data.json")
    assert data["content"] == (POLICIES / "data.json").read_text()
    assert_problem(live.as_role("claims-agent").get("/v1/policies/active"), 403)
    assert_problem(live.client().get("/v1/policies/active"), 401)

    # A second process on the same database with the same bundle writes nothing.
    again = launch(database, data_dir=live.settings.data_dir)
    assert len(policy_entries(again)) == 1


def test_a_policy_admin_activates_a_bundle_and_decisions_follow_it(
    database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(database)
    admin_token = live.token("policy-admin")
    admin = live.client(admin_token)
    agent = live.as_role("claims-agent")
    assert propose(agent, claim("12000"), "hold")["trace"]["bundle_digest"] == default()

    candidate = bundle_copy(tmp_path / "raised", raised_review)
    digest = load_bundle(candidate).digest
    answer = activate(admin, candidate, reason="adjusters are swamped: review from 20000")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["changed"] is True
    assert body["policy"]["digest"] == digest
    assert body["validation"]["rego_tests"] == {"passed": 20, "failed": 0}
    assert body["validation"]["cases"]["failed"] == 0

    # In force at once on this process: the same claim now runs alone, naming the new bundle.
    now = propose(agent, claim("12000"), "execute")
    assert now["trace"]["bundle_digest"] == digest
    assert live.as_role("auditor").get("/v1/policies/active").json()["digest"] == digest

    # The ledger says who, why, which files, what the check found.
    entry = policy_entries(live)[-1]
    assert entry["kind"] == "policy"
    assert entry["subject"] == digest
    recorded = entry["body"]
    assert recorded["previous"] == default()
    assert recorded["why"] == "adjusters are swamped: review from 20000"
    assert recorded["by"]["role"] == "policy-admin"
    assert entry["actor"] == recorded["by"]["name"]
    assert {f["path"] for f in recorded["files"]} == set(read_bundle_files(candidate))
    assert recorded["validation"] == body["validation"]

    # The same bundle again changes nothing and writes nothing.
    count = len(policy_entries(live))
    again = activate(admin, candidate)
    assert again.status_code == 200
    assert again.json()["changed"] is False
    assert len(policy_entries(live)) == count

    ledger = verified_ledger(live.url, live.settings, tmp_path)
    assert [e["body"]["digest"] for e in ledger.of("policy")] == [default(), digest]


def test_only_policy_admins_activate_and_only_bundles_that_pass(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(sqlite_database)
    candidate = bundle_copy(tmp_path / "raised", raised_review)
    for role, workflow in (("claims-agent", None), ("approver", None), ("governor", None)):
        assert_problem(activate(live.as_role(role, workflow=workflow), candidate), 403)
    bound = live.as_role("policy-admin", workflow="claims")
    assert "bound to workflow" in assert_problem(activate(bound, candidate), 403)["detail"]

    admin = live.as_role("policy-admin")
    # Data changed but the case that pinned the old threshold was not: refused, named.
    stale = bundle_copy(
        tmp_path / "stale",
        replace_in("data.json", '"review_over": "5000"', '"review_over": "20000"'),
    )
    problem = assert_problem(activate(admin, stale), 422)
    fields = {e["field"]: e["message"] for e in problem["errors"]}
    assert "a claim over the review threshold of 5000 is held" in fields[f"files.{CASES}"]
    assert "test_large_claim_is_held_at_level_3" in fields["files.rego/claims_test.rego"]
    # A Rego syntax error names the module.
    syntax = bundle_copy(
        tmp_path / "syntax",
        replace_in("rego/claims.rego", "amount > to_number", "amount >> to_number"),
    )
    problem = assert_problem(activate(admin, syntax), 422)
    assert problem["errors"][0]["field"] == "files.rego/claims.rego"
    # A path that would escape the bundle, a file missing.
    files = texts(candidate)
    escaping = {**files, "../evil.rego": "package x"}
    response = admin.post("/v1/policies", json={"files": escaping, "reason": "x"})
    assert assert_problem(response, 422)["errors"][0]["field"] == "files.../evil.rego"
    missing = {p: t for p, t in files.items() if p != "casbin/policy.csv"}
    response = admin.post("/v1/policies", json={"files": missing, "reason": "x"})
    assert "missing casbin/policy.csv" in assert_problem(response, 422)["detail"]
    response = admin.post("/v1/policies", json={"files": files, "reason": ""})
    assert_problem(response, 422)

    assert len(policy_entries(live)) == 1  # nothing of the refused ones was recorded
    assert admin.get("/v1/policies/active").json()["digest"] == default()


@pytest.mark.postgres
def test_every_process_follows_and_held_approvals_are_re_evaluated(
    pg_database: Database, launch: Launch, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    first = launch(pg_database, data_dir=data_dir)
    second = launch(pg_database, data_dir=data_dir)
    agent_token = first.token("claims-agent")
    approvers = [first.token("approver", workflow="claims") for _ in range(2)]
    held = held_claim(second.client(agent_token))  # 12000: held for 2 approvals
    assert vote(second.client(approvers[0]), held["approval"]["id"], "approve").status_code == 200

    # Activated through the first process; the second follows within its poll interval.
    candidate = bundle_copy(tmp_path / "raised", raised_review)
    digest = load_bundle(candidate).digest
    assert activate(first.as_role("policy-admin"), candidate).status_code == 200
    on_second = second.client(agent_token)
    wait_for(
        lambda: second.runtime.in_force.policy.bundle.digest == digest,
        timeout=10,
        what="the second process to follow",
    )
    assert propose(on_second, claim("12000"), "execute")["trace"]["bundle_digest"] == digest

    # The approval asked under the old bundle is re-evaluated at its next vote: it executes now.
    again = vote(second.client(approvers[1]), held["approval"]["id"], "approve")
    problem = assert_problem(again, 409)
    assert "policy bundle changed" in problem["detail"]
    assert "re-evaluated: execute" in problem["detail"]


def test_the_cli_activates_locally_and_through_a_gateway(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(sqlite_database)
    env = clean_env(MANDATE_DATABASE_URL=sqlite_database.url)
    candidate = bundle_copy(tmp_path / "raised", raised_review)
    digest = load_bundle(candidate).digest

    # A bundle that fails its checks is refused before anything is sent or written.
    stale = bundle_copy(
        tmp_path / "stale",
        replace_in("data.json", '"review_over": "5000"', '"review_over": "20000"'),
    )
    done = mandate(
        "policy", "activate", stale, "--reason", "x", "--data-dir", live.settings.data_dir,
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "FAIL" in done.stderr
    assert "fails its checks" in done.stderr

    # Local: on the database directly, as the operator; the running gateway follows.
    done = mandate(
        "policy", "activate", candidate, "--reason", "raise review", "--data-dir",
        live.settings.data_dir, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == digest
    assert "is now the active bundle in the local database" in done.stderr
    wait_for(lambda: live.runtime.in_force.policy.bundle.digest == digest, what="the gateway")
    entry = policy_entries(live)[-1]
    assert entry["body"]["by"]["token_id"] == "local"
    assert entry["body"]["why"] == "raise review"

    # Through the gateway, with a policy-admin token: back to the default bundle.
    token = live.token("policy-admin")
    done = mandate(
        "policy", "activate", POLICIES, "--reason", "back", "--url", live.url,
        cwd=tmp_path, env=clean_env(MANDATE_TOKEN=token),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == default()
    assert live.runtime.in_force.policy.bundle.digest == default()
    # ...and a token that may not: exit 2 with the gateway's answer.
    done = mandate(
        "policy", "activate", candidate, "--reason", "x", "--url", live.url,
        cwd=tmp_path, env=clean_env(MANDATE_TOKEN=live.token("auditor")),
    )  # fmt: skip
    assert done.returncode == 2
    assert "403" in done.stderr


def test_the_cli_says_in_one_line_when_it_cannot_do_it_through_a_gateway(tmp_path: Path) -> None:
    nowhere = "http://127.0.0.1:9"  # the discard port: nothing listens there
    env = clean_env(MANDATE_TOKEN="mdt_whatever")
    activating = ("policy", "activate", POLICIES, "--reason", "x", "--url", nowhere)
    replaying = ("policy", "replay", "--url", nowhere)
    for args, said in [
        (activating, f"error: cannot reach the gateway at {nowhere}: "),
        (replaying, f"error: the replay through {nowhere} failed: "),
    ]:
        done = mandate(*args, cwd=tmp_path, env=env)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(said), done.stderr
        assert "Traceback" not in done.stderr
    untokened = mandate(*replaying, cwd=tmp_path)
    assert untokened.returncode == 2
    assert "--url needs a policy-admin token (--token or MANDATE_TOKEN)" in untokened.stderr


def test_a_process_started_with_another_bundle_activates_it(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    first = launch(sqlite_database, data_dir=data_dir)
    first.stop()
    candidate = bundle_copy(tmp_path / "raised", raised_review)
    # Started with an explicit --policies that differs: the operator means that bundle.
    second = launch(sqlite_database, data_dir=data_dir, policies=candidate)
    entries = policy_entries(second)
    assert [e["body"]["digest"] for e in entries] == [default(), load_bundle(candidate).digest]
    assert entries[-1]["body"]["why"] == f"started with --policies {candidate}"
    assert entries[-1]["body"]["validation"]["checked"] is False


def test_a_process_that_cannot_load_the_active_bundle_fails_closed(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(sqlite_database)
    agent = live.as_role("booking-agent")
    auditor = live.as_role("auditor")

    def booking() -> dict[str, object]:
        return proposal("parking", "booking.create", confidence=0.95)

    # Another process (of another version, say) activated a bundle this one cannot load.
    broken = bundle_copy(
        tmp_path / "broken", replace_in("rego/parking.rego", "amount > to_number", "amount >> to")
    )
    write_slot(
        live.runtime.engine,
        live.runtime.ledger,
        "active",
        bundle_from_files(read_bundle_files(broken)),
        by=SYSTEM,
        reason="from elsewhere",
        validation=None,
    )
    wait_for(
        lambda: agent.post("/v1/actions", json=booking()).status_code == 503,
        what="the process to fail closed",
    )
    problem = assert_problem(agent.post("/v1/actions", json=booking()), 503)
    assert "does not load here" in problem["detail"]
    ready = auditor.get("/readyz")
    assert ready.status_code == 503
    assert "does not load here" in ready.json()["checks"]["policy"]

    # A bundle that loads is activated: the process decides again.
    assert activate(live.as_role("policy-admin"), POLICIES).status_code == 200
    propose(agent, booking(), "execute")
    assert auditor.get("/readyz").status_code == 200
