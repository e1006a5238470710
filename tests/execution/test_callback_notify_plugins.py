"""The callback route (the executor reports what it did), the notify adapter (approvers learn of
a hold through a Slack-compatible hook), and adapters found through their entry-point group."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from adapters.base import ENTRY_POINT_GROUP, Adapter, Dispatch, Notifier, load_factories
from gateway.server.serving import free_port
from tests.approvals.conftest import Launch
from tests.approvals.harness import (
    action_status,
    assert_problem,
    held_refund,
    proposal,
    propose,
    verified_ledger,
    vote,
    wait_for,
)
from tests.conftest import Database


def booking() -> dict[str, Any]:
    return proposal("parking", "booking.create", confidence=0.95)


def report(client: Any, action_id: str, status: str, **details: Any) -> Any:
    return client.post(
        f"/v1/actions/{action_id}/outcome", json={"status": status, "details": details}
    )


def test_the_executor_reports_the_outcome_of_an_action_it_carries_out_itself(
    database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(database)  # no webhook configured: the callback adapter
    executor = live.as_role("booking-agent")
    action_id = propose(executor, booking(), "execute")["action_id"]

    stranger = live.as_role("booking-agent")
    assert_problem(report(stranger, action_id, "succeeded"), 403)
    assert_problem(report(live.as_role("approver", workflow="parking"), action_id, "failed"), 403)
    assert_problem(report(executor, "act_000000000000000000000000", "succeeded"), 404)
    assert_problem(report(executor, action_id, "done"), 422)

    done = report(executor, action_id, "succeeded", booking="B-1042")
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "succeeded"
    assert [step["kind"] for step in done.json()["timeline"]].count("outcome") == 1
    again = assert_problem(report(executor, action_id, "failed", why="changed my mind"), 409)
    assert "not waiting for an outcome" in again["detail"]
    assert action_status(executor, action_id) == "succeeded"

    ledger = verified_ledger(live.url, live.settings, tmp_path)
    (outcome,) = ledger.of("outcome", action_id)
    assert outcome["actor"] == done.json()["executor"]
    assert outcome["body"]["status"] == "succeeded"
    assert outcome["body"]["detail"] == {"booking": "B-1042"}
    assert len(ledger.of("execution", action_id)) <= 1  # the callback adapter's one dispatch
    assert set(ledger.about(action_id)) <= {"proposal", "decision", "execution", "outcome"}


def test_an_outcome_is_refused_for_actions_that_were_not_allowed_to_run(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(sqlite_database)
    payments = live.as_role("payments-agent")
    held = held_refund(payments)["action_id"]
    refused = propose(payments, proposal("parking", "refund.issue", amount="5000"), "reject")[
        "action_id"
    ]
    for action_id in (held, refused):
        problem = assert_problem(report(payments, action_id, "succeeded"), 409)
        assert "not waiting for an outcome" in problem["detail"]
    ledger = verified_ledger(live.url, live.settings, tmp_path)
    assert ledger.of("outcome") == []


def test_an_approved_hold_is_carried_out_by_its_executor_and_reported(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    live = launch(sqlite_database)
    payments = live.as_role("payments-agent")
    answer = held_refund(payments)
    approver = live.as_role("approver", workflow="parking")
    assert vote(approver, answer["approval"]["id"], "approve").json()["status"] == "approved"
    failed = report(payments, answer["action_id"], "failed", error="card expired")
    assert failed.status_code == 200, failed.text
    assert action_status(payments, answer["action_id"]) == "failed"
    ledger = verified_ledger(live.url, live.settings, tmp_path)
    (outcome,) = ledger.of("outcome", answer["action_id"])
    assert outcome["body"] == {
        "action_id": answer["action_id"],
        "status": "failed",
        "attempt": None,
        "detail": {"error": "card expired"},
    }


# -- notify ------------------------------------------------------------------------------------


@contextmanager
def slack_hook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback stand-in for a Slack incoming webhook: it keeps each JSON body posted."""
    posted: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            assert self.headers.get("Content-Type", "").startswith("application/json")
            posted.append(json.loads(body))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/services/T0/B0/x", posted
    finally:
        server.shutdown()
        server.server_close()


