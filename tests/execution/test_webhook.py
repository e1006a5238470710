"""The webhook adapter end to end: a gateway on loopback delivers executed actions to the example
receiver, signed, with the action id as Idempotency-Key; retries with backoff; records every
attempt, retry and outcome in the ledger; never claims success it did not get."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from adapters.base import Dispatch, DispatchResult, close_adapters
from adapters.examples.receiver import Receiver, running_receiver
from adapters.webhook import WebhookAdapter
from gateway.server.serving import free_port
from tests.approvals.conftest import Hook, Launch
from tests.approvals.harness import (
    SECRET,
    Ledger,
    action_status,
    proposal,
    propose,
    verified_ledger,
    wait_for,
)
from tests.conftest import Database
from tests.scrape import scrape, total


def booking() -> dict[str, Any]:
    """A booking that booking-agent gets executed at once (level 3, confident)."""
    return proposal("parking", "booking.create", confidence=0.95, resource="booking/77")


def when(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp)


def settled(client: Any, action_id: str) -> str:
    """Wait until the action's outcome is recorded; return it."""
    wait_for(lambda: action_status(client, action_id) in ("succeeded", "failed"), what="an outcome")
    return action_status(client, action_id)


def attempts(ledger: Ledger, action_id: str) -> list[tuple[str, int]]:
    """(result, attempt) of each execution entry, then ("outcome:<status>", attempt)."""
    steps = [(e["body"]["result"], e["body"]["attempt"]) for e in ledger.of("execution", action_id)]
    steps += [
        (f"outcome:{e['body']['status']}", e["body"]["attempt"])
        for e in ledger.of("outcome", action_id)
    ]
    return steps


