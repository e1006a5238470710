"""`mandate approvals list|approve|reject` and `mandate actions show` against the real gateway:
results on stdout, messages on stderr, exit 0 done, 1 the approval refuses (409), 2 unusable
input (bad token, no such id, a missing reason)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from gateway.cli.main import app
from gateway.client import MandateClient
from gateway.schemas import Verdict
from tests.sdk.conftest import Live, executes, held

MANDATE = Path(sys.executable).parent / "mandate"


def mandate(live: Live, token: str, *args: str) -> Result:
    """Run the command line in this process, against the live gateway."""
    return CliRunner().invoke(app, [*args, "--url", live.url, "--token", token])


@pytest.fixture
def hold(live: Live) -> Iterator[tuple[MandateClient, Verdict]]:
    """A booking held for approval, and its proposer's client."""
    with live.client("booking-agent") as bot:
        verdict = bot.propose(**held(params={"amount": "12.00"}, resource="lot-cli/1"))
        assert verdict.approval is not None
        yield bot, verdict


def test_approvals_list(live: Live, hold: tuple[MandateClient, Verdict]) -> None:
    _, verdict = hold
    assert verdict.approval is not None
    approver = live.token("approver")

    result = mandate(live, approver, "approvals", "list")
    assert result.exit_code == 0, result.output
    header, *lines = result.stdout.splitlines()
    assert header.split()[:3] == ["APPROVAL", "WORKFLOW", "CASE"]
    [line] = [row for row in lines if row.startswith(verdict.approval.id)]
    assert line.split() == [
        verdict.approval.id,
        "parking",
        "booking.create",
        line.split()[3],
        "12.00",
        "0.5",
        "0/1",
        verdict.approval.expires_at,
        "low_confidence",
    ]

    as_json = mandate(live, approver, "approvals", "list", "--json")
    assert as_json.exit_code == 0
    assert verdict.approval.id in [a["id"] for a in json.loads(as_json.stdout)]

    none = mandate(live, approver, "approvals", "list", "--status", "superseded")
    assert none.exit_code == 0
    assert none.stdout == ""
    assert "no superseded approvals" in none.stderr

    wrong = mandate(live, approver, "approvals", "list", "--status", "open")
    assert wrong.exit_code == 2
    assert "unknown status 'open'" in wrong.stderr


def test_approve_then_again_exits_1(live: Live, hold: tuple[MandateClient, Verdict]) -> None:
    bot, verdict = hold
    assert verdict.approval is not None
    approver = live.token("approver")

    result = mandate(live, approver, "approvals", "approve", verdict.approval.id, "--reason", "ok")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        f"{verdict.approval.id} approved (1/1 approvals); action {verdict.action_id}"
    )
    assert bot.get_action(verdict.action_id).status == "approved"

    again = mandate(live, approver, "approvals", "reject", verdict.approval.id, "--reason", "no")
    assert again.exit_code == 1
    assert again.stdout == ""
    assert f"you already voted approve on approval {verdict.approval.id}" in again.stderr