def test_a_hold_is_posted_to_the_notify_hook_as_a_slack_message(
    sqlite_database: Database, launch: Launch
) -> None:
    with slack_hook() as (url, posted):
        live = launch(sqlite_database, notify_url=url)
        propose(live.as_role("booking-agent"), booking(), "execute")
        answer = held_refund(live.as_role("payments-agent"), amount="42.50")
        wait_for(lambda: len(posted) >= 1, what="the notification")
    (message,) = posted  # the executed booking told nobody
    assert isinstance(message["text"], str)
    assert message["blocks"] == [
        {"type": "section", "text": {"type": "mrkdwn", "text": message["text"], "verbatim": True}}
    ]
    text = message["text"]
    for words in ("Held for approval: refund.issue", "parking", "42.50", "advisory_level"):
        assert words in text, text
    assert answer["approval"]["id"] in text  # so the approver can find it


def test_a_proposer_cannot_ping_a_channel_or_plant_a_link_in_a_notification(
    sqlite_database: Database, launch: Launch
) -> None:
    # Slack reads <!channel> as a mention of everyone, <url|words> as a link shown as words,
    # and a new line as a new line: a resource may carry all three.
    forged = "https://evil.example/ui/approvals/apr_0"
    resource = (
        f"lot-1 <!channel> <https://evil.example|Open approval apr_0> & more\n\u2022 url: {forged}"
    )
    with slack_hook() as (url, posted):
        live = launch(sqlite_database, notify_url=url)
        body = proposal("parking", "refund.issue", amount="20", resource=resource)
        answer = propose(live.as_role("payments-agent"), body, "hold")
        wait_for(lambda: len(posted) >= 1, what="the notification")
    (message,) = posted
    text = message["text"]
    assert "&lt;!channel&gt;" in text, text
    assert "<!channel>" not in text
    assert "<https://evil.example" not in text
    assert "&lt;https://evil.example|Open approval apr_0&gt; &amp; more" in text
    # The gateway's own link is the one link, on a line of its own; the forged line is not.
    (line,) = [line for line in text.splitlines() if line.startswith("\u2022 url:")]
    assert text.count("<") == 1, text
    settings = live.settings
    base = settings.public_url or f"http://{settings.host}:{settings.port}"
    assert line == f"\u2022 url: <{base}/ui/approvals/{answer['approval']['id']}>"
    # Slack links bare addresses and names in text it is left to parse: this text is verbatim.
    assert message["blocks"][0]["text"]["verbatim"] is True


def test_a_notify_hook_that_is_down_does_not_stop_the_hold(
    sqlite_database: Database, launch: Launch
) -> None:
    live = launch(sqlite_database, notify_url=f"http://127.0.0.1:{free_port()}/hook")
    answer = held_refund(live.as_role("payments-agent"))
    approver = live.as_role("approver", workflow="parking")
    assert vote(approver, answer["approval"]["id"], "approve").json()["status"] == "approved"


# -- plug-ins ----------------------------------------------------------------------------------


def test_the_adapters_are_found_through_their_entry_point_group() -> None:
    factories = load_factories()
    assert ENTRY_POINT_GROUP == "mandate.adapters"
    assert {"webhook", "callback", "notify"} <= set(factories)
    webhook = factories["webhook"]({"secret": "s", "timeout": 1})
    callback = factories["callback"]({})
    notify = factories["notify"]({"url": "http://127.0.0.1:9/hook"})
    assert isinstance(webhook, Adapter)
    assert webhook.name == "webhook"
    assert isinstance(callback, Adapter)
    assert callback.name == "callback"
    assert isinstance(notify, Notifier)
    assert notify.name == "notify"
    # A webhook with no URL configured fails at once rather than retrying forever.
    result = asyncio.run(webhook.dispatch(Dispatch("act_1", 1, None, {})))
    assert result.status == "failed"