class FailsFirst(Receiver):
    """The example receiver behind a proxy that answers 503 to the first ``failures`` calls."""

    def __init__(self, failures: int) -> None:
        super().__init__(SECRET.encode())
        self.failures = failures

    def handle(self, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        with self.lock:
            if self.failures > 0:
                self.failures -= 1
                return 503, "busy"
        return super().handle(headers, body)


def test_an_executed_action_is_delivered_signed_once_with_its_id_as_idempotency_key(
    database: Database, launch: Launch, hook: Hook, tmp_path: Path
) -> None:
    live = launch(database, webhooks={"parking": hook.url})
    token, executor = live.runtime.tokens.create(name="booking-bot", role="booking-agent")
    agent = live.client(token)
    answer = propose(agent, booking(), "execute")
    action_id = answer["action_id"]

    assert settled(agent, action_id) == "succeeded"
    # The receiver verified the signature with the shared secret, and keyed the call by id.
    assert hook.receiver.refused == []
    assert hook.delivered() == {action_id}
    assert hook.receiver.calls[action_id] == 1
    assert hook.receiver.done[action_id] == {
        "action_id": action_id,
        "proposal_seq": answer["ledger"]["proposal_seq"],
        "decision_seq": answer["ledger"]["decision_seq"],
        "executor": executor.name,
        "workflow": "parking",
        "action_type": "booking.create",
        "case_type": "booking.create",
        "resource": "booking/77",
        "params": {},
    }

    ledger = verified_ledger(live.url, live.settings, tmp_path)
    assert ledger.about(action_id) == ["proposal", "decision", "execution", "outcome"]
    (execution,) = ledger.of("execution", action_id)
    assert execution["body"]["adapter"] == "webhook"
    assert execution["body"]["target"] == hook.url
    (outcome,) = ledger.of("outcome", action_id)
    assert outcome["body"]["status"] == "succeeded"
    assert outcome["body"]["detail"]["http_status"] == 200


def test_the_executors_own_webhook_wins_over_its_workflows(
    sqlite_database: Database, launch: Launch, hook: Hook
) -> None:
    elsewhere = Receiver(SECRET.encode())
    with running_receiver(elsewhere) as other_url:
        live = launch(sqlite_database, webhooks={"parking": other_url, "booking-bot": hook.url})
        mine, _ = live.runtime.tokens.create(name="booking-bot", role="booking-agent")
        theirs, _ = live.runtime.tokens.create(name="other-bot", role="booking-agent")
        own = propose(live.client(mine), booking(), "execute")["action_id"]
        workflows = propose(live.client(theirs), booking(), "execute")["action_id"]
        wait_for(lambda: hook.delivered() == {own}, what="the executor's webhook")
        wait_for(lambda: set(elsewhere.done) == {workflows}, what="the workflow's webhook")


def test_503s_are_retried_with_backoff_and_each_attempt_is_recorded(
    database: Database, launch: Launch, tmp_path: Path
) -> None:
    backoff = 0.05
    receiver = FailsFirst(3)
    with running_receiver(receiver) as url:
        live = launch(
            database, webhooks={"parking": url}, dispatch_backoff=backoff, dispatch_attempts=6
        )
        agent = live.as_role("booking-agent")
        action_id = propose(agent, booking(), "execute")["action_id"]
        assert settled(agent, action_id) == "succeeded"
    assert set(receiver.done) == {action_id}
    assert receiver.calls[action_id] == 1  # the three 503s came before the receiver proper
    samples = scrape(agent)
    create = {"workflow": "parking", "case_type": "booking.create"}
    assert total(samples, "mandate_dispatch_retries_total", **create) == 3
    assert total(samples, "mandate_dispatch_queue", **create) == 0
    assert total(samples, "mandate_outcomes_total", status="succeeded", **create) == 1

    ledger = verified_ledger(live.url, live.settings, tmp_path)
    assert attempts(ledger, action_id) == [
        ("dispatching", 1),
        ("retry", 1),
        ("dispatching", 2),
        ("retry", 2),
        ("dispatching", 3),
        ("retry", 3),
        ("dispatching", 4),
        ("outcome:succeeded", 4),
    ]
    executions = ledger.of("execution", action_id)
    for attempt in (1, 2, 3):
        started, retry, next_start = executions[2 * attempt - 2 : 2 * attempt + 1]
        assert retry["body"]["error"] == "HTTP 503"
        retry_at = when(retry["body"]["next_attempt_at"])
        # Exponential backoff with ±50 % jitter, read from what the ledger recorded: the
        # retry was scheduled at least half the base delay after its attempt began, at most
        # one and a half after it was recorded, and was not made before its time.
        base = backoff * 2 ** (attempt - 1)
        assert retry_at - when(started["time"]) >= dt.timedelta(seconds=0.5 * base)
        assert retry_at - when(retry["time"]) <= dt.timedelta(seconds=1.5 * base)
        assert when(next_start["time"]) >= retry_at


@pytest.mark.parametrize("down", [False, True], ids=["always-503", "connection-refused"])
def test_a_receiver_that_never_succeeds_gives_a_failed_outcome_after_the_last_attempt(
    down: bool, sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    receiver = Receiver(SECRET.encode(), fail_rate=1.0)
    with running_receiver(receiver) as url:
        target = f"http://127.0.0.1:{free_port()}/hook" if down else url
        live = launch(sqlite_database, webhooks={"parking": target}, dispatch_attempts=3)
        agent = live.as_role("booking-agent")
        action_id = propose(agent, booking(), "execute")["action_id"]
        # The executor cannot claim success for what its webhook is being asked to do.
        claim = agent.post(f"/v1/actions/{action_id}/outcome", json={"status": "succeeded"})
        assert claim.status_code == 409, claim.text
        assert settled(agent, action_id) == "failed"
    assert receiver.done == {}
    assert receiver.calls[action_id] == (0 if down else 3)

    ledger = verified_ledger(live.url, live.settings, tmp_path)
    assert attempts(ledger, action_id) == [
        ("dispatching", 1),
        ("retry", 1),
        ("dispatching", 2),
        ("retry", 2),
        ("dispatching", 3),
        ("outcome:failed", 3),
    ]
    (outcome,) = ledger.of("outcome", action_id)
    assert outcome["body"]["detail"]["detail"].startswith("gave up after 3 attempts")


def test_a_4xx_fails_at_once_without_retries(
    database: Database, launch: Launch, hook: Hook, tmp_path: Path
) -> None:
    # The gateway signs with a secret the receiver does not share: 401, which retrying
    # cannot fix.
    live = launch(database, webhooks={"parking": hook.url}, webhook_secret="not-the-secret")
    agent = live.as_role("booking-agent")
    action_id = propose(agent, booking(), "execute")["action_id"]
    assert settled(agent, action_id) == "failed"
    assert hook.receiver.refused == [action_id]
    assert hook.delivered() == set()

    ledger = verified_ledger(live.url, live.settings, tmp_path)
    assert attempts(ledger, action_id) == [("dispatching", 1), ("outcome:failed", 1)]
    assert ledger.of("outcome", action_id)[0]["body"]["detail"]["http_status"] == 401


def test_a_retry_that_overtakes_a_slow_call_does_not_carry_the_action_out_twice(
    sqlite_database: Database, launch: Launch, tmp_path: Path
) -> None:
    # The receiver takes far longer than the gateway waits: the gateway times out and calls
    # again while the first call is still being carried out (a short lease makes the
    # dispatcher look for due retries often).
    receiver = Receiver(SECRET.encode(), delay=2.0)
    with running_receiver(receiver) as url:
        live = launch(
            sqlite_database,
            webhooks={"parking": url},
            dispatch_timeout=0.2,
            dispatch_backoff=0.1,
            dispatch_lease=0.8,
            dispatch_attempts=30,
        )
        agent = live.as_role("booking-agent")
        action_id = propose(agent, booking(), "execute")["action_id"]
        assert settled(agent, action_id) == "succeeded"
    assert set(receiver.done) == {action_id}
    assert receiver.calls[action_id] >= 2

    ledger = verified_ledger(live.url, live.settings, tmp_path)
    errors = [e["body"]["error"] for e in ledger.of("execution", action_id) if "error" in e["body"]]
    assert errors[0].startswith("ReadTimeout")
    assert "HTTP 409" in errors  # "in progress": retried, not taken for a failure
    assert len(ledger.of("outcome", action_id)) == 1


# -- connections -------------------------------------------------------------------------------


@dataclass
class KeptAlive:
    """A receiver that keeps each connection open for the next call (HTTP/1.1), as most do,
    and counts the connections open now."""

    url: str = ""
    calls: int = 0
    open: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def kept_alive() -> Iterator[KeptAlive]:
    seen = KeptAlive()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            with seen.lock:
                seen.open += 1

        def finish(self) -> None:  # the caller closed the connection
            with seen.lock:
                seen.open -= 1
            super().finish()

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with seen.lock:
                seen.calls += 1
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    seen.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield seen
    finally:
        server.shutdown()
        server.server_close()


def open_connections(seen: KeptAlive) -> int:
    with seen.lock:
        return seen.open


def test_a_gateway_that_stops_hangs_up_on_the_receiver_itself(
    sqlite_database: Database, launch: Launch
) -> None:
    with kept_alive() as hook:
        live = launch(sqlite_database, webhooks={"parking": hook.url})
        agent = live.as_role("booking-agent")
        action_id = propose(agent, booking(), "execute")["action_id"]
        assert settled(agent, action_id) == "succeeded"
        assert open_connections(hook) == 1  # kept for the next delivery while it runs
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            live.stop()
        wait_for(lambda: open_connections(hook) == 0, what="the gateway to hang up")
    assert hook.calls == 1
    # Closed as the gateway stopped, not left for its event loop's end to tear down.
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_the_webhook_adapter_closes_its_connections() -> None:
    async def deliver_then_close(url: str) -> list[str]:
        adapter = WebhookAdapter(SECRET.encode())
        await adapter.close()  # nothing opened yet: nothing to do
        first = await adapter.dispatch(Dispatch("act_1", 1, url, {"n": 1}))
        await adapter.close()
        return [first.status]

    with kept_alive() as hook:
        assert asyncio.run(deliver_then_close(hook.url)) == ["succeeded"]
        wait_for(lambda: open_connections(hook) == 0, what="the adapter to hang up")
    assert hook.calls == 1


def test_an_adapter_that_fails_to_close_does_not_keep_the_others_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Stuck:
        """A plug-in whose close fails."""

        name = "stuck"

        async def dispatch(self, dispatch: Dispatch) -> DispatchResult:
            return DispatchResult("retry")

        async def close(self) -> None:
            raise OSError("the socket is gone")

    async def deliver_then_close(url: str) -> str:
        webhook = WebhookAdapter(SECRET.encode())
        result = await webhook.dispatch(Dispatch("act_1", 1, url, {"n": 1}))
        await close_adapters([Stuck(), webhook, None])  # None: no notifier configured
        return result.status

    with kept_alive() as hook, caplog.at_level(logging.WARNING, logger="mandate.dispatch"):
        assert asyncio.run(deliver_then_close(hook.url)) == "succeeded"
        wait_for(lambda: open_connections(hook) == 0, what="the webhook adapter to hang up")
    assert "the stuck adapter did not close: OSError('the socket is gone')" in caplog.text