def test_reject(live: Live, hold: tuple[MandateClient, Verdict]) -> None:
    bot, verdict = hold
    assert verdict.approval is not None
    approver = live.token("approver")

    missing = mandate(live, approver, "approvals", "reject", verdict.approval.id)
    assert missing.exit_code == 2
    assert "--reason" in missing.output
    blank = mandate(live, approver, "approvals", "reject", verdict.approval.id, "--reason", " ")
    assert blank.exit_code == 2
    assert "a reason is required" in blank.stderr

    result = mandate(
        live, approver, "approvals", "reject", verdict.approval.id, "--reason", "lot closed"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{verdict.approval.id} rejected")
    assert bot.get_action(verdict.action_id).status == "rejected"


def test_errors_exit_2_with_the_problem_detail(
    live: Live, hold: tuple[MandateClient, Verdict]
) -> None:
    _, verdict = hold
    assert verdict.approval is not None

    unauthorized = mandate(live, "mdt_bogus", "approvals", "list")
    assert unauthorized.exit_code == 2
    assert unauthorized.stderr.startswith("error: ")
    assert unauthorized.stdout == ""

    own = mandate(live, live.token("booking-agent"), "approvals", "approve", verdict.approval.id)
    assert own.exit_code == 2  # 403: an executor role may not approve
    assert "may not approve" in own.stderr

    unknown = mandate(live, live.token("approver"), "actions", "show", "act_nope")
    assert unknown.exit_code == 2
    assert "no action act_nope" in unknown.stderr


def test_actions_show_prints_the_timeline(live: Live) -> None:
    with live.client("booking-agent") as bot:
        verdict = bot.propose(**executes(resource="lot-cli/2"))
        bot.report_outcome(verdict.action_id, True, {"booking": "B-2"})
        token = bot._http.headers["Authorization"].removeprefix("Bearer ")

    result = mandate(live, token, "actions", "show", verdict.action_id)
    assert result.exit_code == 0, result.output
    facts, timeline = result.stdout.split("\n\n")
    assert f"action    {verdict.action_id}" in facts
    assert "status    succeeded" in facts
    header, *rows = timeline.strip().splitlines()
    assert header.split() == ["SEQ", "TIME", "KIND", "WHAT", "HAPPENED"]
    by_kind = {row.split()[2]: row for row in rows}
    assert by_kind["proposal"].split()[0] == str(verdict.ledger.proposal_seq)
    assert "proposed booking.create on lot-cli/2, confidence 0.95" in by_kind["proposal"]
    assert "execute at level 3" in by_kind["decision"]
    assert 'succeeded, reported by the executor: {"booking": "B-2"}' in by_kind["outcome"]

    as_json = mandate(live, token, "actions", "show", verdict.action_id, "--json")
    assert json.loads(as_json.stdout)["status"] == "succeeded"


def test_actions_show_prints_an_exception_and_who_handled_it(live: Live) -> None:
    with live.client("booking-agent") as bot:
        verdict = bot.propose(**executes(resource="lot-cli/3"))
        bot.report_outcome(verdict.action_id, False, {"detail": "barrier jammed"})
    governor = live.token("governor")
    with MandateClient(live.url, governor) as people:
        (item,) = [e for e in people.exceptions() if e.action_id == verdict.action_id]
        handled = people.decide_exception(item.id, "handled", "opened it by hand")
    assert (handled.status, handled.note) == ("handled", "opened it by hand")

    result = mandate(live, governor, "actions", "show", verdict.action_id)
    assert result.exit_code == 0, result.output
    rows = [row for row in result.stdout.splitlines() if " exception " in row]
    assert f"handed to people as exception {item.id} (outcome_failed)" in rows[0]
    assert f"{handled.closed_by} marked handled exception {item.id}: opened it by hand" in rows[1]


def test_the_installed_command_reads_url_and_token_from_the_environment(
    live: Live, hold: tuple[MandateClient, Verdict]
) -> None:
    _, verdict = hold
    assert verdict.approval is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANDATE_")}
    env |= {"MANDATE_URL": live.url, "MANDATE_TOKEN": live.token("approver")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(MANDATE), *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )

    shown = run("actions", "show", verdict.action_id)
    assert shown.returncode == 0, shown.stderr
    assert "hold at level 3: low_confidence" in shown.stdout

    approved = run("approvals", "approve", verdict.approval.id)
    assert approved.returncode == 0, approved.stderr
    assert " approved (1/1 approvals)" in approved.stdout

    # The same vote again (a retry whose answer was lost) is answered as before: it counts once.
    again = run("approvals", "approve", verdict.approval.id)
    assert again.returncode == 0, again.stderr
    assert " approved (1/1 approvals)" in again.stdout
    other_way = run("approvals", "reject", verdict.approval.id, "--reason", "changed my mind")
    assert other_way.returncode == 1
    assert other_way.stdout == ""
    assert "already voted approve" in other_way.stderr
