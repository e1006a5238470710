"""The autonomy page in Chromium: every case type with its level, figures and a chart drawn on
the server (SVG, no script), pending promotions that governors approve from the page, levels set
by hand with a reason; others see the page without the forms; CSRF holds. What the page does
lands in the ledger as the API would have written it."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest

from gateway.server.serving import serve_in_background
from gateway.settings import Settings
from tests.ui.conftest import POLICIES, Clock, Gateway

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
expect = sync_api.expect

_readers = itertools.count()
EASY = {
    "min_reviewed": 1,
    "min_agreement_bp": 9000,
    "max_failure_bp": 10_000,
    "max_error_bp": 10_000,
}


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    """The default bundle, but a refund that one person approved earns a promotion."""
    policies = tmp_path / "bundle"
    shutil.copytree(POLICIES, policies)
    data = orjson.loads((policies / "data.json").read_bytes())
    data["workflows"]["parking"]["case_types"]["refund.issue"]["autonomy"] = {
        "promotion": {"criteria": {"2": EASY}}
    }
    (policies / "data.json").write_bytes(orjson.dumps(data))
    clock = Clock()
    settings = Settings(data_dir=tmp_path / "data", policies=policies)
    with serve_in_background(settings, clock=clock) as served:
        yield Gateway(served.url, served.runtime, clock)


def sign_in(page: Page, gateway: Gateway, token: str) -> None:
    page.goto(gateway.url + "/ui/autonomy")
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    assert page.url == gateway.url + "/ui/autonomy"


def submit(page: Page, button: str, within: Any) -> Any:
    with page.expect_navigation() as navigation:
        within.get_by_role("button", name=button, exact=True).click()
    return navigation.value


def earn_promotion(gateway: Gateway) -> str:
    """One refund, held at level 1 and approved: the criteria are met; a promotion waits."""
    agent = gateway.token("pay-bot", "payments-agent")
    approval_id = gateway.hold_refund(agent)
    approver = gateway.token("alice", "approver", workflow="parking")
    with gateway.api(approver) as client:
        voted = client.post(f"/v1/approvals/{approval_id}/decisions", json={"decision": "approve"})
        assert voted.json()["status"] == "approved", voted.text
        (promotion,) = client.get("/v1/autonomy/promotions").json()
    assert isinstance(promotion["id"], str)
    return promotion["id"]


def autonomy_entries(gateway: Gateway) -> list[dict[str, Any]]:
    token = gateway.token(f"reader-{next(_readers)}", "auditor")
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {token}"}) as c:
        entries = c.get("/v1/ledger/entries", params={"limit": 1000}).json()
    return [e["entry"] for e in entries if e["entry"]["kind"] == "autonomy"]


def test_a_governor_sees_every_case_type_and_approves_a_promotion(
    gateway: Gateway, page: Page
) -> None:
    promotion_id = earn_promotion(gateway)
    sign_in(page, gateway, gateway.token("gina", "governor"))
    expect(page.get_by_role("heading", name="Autonomy")).to_be_visible()
    expect(page.get_by_role("link", name="Autonomy")).to_have_attribute("aria-current", "page")
    for workflow in ("parking", "claims", "files"):
        expect(page.get_by_role("heading", name=workflow, exact=True)).to_be_visible()
    cases = page.locator("section.case")
    expect(cases).to_have_count(9)  # every case type of the default bundle

    refund = page.locator('[data-case="parking/refund.issue"]')
    expect(refund.locator(".level")).to_have_text("Level 1 · advisory")
    expect(refund.get_by_role("row", name="Decisions")).to_contain_text("Reviewed1")
    expect(refund.locator(".agree-text")).to_have_text("100.00 %")
    chart = refund.get_by_role("img", name="Agreement and error rate per day, parking refund.issue")
    expect(chart).to_be_visible()
    expect(chart.locator("circle.dot.agree")).to_have_count(1)
    expect(page.locator('[data-case="claims/claim.approve"] .level')).to_have_text(
        "Level 3 · conditional"
    )
    expect(refund.locator(".promotion")).to_contain_text("Promotion to level 2 (supervised)")
    page.screenshot(path="/tmp/ui-autonomy.png", full_page=True)

    response = submit(page, "Approve promotion", refund)
    assert response.status == 200
    expect(page.get_by_role("status")).to_have_text(
        "Promoted: parking refund.issue is at level 2 now."
    )
    refund = page.locator('[data-case="parking/refund.issue"]')
    expect(refund.locator(".level")).to_have_text("Level 2 · supervised")
    expect(refund.locator(".promotion")).to_have_count(0)
    expect(refund.locator(".changes")).to_contain_text("promotion 1 → 2")
    expect(refund.locator("line.mark")).to_have_count(1)  # the change, on the chart

    events = [e["body"]["event"] for e in autonomy_entries(gateway)]
    assert events == ["promotion_proposed", "promotion"]
    assert autonomy_entries(gateway)[1]["body"]["promotion_id"] == promotion_id


def test_a_governor_sets_a_level_by_hand_with_a_reason(gateway: Gateway, page: Page) -> None:
    sign_in(page, gateway, gateway.token("gina", "governor"))
    case = page.locator('[data-case="parking/booking.cancel"]')
    case.get_by_text("Set the level by hand").click()
    case.get_by_label("Level").select_option("1")
    case.get_by_label("Reason").fill("new cancellation rules this week")
    submit(page, "Set level", case)
    expect(page.get_by_role("status")).to_have_text(
        "parking booking.cancel is at level 1 (advisory) now."
    )
    case = page.locator('[data-case="parking/booking.cancel"]')
    expect(case.locator(".level")).to_have_text("Level 1 · advisory")
    expect(case.locator(".source")).to_contain_text("set at ledger #")
    (entry,) = autonomy_entries(gateway)
    assert entry["body"]["reason"] == "new cancellation rules this week"
    assert entry["body"]["actor"]["name"] == "gina"

    # The same level again is refused with the domain's 409, on the page.
    case.get_by_text("Set the level by hand").click()
    case.get_by_label("Reason").fill("again")
    assert submit(page, "Set level", case).status == 409
    expect(page.get_by_role("alert")).to_contain_text("is at level 1 already")


def test_others_see_the_page_without_the_forms_and_csrf_holds(gateway: Gateway, page: Page) -> None:
    promotion_id = earn_promotion(gateway)
    sign_in(page, gateway, gateway.token("ann", "approver"))
    refund = page.locator('[data-case="parking/refund.issue"]')
    expect(refund.locator(".promotion")).to_contain_text("Governors decide promotions.")
    expect(refund.get_by_role("button", name="Approve promotion")).to_have_count(0)
    expect(page.get_by_text("Set the level by hand")).to_have_count(0)

    # A forged form (no CSRF nonce) is refused, whoever sends it.
    response = page.request.post(
        f"{gateway.url}/ui/autonomy/promotions/{promotion_id}",
        form={"decision": "approve", "reason": ""},
    )
    assert response.status == 403
    # And a vote without the right to govern is the domain's 403, shown as a page.
    page.goto(gateway.url + "/ui/autonomy")
    csrf = page.locator('input[name="csrf"]').first.get_attribute("value")
    assert csrf
    response = page.request.post(
        f"{gateway.url}/ui/autonomy/promotions/{promotion_id}",
        form={"decision": "approve", "reason": "", "csrf": csrf},
    )
    assert response.status == 403
    assert "may not govern" in response.text()
    assert [e["body"]["event"] for e in autonomy_entries(gateway)] == ["promotion_proposed"]
