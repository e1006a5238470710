"""The audit queue in Chromium: an auditor sees the executed actions drawn for audit and records
findings from the page; an incorrect finding needs a note, the proposer's owner may not audit,
others get the 403 page and no link to it, and CSRF holds. What the page records lands in the
ledger as the API would have written it."""

from __future__ import annotations

import itertools
import re
from typing import TYPE_CHECKING, Any

import pytest

from tests.ui.conftest import Gateway

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
expect = sync_api.expect

_readers = itertools.count()


@pytest.fixture
def gateway(audited_gateway: Gateway) -> Gateway:
    """Every action executed at level 2 is drawn for audit (``audited_gateway``)."""
    return audited_gateway


def sign_in(page: Page, gateway: Gateway, token: str, path: str = "/ui/audits") -> None:
    page.goto(gateway.url + path)
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    assert page.url == gateway.url + path


def submit(page: Page, button: str, within: Locator) -> Any:
    """Click a form's button; return the response the browser ends up showing."""
    with page.expect_navigation() as navigation:
        within.get_by_role("button", name=button, exact=True).click()
    return navigation.value


def cancel(gateway: Gateway, agent: str, resource: str) -> dict[str, Any]:
    """A booking cancellation: booking.cancel starts at level 2, so it executes and is drawn."""
    verdict = gateway.propose(
        agent, "parking", "booking.cancel", amount="35.00", confidence=0.95, resource=resource
    )
    assert verdict["verdict"] == "execute", verdict
    return verdict


def audit_entries(gateway: Gateway) -> list[dict[str, Any]]:
    token = gateway.token(f"reader-{next(_readers)}", "auditor")
    with gateway.api(token) as client:
        entries = client.get("/v1/ledger/entries", params={"limit": 1000}).json()
    return [e["entry"] for e in entries if e["entry"]["kind"] == "audit"]


def test_an_auditor_records_findings_and_an_incorrect_one_needs_a_note(
    gateway: Gateway, page: Page
) -> None:
    agent = gateway.token("cancel-bot", "booking-agent", owner="ops-team")
    first = cancel(gateway, agent, "booking/B-7")
    cancel(gateway, agent, "booking/B-8")
    sign_in(page, gateway, gateway.token("audrey", "auditor", workflow="parking"))
    expect(page.get_by_role("heading", name="Audits")).to_contain_text("2 pending")
    expect(page.get_by_role("link", name="Audits")).to_have_attribute("aria-current", "page")
    expect(page.get_by_role("link", name="Pending")).to_have_attribute("aria-current", "page")

    row = page.locator("tr", has_text="booking/B-7")
    expect(row).to_contain_text("booking.cancel on booking/B-7")
    expect(row).to_contain_text("cancel-bot")
    expect(row).to_contain_text("35.00")
    expect(row.locator(".level")).to_have_text("Level 2")
    expect(row).to_contain_text("rate 100.00 %")
    decision = row.get_by_title("The decision's ledger entry")
    expect(decision).to_have_text(f"#{first['ledger']['decision_seq']}")
    page.screenshot(path="/tmp/ui-audits.png", full_page=True)

    # Incorrect without a note: the domain's 422, shown next to the note; nothing recorded.
    note = row.get_by_label("Note")
    note.fill("   ")
    assert submit(page, "Incorrect", row).status == 422
    row = page.locator("tr", has_text="booking/B-7")
    note = row.get_by_label("Note")
    expect(row.get_by_role("alert")).to_have_text("a note is required for an incorrect finding")
    expect(note).to_have_attribute("aria-invalid", "true")
    expect(note).to_have_value("   ")
    expect(page.locator("tr", has_text="booking/B-8").get_by_role("alert")).to_have_count(0)
    page.screenshot(path="/tmp/ui-audits-note-refused.png", full_page=True)
    assert audit_entries(gateway) == []

    note.fill("cancelled the wrong booking")
    assert submit(page, "Incorrect", row).status == 200
    assert page.url == gateway.url + "/ui/audits"
    expect(page.get_by_role("status")).to_contain_text(
        "Finding recorded: booking.cancel on booking/B-7 was incorrect (ledger #"
    )
    expect(page.locator("tr", has_text="booking/B-7")).to_have_count(0)
    expect(page.get_by_role("heading", name="Audits")).to_contain_text("1 pending")

    page.get_by_role("link", name="Incorrect").click()
    row = page.locator("tr", has_text="booking/B-7")
    expect(row.locator(".badge")).to_have_text("incorrect")
    expect(row).to_contain_text("by audrey")
    expect(row).to_contain_text("cancelled the wrong booking")
    expect(row.get_by_role("button")).to_have_count(0)
    page.screenshot(path="/tmp/ui-audits-incorrect.png", full_page=True)

    (entry,) = audit_entries(gateway)
    assert entry["subject"] == first["action_id"]
    assert entry["body"]["finding"] == "incorrect"
    assert entry["body"]["note"] == "cancelled the wrong booking"
    assert entry["body"]["auditor"]["name"] == "audrey"
    expect(row).to_contain_text(f"ledger #{entry['seq']}")

    # Correct needs no note.
    page.get_by_role("link", name="Pending").click()
    row = page.locator("tr", has_text="booking/B-8")
    submit(page, "Correct", row)
    expect(page.get_by_role("status")).to_contain_text("booking/B-8 was correct")
    expect(page.locator(".empty")).to_contain_text("No pending audits in parking.")
    assert [e["body"]["finding"] for e in audit_entries(gateway)] == ["incorrect", "correct"]


