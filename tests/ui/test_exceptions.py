"""Exceptions in Chromium: a webhook that keeps failing reaches the approver's inbox as an
exception with its attempts and errors, and a retry from the page carries it out once the
receiver is fixed; an outcome its executor reports failed is marked handled with a note (no
retry offered); the proposing executor gets the 403 page and no link. What the page records
lands in the ledger, and the export verifies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from adapters.examples.receiver import Receiver, running_receiver
from gateway.server.serving import serve_in_background
from gateway.settings import Settings
from tests.approvals.harness import SECRET, verified_ledger, wait_for
from tests.ui.conftest import POLICIES, Clock, Gateway

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
expect = sync_api.expect


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    """The example receiver, answering 503 to every call until a test fixes it."""
    made = Receiver(SECRET.encode(), fail_rate=1.0)
    with running_receiver(made) as url:
        yield made, url


def serve(tmp_path: Path, **settings: Any) -> Iterator[Gateway]:
    config = Settings(
        data_dir=tmp_path / "data",
        policies=POLICIES,
        webhook_secret=SECRET,
        dispatch_attempts=2,
        dispatch_backoff=0.05,
        **settings,
    )
    clock = Clock()
    with serve_in_background(config, clock=clock) as served:
        yield Gateway(served.url, served.runtime, clock)


@pytest.fixture
def hooked(tmp_path: Path, receiver: tuple[Receiver, str]) -> Iterator[Gateway]:
    """A gateway whose parking actions go to the (failing) receiver."""
    yield from serve(tmp_path, webhooks={"parking": receiver[1]})


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    """A gateway without webhooks: executors carry actions out and report (callback)."""
    yield from serve(tmp_path)


def sign_in(page: Page, gateway: Gateway, token: str, path: str = "/ui/") -> None:
    page.goto(gateway.url + path)
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    assert page.url == gateway.url + path


def booking(gateway: Gateway, agent: str) -> str:
    verdict = gateway.propose(
        agent, "parking", "booking.create", amount="12.00", confidence=0.95, resource="booking/9"
    )
    assert verdict["verdict"] == "execute", verdict
    action_id = verdict["action_id"]
    assert isinstance(action_id, str)
    return action_id


def status_of(gateway: Gateway, token: str, action_id: str) -> str:
    status = gateway.action(token, action_id)["status"]
    assert isinstance(status, str)
    return status


def test_a_failing_webhook_reaches_the_inbox_and_a_retry_from_the_page_carries_it_out(
    page: Page, hooked: Gateway, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    agent = hooked.token("booker", "booking-agent")
    approver = hooked.token("ana", "approver")
    action_id = booking(hooked, agent)
    wait_for(lambda: status_of(hooked, agent, action_id) == "failed", what="the failure")

    sign_in(page, hooked, approver)
    due = page.get_by_role("region", name="Exceptions")
    expect(due).to_contain_text("1 open")
    due.get_by_role("link", name="retry or mark handled").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Exceptions 1 open")
    page.get_by_role("link", name="booking.create").click()

    attempts = page.get_by_role("region", name="What was attempted")
    expect(attempts.get_by_role("listitem")).to_have_count(2)
    expect(attempts).to_contain_text("attempt 1")
    expect(attempts).to_contain_text("HTTP 503")
    expect(page.get_by_role("region", name="Proposal")).to_contain_text("booking/9")

    receiver[0].fail_rate = 0.0  # the receiver is fixed
    page.get_by_label("Note").fill("receiver redeployed")
    page.get_by_role("button", name="Retry", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("Retry recorded")
    wait_for(lambda: status_of(hooked, agent, action_id) == "succeeded", what="the retry")
    assert receiver[0].done.keys() == {action_id}

    page.reload()
    choice = page.get_by_role("region", name="What now")
    expect(choice).to_contain_text("retried")
    expect(choice).to_contain_text("receiver redeployed")
    expect(choice.get_by_role("button")).to_have_count(0)
    timeline = page.get_by_role("region", name="Timeline")
    expect(timeline).to_contain_text("outcome: succeeded")
    expect(timeline).to_contain_text("retried: receiver redeployed")

    page.goto(hooked.url + "/ui/")
    expect(page.get_by_role("region", name="Exceptions")).to_have_count(0)

    settings = hooked.runtime.settings
    ledger = verified_ledger(hooked.url, settings, tmp_path)
    assert [e["body"]["event"] for e in ledger.of("exception", action_id)] == ["opened", "retry"]


def test_a_reported_failure_is_marked_handled_with_a_note_and_only_once(
    page: Page, new_page: Any, gateway: Gateway, tmp_path: Path
) -> None:
    agent = gateway.token("booker", "booking-agent")
    governor = gateway.token("gus", "governor")
    action_id = booking(gateway, agent)
    with gateway.api(agent) as client:
        reported = client.post(
            f"/v1/actions/{action_id}/outcome",
            json={"status": "failed", "details": {"detail": "garage barrier jammed"}},
        )
    assert reported.status_code == 200, reported.text

    sign_in(page, gateway, governor, "/ui/exceptions")
    page.get_by_role("link", name="booking.create").click()
    late = new_page()
    sign_in(late, gateway, gateway.token("gil", "governor"), page.url.removeprefix(gateway.url))
    expect(page.get_by_role("region", name="What was attempted")).to_contain_text(
        "garage barrier jammed"
    )
    choice = page.get_by_role("region", name="What now")
    expect(choice.get_by_role("button", name="Retry")).to_have_count(0)
    expect(choice).to_contain_text("the gateway cannot carry it out again")

    # No note: the page says so at the field, and nothing is recorded.
    with page.expect_navigation() as navigation:
        choice.get_by_role("button", name="Mark handled").click()
    assert navigation.value.status == 422
    expect(page.get_by_label("Note")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#note-error")).to_contain_text("note")

    page.get_by_label("Note").fill("booked by phone")
    page.get_by_role("button", name="Mark handled").click()
    expect(page.get_by_role("status")).to_contain_text("Marked handled")
    expect(page.get_by_role("region", name="What now")).to_contain_text("booked by phone")

    # A second governor's page, opened before that choice, is refused with a 409.
    late.get_by_label("Note").fill("refunded instead")
    with late.expect_navigation() as navigation:
        late.get_by_role("button", name="Mark handled").click()
    assert navigation.value.status == 409
    expect(late.get_by_role("alert")).to_contain_text("handled already")

    # The case type's figures count the exception and the choice.
    page.goto(gateway.url + "/ui/autonomy")
    case = page.locator('[data-case="parking/booking.create"]')
    counts = case.get_by_role("row").filter(has_text="Exceptions").locator("td")
    expect(counts).to_have_text(["1", "1", "0"])

    ledger = verified_ledger(gateway.url, gateway.runtime.settings, tmp_path)
    kinds = [(e["body"]["event"], e["body"].get("note")) for e in ledger.of("exception", action_id)]
    assert kinds == [("opened", None), ("handled", "booked by phone")]


def test_the_proposing_executor_gets_no_link_and_the_403_page(page: Page, gateway: Gateway) -> None:
    agent = gateway.token("booker", "booking-agent")
    sign_in(page, gateway, agent)
    sections = page.get_by_role("navigation", name="Sections")
    expect(sections.get_by_role("link", name="Approvals")).to_be_visible()
    expect(sections.get_by_role("link", name="Exceptions")).to_have_count(0)
    response = page.goto(gateway.url + "/ui/exceptions")
    assert response is not None
    assert response.status == 403
    expect(page.get_by_role("main")).to_contain_text("approver")
