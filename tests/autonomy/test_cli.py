"""`mandate autonomy show|set|promotions|approve|reject` and `mandate audits list|record`
against a real gateway on loopback: results on stdout, exit 0 done, 1 refused by state (409),
2 unusable input."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner, Result

from gateway.cli.main import app
from tests.approvals.conftest import Launch
from tests.approvals.harness import Live, assert_problem, proposal, propose, vote
from tests.autonomy.support import bundle, case_terms, refund
from tests.conftest import Database
from tests.scrape import scrape, total


def mandate(live: Live, token: str, *args: str) -> Result:
    return CliRunner().invoke(app, [*args, "--url", live.url, "--token", token])


def test_show_and_set_levels(sqlite_database: Database, launch: Launch) -> None:
    live = launch(sqlite_database)
    governor = live.token("governor")
    refund(live.as_role("payments-agent"))

    shown = mandate(live, governor, "autonomy", "show", "--workflow", "parking")
    assert shown.exit_code == 0, shown.output
    header, *lines = shown.stdout.splitlines()
    assert header.split()[:4] == ["WORKFLOW", "CASE", "TYPE", "LEVEL"]
    (line,) = [row for row in lines if row.split()[1] == "refund.issue"]
    assert line.split()[:10] == [
        "parking",
        "refund.issue",
        "1",
        "advisory",
        "1",
        "1",
        "0",
        "0.00%",
        "0.00%",
        "0.00%",
    ]
    assert "to 2: reviewed 0 < 50" in line
    assert {row.split()[1] for row in lines} >= {"booking.create", "shuttle.dispatch"}

    done = mandate(
        live, governor, "autonomy", "set", "parking", "refund.issue", "2", "--reason", "proven"
    )
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith("parking/refund.issue: level 1 -> 2 (supervised); set at")
    again = mandate(
        live, governor, "autonomy", "set", "parking", "refund.issue", "2", "--reason", "again"
    )
    assert again.exit_code == 1  # at that level already (409)
    approver = live.token("approver")
    refused = mandate(
        live, approver, "autonomy", "set", "parking", "refund.issue", "3", "--reason", "me"
    )
    assert refused.exit_code == 2
    assert "may not govern" in refused.stderr
    bad = mandate(
        live, governor, "autonomy", "set", "parking", "refund.issue", "5", "--reason", "x"
    )
    assert bad.exit_code == 2
    as_json = mandate(live, governor, "autonomy", "show", "--json")
    assert as_json.exit_code == 0
    levels = {(v["workflow"], v["case_type"]): v["level"] for v in json.loads(as_json.stdout)}
    assert levels[("parking", "refund.issue")] == 2


def test_promotions_and_audits(sqlite_database: Database, launch: Launch, tmp_path: Path) -> None:
    criteria = {"min_reviewed": 1, "min_agreement_bp": 0, "max_failure_bp": 10_000,
                "max_error_bp": 10_000}  # fmt: skip
    terms = case_terms("parking", "refund.issue", promotion={"criteria": {"2": criteria}})
    everything = {"2": 10_000, "3": 10_000, "4": 10_000}

    def change(data: dict[str, object]) -> None:
        terms(data)
        data["autonomy"] = {"audit_rate_bp": everything}

    live = launch(sqlite_database, policies=bundle(tmp_path / "bundle", data=change))
    agent = live.as_role("payments-agent")
    answer = refund(agent)
    vote(live.as_role("approver"), answer["approval"]["id"], "approve")
    governor = live.token("governor")

    listed = mandate(live, governor, "autonomy", "promotions")
    assert listed.exit_code == 0, listed.output
    (line,) = listed.stdout.splitlines()[1:]
    promotion_id, workflow, case_type, levels, votes, status = line.split()[:6]
    assert (workflow, case_type, levels, votes, status) == (
        "parking",
        "refund.issue",
        "1->2",
        "0/1",
        "pending",
    )
    assert (
        mandate(live, governor, "autonomy", "reject", promotion_id, "--reason", " ").exit_code == 2
    )
    approved = mandate(live, governor, "autonomy", "approve", promotion_id, "--reason", "ok")
    assert approved.exit_code == 0, approved.output
    assert approved.stdout.startswith(f"{promotion_id} approved (1/1 approvals)")
    assert mandate(live, governor, "autonomy", "approve", promotion_id).exit_code == 0  # same vote
    other = live.token("governor")
    assert mandate(live, other, "autonomy", "reject", promotion_id, "--reason", "no").exit_code == 1

    # The promotion as operators see it: counted, and the level in force.
    refund_issue = {"workflow": "parking", "case_type": "refund.issue"}
    samples = scrape(live.client(governor))
    assert total(samples, "mandate_autonomy_changes_total", event="promotion", **refund_issue) == 1
    assert total(samples, "mandate_autonomy_level", **refund_issue) == 2
    assert total(samples, "mandate_audits_pending", **refund_issue) == 0

    executed = propose(agent, proposal("parking", "refund.issue", amount="20"), "execute")
    assert total(scrape(live.client(governor)), "mandate_audits_pending", **refund_issue) == 1
    auditor = live.token("auditor")
    queue = mandate(live, auditor, "audits", "list")
    assert queue.exit_code == 0, queue.output
    (row,) = [r for r in queue.stdout.splitlines()[1:] if executed["action_id"] in r]
    audit_id = row.split()[0]
    missing = mandate(live, auditor, "audits", "record", audit_id, "incorrect")
    assert missing.exit_code == 2
    assert "note" in missing.stderr
    recorded = mandate(live, auditor, "audits", "record", audit_id, "correct")
    assert recorded.exit_code == 0, recorded.output
    assert recorded.stdout.startswith(f"{audit_id} correct; action {executed['action_id']}")
    twice = mandate(live, auditor, "audits", "record", audit_id, "incorrect", "--note", "hm")
    assert twice.exit_code == 1


def test_an_unknown_workflow_is_refused_naming_the_known_ones(
    sqlite_database: Database, launch: Launch
) -> None:
    live = launch(sqlite_database)
    governor = live.token("governor")

    problem = assert_problem(live.client(governor).get("/v1/autonomy?workflow=nope"), 422)
    assert problem["errors"][0]["field"] == "workflow"
    assert "claims, files, parking" in problem["detail"]

    shown = mandate(live, governor, "autonomy", "show", "--workflow", "nope")
    assert shown.exit_code == 2
    assert shown.stdout == ""
    assert "no workflow 'nope'" in shown.stderr
    assert "claims, files, parking" in shown.stderr