def test_the_proposers_owner_may_not_audit_and_keeps_what_was_typed(
    gateway: Gateway, page: Page
) -> None:
    cancel(gateway, gateway.token("cancel-bot", "booking-agent", owner="ops-team"), "booking/B-9")
    sign_in(page, gateway, gateway.token("otto", "auditor", owner="ops-team"))
    row = page.locator("tr", has_text="booking/B-9")
    row.get_by_label("Note").fill("looks right to me")
    assert submit(page, "Correct", row).status == 403
    expect(page.get_by_role("alert")).to_contain_text(
        "separation of duties: nobody audits their own proposal"
    )
    row = page.locator("tr", has_text="booking/B-9")
    expect(row.get_by_label("Note")).to_have_value("looks right to me")
    expect(row.locator("textarea")).not_to_have_attribute("aria-invalid", "true")
    assert audit_entries(gateway) == []


def test_others_get_the_403_page_and_no_link(gateway: Gateway, page: Page) -> None:
    sign_in(page, gateway, gateway.token("alice", "approver"), path="/ui/")
    nav = page.get_by_role("navigation", name="Sections")
    expect(nav.get_by_role("link")).to_have_text(["Approvals", "Exceptions", "Autonomy", "Ledger"])
    response = page.goto(gateway.url + "/ui/audits")
    assert response is not None
    assert response.status == 403
    expect(page.get_by_role("heading", name="Forbidden")).to_be_visible()
    expect(page.locator(".problem-detail")).to_contain_text(
        "role 'approver' may not audit executed actions"
    )
    expect(page.locator(".problem-detail")).to_contain_text("it needs the role auditor")


def test_a_finding_without_the_sessions_csrf_value_is_refused(gateway: Gateway, page: Page) -> None:
    cancel(gateway, gateway.token("cancel-bot", "booking-agent", owner="ops-team"), "booking/B-3")
    sign_in(page, gateway, gateway.token("audrey", "auditor"))
    nav = page.get_by_role("navigation", name="Sections")
    expect(nav.get_by_role("link")).to_have_text(
        ["Approvals", "Exceptions", "Audits", "Autonomy", "Ledger", "Policies"]
    )
    form = page.locator("tr", has_text="booking/B-3").locator("form")
    action = form.get_attribute("action")
    assert action is not None
    assert action.startswith("/ui/audits/aud_")
    forged: list[dict[str, str | float | bool]] = [
        {"finding": "correct", "note": "fine"},
        {"finding": "correct", "note": "fine", "csrf": "not-the-sessions"},
    ]
    for body in forged:
        response = page.request.post(gateway.url + action, form=body)
        assert response.status == 403
        assert "CSRF token does not match your session" in response.text()
    assert audit_entries(gateway) == []
    page.reload()
    expect(page.get_by_role("heading", name="Audits")).to_contain_text("1 pending")


def test_an_audit_opens_on_its_action_with_proposal_trace_execution_and_outcome(
    gateway: Gateway, page: Page
) -> None:
    agent = gateway.token("cancel-bot", "booking-agent", owner="ops-team")
    executed = cancel(gateway, agent, "booking/B-9")
    action_id = executed["action_id"]
    with gateway.api(agent) as client:
        reported = client.post(
            f"/v1/actions/{action_id}/outcome",
            json={"status": "succeeded", "details": {"detail": "cancelled at the gate"}},
        )
    assert reported.status_code == 200, reported.text
    sign_in(page, gateway, gateway.token("audrey", "auditor", workflow="parking"))
    page.get_by_role("link", name="booking.cancel on booking/B-9").click()
    assert re.search(r"/ui/audits/[^/?]+$", page.url), page.url
    expect(page.locator("h1")).to_contain_text("booking.cancel on booking/B-9")
    expect(page.locator(".sub").first).to_contain_text(action_id)

    fields = page.locator("table.fields tbody tr")
    expect(fields.filter(has_text="resource")).to_contain_text("booking/B-9")
    expect(fields.filter(has_text="params.amount")).to_contain_text("35.00")
    trace = page.get_by_role("region", name=re.compile("Decision trace"))
    expect(trace).to_contain_text(gateway.runtime.in_force.policy.bundle.digest)
    expect(page.locator("tr.ev-execution")).to_have_count(1)
    expect(page.locator("tr.ev-outcome")).to_contain_text(
        "outcome: succeeded (cancelled at the gate)"
    )

    # the finding, recorded from this page, lands in the ledger as from the queue
    form = page.get_by_role("region", name="Finding")
    form.get_by_label("Note").fill("checked the booking")
    assert submit(page, "Correct", form).status == 200
    expect(page.get_by_role("status")).to_contain_text("was correct")
    (entry,) = audit_entries(gateway)
    assert entry["body"]["action_id"] == action_id
    assert entry["body"]["finding"] == "correct"
