"""The inbox with more than a page of held actions, in Chromium: 50 a page with a pager, the
filter form with a count beside each choice, free-text search, sort by expiry, every view a
link that opens the same rows, and a wrong query string a 422 page naming the parameter. The
SQL behind it is tested on both databases in ``tests/approvals/test_inbox_page.py``."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

from tests.ui.conftest import Gateway
from tests.ui.test_inbox import sign_in, submit

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
expect = sync_api.expect

REFUNDS = 52


def test_pages_filters_counts_search_and_links(gateway: Gateway, page: Page) -> None:
    agent = gateway.token("payments-agent", "payments-agent")
    claims = gateway.token("claims-agent", "claims-agent")
    for n in range(REFUNDS):
        gateway.hold_refund(agent, "20.00", f"booking/B-{n}")
    for n in range(2):
        verdict = gateway.propose(
            claims, "claims", "claim.approve", amount="12000", confidence=0.85,
            resource=f"claim/C-{n}",
        )  # fmt: skip
        assert verdict["verdict"] == "hold"
    sign_in(page, gateway, gateway.token("alice", "approver"))

    rows = page.locator("table.inbox tbody tr")
    expect(page.get_by_role("heading", name=re.compile("Approvals"))).to_contain_text("54 pending")
    expect(rows).to_have_count(50)
    pager = page.get_by_role("navigation", name="Pages").first
    expect(pager).to_contain_text("Page 1 of 2")
    pager.get_by_role("link", name="Next").click()
    expect(rows).to_have_count(4)
    assert page.url.endswith("/ui/?page=2")
    expect(page.locator("tr", has_text="booking/B-0")).to_have_count(1)  # the oldest, last

    # the filter form: each choice with its count; the view lands in the query string
    workflow = page.get_by_label("Workflow")
    expect(workflow.locator("option")).to_have_text(["any", "parking (52)", "claims (2)"])
    workflow.select_option("claims")
    submit(page, "Apply")
    expect(rows).to_have_count(2)
    assert "workflow=claims" in page.url
    assert "page=" not in page.url
    expect(page.get_by_label("Workflow")).to_have_value("claims")
    expect(page.get_by_label("Reason").locator("option", has_text="high_value")).to_have_text(
        "high_value (2)"
    )

    # search, sorted by expiry: a link that opens the same rows in a fresh session
    page.goto(gateway.url + "/ui/")
    page.get_by_label("Search").fill("b-1")
    page.get_by_label("Sort").select_option("expiry")
    submit(page, "Apply")
    shown = rows.evaluate_all("rs => rs.map(r => r.dataset.approval)")
    resources = rows.locator("a.primary").all_inner_texts()
    expected = {f"booking/B-{n}" for n in range(REFUNDS) if str(n).startswith("1")}
    assert {r.split(" on ")[1] for r in resources} == expected
    expiries = rows.locator("td.left time").evaluate_all(
        "ts => ts.map(t => t.getAttribute('datetime'))"
    )
    assert expiries == sorted(expiries)
    link = page.url
    assert "q=b-1" in link
    assert "sort=expiry" in link
    other = page.context.browser
    assert other is not None
    fresh = other.new_context().new_page()
    try:
        sign_in(fresh, gateway, gateway.token("bob", "approver"), "/ui/" + link.split("/ui/")[1])
        expect(fresh.locator("table.inbox tbody tr")).to_have_count(len(shown))
        again = fresh.locator("table.inbox tbody tr").evaluate_all(
            "rs => rs.map(r => r.dataset.approval)"
        )
        assert again == shown
    finally:
        fresh.context.close()

    # nothing matches: said so, with the way back
    page.goto(gateway.url + "/ui/?q=nothing-like-this")
    expect(page.locator(".empty")).to_contain_text("No pending approvals match these filters.")
    page.get_by_role("link", name="Clear").click()
    expect(rows).to_have_count(50)


def test_the_proposal_reads_as_rows_and_amounts_carry_their_currency(
    gateway: Gateway, page: Page
) -> None:
    claims = gateway.token("claims-agent", "claims-agent")
    params = {"amount": "12000", "currency": "EUR", "claimant": "K. Example", "booking": "B-9"}
    held = gateway.propose(
        claims, "claims", "claim.approve", amount="12000", confidence=0.85,
        resource="claim/C-1", params=params,
    )  # fmt: skip
    assert held["verdict"] == "hold", held
    sign_in(page, gateway, gateway.token("alice", "approver"))
    expect(page.locator('td[data-label="Amount"]')).to_have_text("12000 EUR")
    page.get_by_role("link", name="claim.approve on claim/C-1").click()
    expect(page.locator(".kv dd").nth(4)).to_have_text("12000 EUR")
    fields = page.locator("table.fields tbody tr")
    rows = dict(
        zip(
            fields.locator("th").all_inner_texts(),
            fields.locator("td").all_inner_texts(),
            strict=True,
        )
    )
    assert rows["params.claimant"] == "K. Example"
    assert rows["params.booking"] == "B-9"
    assert rows["params.currency"] == "EUR"
    assert rows["resource"] == "claim/C-1"
    # the raw JSON stays one click away
    raw = page.get_by_text("The proposal as recorded (JSON)")
    raw.click()
    expect(page.get_by_role("region", name="The proposal as recorded")).to_contain_text(
        '"claimant"'
    )


@pytest.mark.parametrize(
    ("query", "named"),
    [("page=0", "page"), ("age=month", "age"), ("sort=amount", "sort"), ("colour=red", "colour")],
)
def test_a_wrong_query_string_is_a_422_page_naming_it(
    gateway: Gateway, page: Page, query: str, named: str
) -> None:
    sign_in(page, gateway, gateway.token("alice", "approver"))
    response = page.goto(f"{gateway.url}/ui/?{query}")
    assert response is not None
    assert response.status == 422
    assert named in page.locator("body").inner_text()
