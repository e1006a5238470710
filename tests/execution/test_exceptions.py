"""Exceptions end to end: a failed execution reaches people with what was attempted and what
failed; their choice (retry, or handled with a note) is a ledger entry, counts in the figures,
and is made once; the proposing executor never makes it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from adapters.examples.receiver import Receiver, running_receiver
from tests.approvals.conftest import Launch
from tests.approvals.harness import (
    SECRET,
    Live,
    action_status,
    assert_problem,
    proposal,
    propose,
    verified_ledger,
    wait_for,
)
from tests.conftest import Database
from tests.execution.test_callback_notify_plugins import slack_hook


def booking() -> dict[str, Any]:
    """A booking that booking-agent gets executed at once (level 3, confident)."""
    return proposal("parking", "booking.create", confidence=0.95, resource="booking/77")


def open_exceptions(client: httpx.Client) -> list[dict[str, Any]]:
    got = client.get("/v1/exceptions", params={"status": "open"})
    assert got.status_code == 200, got.text
    items = got.json()
    assert isinstance(items, list)
    return items


def exception_of(client: httpx.Client, action_id: str) -> dict[str, Any]:
    """The open exception about the action, once it is there."""
    wait_for(
        lambda: any(item["action_id"] == action_id for item in open_exceptions(client)),
        what=f"an exception about {action_id}",
    )
    (item,) = [item for item in open_exceptions(client) if item["action_id"] == action_id]
    return item


def decide(
    client: httpx.Client, exception_id: str, decision: str, note: str = ""
) -> httpx.Response:
    return client.post(
        f"/v1/exceptions/{exception_id}/decisions", json={"decision": decision, "note": note}
    )


def figures(client: httpx.Client, workflow: str, case_type: str) -> dict[str, int]:
    got = client.get(f"/v1/autonomy/{workflow}/{case_type}")
    assert got.status_code == 200, got.text
    found = got.json()["figures"]
    assert isinstance(found, dict)
    return found


def test_a_webhook_that_keeps_failing_is_handed_to_people_and_their_retry_carries_it_out(
    database: Database, launch: Launch, tmp_path: Path
) -> None:
    receiver = Receiver(SECRET.encode(), fail_rate=1.0)
    with running_receiver(receiver) as url:
        live = launch(database, webhooks={"parking": url}, dispatch_attempts=2)
        agent = live.as_role("booking-agent")
        approver = live.as_role("approver")
        action_id = propose(agent, booking(), "execute")["action_id"]

        item = exception_of(approver, action_id)
        assert action_status(agent, action_id) == "failed"
        assert (item["cause"], item["adapter"], item["retry_offered"]) == (
            "dispatch_failed",
            "webhook",
            True,
        )
        assert [a["attempt"] for a in item["attempts"]] == [1, 2]
        assert all("HTTP 503" in a["error"] for a in item["attempts"]), item["attempts"]
        before = figures(approver, "parking", "booking.create")
        assert (before["exceptions"], before["exceptions_handled"]) == (1, 0)

        # The executor that proposed it neither sees nor chooses (its role may not call).
        assert_problem(decide(agent, item["id"], "retry"), 403)
        receiver.fail_rate = 0.0  # the receiver is fixed
        retried = decide(approver, item["id"], "retry", "receiver redeployed")
        assert retried.status_code == 200, retried.text
        assert retried.json()["status"] == "retried"
        wait_for(lambda: action_status(agent, action_id) == "succeeded", what="the retry")
        second = assert_problem(decide(approver, item["id"], "handled", "done"), 409)
        assert "retried" in second["detail"]

    assert receiver.done.keys() == {action_id}
    assert open_exceptions(approver) == []
    after = figures(approver, "parking", "booking.create")
    assert (after["exceptions"], after["exceptions_handled"]) == (1, 1)
    assert after["failures"] == 1  # the failure happened, and needed people

    ledger = verified_ledger(live.url, live.settings, tmp_path)
    events = [e["body"]["event"] for e in ledger.of("exception", action_id)]
    assert events == ["opened", "retry"]
    opened, retry = ledger.of("exception", action_id)
    assert opened["actor"] == "mandate"
    assert [a["attempt"] for a in opened["body"]["attempts"]] == [1, 2]
    assert retry["body"]["note"] == "receiver redeployed"
    assert [e["body"]["status"] for e in ledger.of("outcome", action_id)] == [
        "failed",
        "succeeded",
    ]


def callback_failure(live: Live) -> tuple[httpx.Client, str]:
    """An action carried out by its executor (no webhook), reported failed; (agent, id)."""
    agent = live.as_role("booking-agent", owner="ops-bookings")
    action_id = propose(agent, booking(), "execute")["action_id"]
    reported = agent.post(
        f"/v1/actions/{action_id}/outcome",
        json={"status": "failed", "details": {"detail": "the garage system was down"}},
    )
    assert reported.status_code == 200, reported.text
    return agent, action_id


def test_an_outcome_reported_failed_is_marked_handled_with_a_note_once(
    database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(database)
    agent, action_id = callback_failure(live)
    governor = live.as_role("governor")
    item = exception_of(governor, action_id)
    assert (item["cause"], item["adapter"], item["retry_offered"]) == (
        "outcome_failed",
        "callback",
        False,
    )
    assert item["attempts"] == [{"attempt": None, "error": "the garage system was down"}]

    # A callback action is its executor's to carry out: the gateway does not retry it.
    refused = assert_problem(decide(governor, item["id"], "retry"), 409)
    assert "cannot retry" in refused["detail"]
    # Hostile input is a 422 naming the field, never a 500.
    wrong = assert_problem(decide(governor, item["id"], "approve"), 422)
    assert "decision" in str(wrong["errors"])
    extra = governor.post(
        f"/v1/exceptions/{item['id']}/decisions",
        json={"decision": "handled", "note": "x", "by": "someone else"},
    )
    assert "by" in str(assert_problem(extra, 422)["errors"])
    assert_problem(governor.get("/v1/exceptions", params={"status": "closed"}), 422)
    assert_problem(governor.get("/v1/exceptions/exc_nothing"), 404)
    # Handled needs a note, named as the field.
    missing = assert_problem(decide(governor, item["id"], "handled", "  "), 422)
    assert "note" in str(missing["errors"])
    # The proposing executor may not close it: its role may not call.
    assert_problem(decide(agent, item["id"], "handled", "all good"), 403)
    # A person of the proposer's own owner may not close it (separation of duties).
    colleague = live.as_role("governor", owner="ops-bookings")
    own = assert_problem(decide(colleague, item["id"], "handled", "fine"), 403)
    assert "separation of duties" in own["detail"]
    # An approver bound to another workflow may not see it.
    claims_only = live.as_role("approver", workflow="claims")
    assert_problem(claims_only.get(f"/v1/exceptions/{item['id']}"), 403)

    handled = decide(governor, item["id"], "handled", "booked by phone with the garage")
    assert handled.status_code == 200, handled.text
    assert handled.json()["status"] == "handled"
    assert handled.json()["note"] == "booked by phone with the garage"
    again = assert_problem(decide(governor, item["id"], "handled", "twice"), 409)
    assert "handled" in again["detail"]
    assert open_exceptions(governor) == []
    shown = figures(governor, "parking", "booking.create")
    assert (shown["exceptions"], shown["exceptions_handled"]) == (1, 1)

    ledger = verified_ledger(live.url, live.settings, tmp_path)
    opened, closed = ledger.of("exception", action_id)
    assert (opened["body"]["event"], opened["body"]["cause"]) == ("opened", "outcome_failed")
    assert (closed["body"]["event"], closed["actor"]) == ("handled", handled.json()["closed_by"])
    assert closed["body"]["note"] == "booked by phone with the garage"


def test_people_are_told_of_each_exception_through_the_notify_hook(
    sqlite_database: Database, launch: Launch
) -> None:
    receiver = Receiver(SECRET.encode(), fail_rate=1.0)
    with slack_hook() as (hook, posted), running_receiver(receiver) as url:
        live = launch(
            sqlite_database, notify_url=hook, webhooks={"hooked-bot": url}, dispatch_attempts=2
        )
        # One action through the (failing) webhook, one reported failed by its executor.
        token, _ = live.runtime.tokens.create(name="hooked-bot", role="booking-agent")
        dispatched = propose(live.client(token), booking(), "execute")["action_id"]
        _, reported = callback_failure(live)
        wait_for(lambda: len(posted) >= 2, what="two notifications")
    governor = live.as_role("governor")
    for action_id, error in ((dispatched, "attempt 2: HTTP 503"), (reported, "garage system")):
        item = exception_of(governor, action_id)
        (text,) = [m["text"] for m in posted if f"/ui/exceptions/{item['id']}>" in m["text"]]
        assert "Execution failed, handed to people: booking.create" in text
        assert error in text, text


def test_two_people_choosing_at_once_make_one_choice(
    database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(database)
    _, action_id = callback_failure(live)
    first, second = live.as_role("governor"), live.as_role("approver", workflow="parking")
    item = exception_of(first, action_id)
    with ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(
                lambda who: decide(who[0], item["id"], "handled", who[1]),
                [(first, "called the garage"), (second, "refunded the customer")],
            )
        )
    assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
    (won,) = [a.json() for a in answers if a.status_code == 200]
    ledger = verified_ledger(live.url, live.settings, tmp_path)
    closed = [e for e in ledger.of("exception", action_id) if e["body"]["event"] != "opened"]
    assert [(e["actor"], e["body"]["note"]) for e in closed] == [(won["closed_by"], won["note"])]
