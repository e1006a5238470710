"""Every page at 390 px (a phone) and 1280 px, in the light and the dark scheme, in Chromium:
nothing wider than the window, the signed-in user and Sign out on the header, the inbox, the
audit queue and the exceptions as cards on the phone, timeline rows of a line or two, nothing
cut off without a way to read it, and no serious or critical axe-core violation (WCAG 2.1 A
and AA, best practice). axe-core is the npm package pinned in ``tests/web`` (``npm ci
--prefix tests/web``), injected into each page through Playwright.

Each check collects every offender on every page before failing, so one run lists them all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.ui.conftest import REPO, Gateway
from tests.ui.test_inbox import sign_in

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
expect = sync_api.expect

AXE = REPO / "tests" / "web" / "node_modules" / "axe-core" / "axe.min.js"
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]
WIDTHS = {"phone": (390, 844), "desktop": (1280, 800)}
# Set to write the README's screenshots of the inbox (docs/inbox-*.png) from this test.
SCREENSHOTS = os.environ.get("MANDATE_SCREENSHOTS") == "1"

LAYOUT = REPO / "tests" / "web" / "layout.js"


@pytest.fixture
def axe_source() -> str:
    if not AXE.exists():
        pytest.fail(
            f"{AXE} is missing: run `npm ci --prefix tests/web` (.ci/run does) to install the "
            "pinned axe-core the accessibility checks inject"
        )
    return AXE.read_text()


def _states(gateway: Gateway) -> list[tuple[str, str, str]]:
    """(what, role token, path) of the page states checked: every page, with rows."""
    agent = gateway.token("payments-agent", "payments-agent")
    claims = gateway.token("claims-agent", "claims-agent")
    bot = gateway.token("cancel-bot-with-a-long-name-for-the-cards", "booking-agent")
    refund = gateway.hold_refund(agent, "84.50", "booking/B-1041")
    gateway.hold_refund(agent, "20.00", "booking/B-1187-with-a-rather-long-resource-name")
    held = gateway.propose(
        claims,
        "claims",
        "claim.approve",
        amount="12000",
        confidence=0.85,
        resource="claim/C-77",
        params={"amount": "12000", "currency": "EUR", "claimant": "K. Example"},
    )
    assert held["verdict"] == "hold", held
    executed = gateway.propose(
        bot, "parking", "booking.cancel", amount="35.00", confidence=0.95, resource="booking/B-7"
    )
    assert executed["verdict"] == "execute", executed
    approver = gateway.token("alice", "approver")
    auditor = gateway.token("audrey", "auditor")
    admin = gateway.token("paula", "policy-admin")
    claim = held["approval"]["id"]
    with gateway.api(auditor) as client:
        (audit,) = client.get("/v1/audits").json()
    # The executed cancellation reported failed by its executor: an open exception.
    with gateway.api(bot) as client:
        failed = client.post(
            f"/v1/actions/{executed['action_id']}/outcome",
            json={"status": "failed", "details": {"detail": "the barrier did not open in time"}},
        )
    assert failed.status_code == 200, failed.text
    with gateway.api(approver) as client:
        (exception,) = client.get("/v1/exceptions").json()
    return [
        ("sign-in", "", "/ui/login"),
        ("inbox", approver, "/ui/"),
        ("inbox-filtered-empty", approver, "/ui/?workflow=nowhere&q=x"),
        ("inbox-executor", agent, "/ui/"),
        ("detail-claim", approver, f"/ui/approvals/{claim}"),
        ("detail-refund", approver, f"/ui/approvals/{refund}"),
        ("autonomy", approver, "/ui/autonomy"),
        ("ledger", auditor, "/ui/ledger"),
        ("audits", auditor, "/ui/audits"),
        ("audit", auditor, f"/ui/audits/{audit['id']}"),
        ("exceptions", approver, "/ui/exceptions"),
        ("exception", approver, f"/ui/exceptions/{exception['id']}"),
        ("exceptions-empty", approver, "/ui/exceptions?status=handled"),
        ("policies", admin, "/ui/policies"),
        ("not-found", approver, "/ui/approvals/apr_0000000000000000"),
    ]


@pytest.fixture
def contexts(browser: Browser) -> Iterator[Callable[..., BrowserContext]]:
    made: list[BrowserContext] = []

    def make(width: int, height: int, scheme: Any) -> BrowserContext:
        # The pages' CSP refuses inline scripts; axe-core is injected as one.
        context = browser.new_context(
            viewport={"width": width, "height": height}, color_scheme=scheme, bypass_csp=True
        )
        context.set_default_timeout(15_000)
        made.append(context)
        return context

    yield make
    for context in made:
        context.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("size", list(WIDTHS))
def test_every_page_fits_reads_and_passes_axe(
    audited_gateway: Gateway,
    contexts: Callable[..., BrowserContext],
    axe_source: str,
    size: str,
    scheme: str,
) -> None:
    width, height = WIDTHS[size]
    gateway = audited_gateway
    states = _states(gateway)
    pages: dict[str, Page] = {}  # one signed-in page per token
    problems: list[str] = []
    for what, token, path in states:
        page = pages.get(token)
        if page is None:
            page = contexts(width, height, scheme).new_page()
            if token:
                sign_in(page, gateway, token)
            pages[token] = page
        page.goto(gateway.url + path)
        layout = page.evaluate(LAYOUT.read_text())
        if layout["scrollWidth"] > layout["width"]:
            problems.append(f"{what}: scrolls sideways ({layout['scrollWidth']} > {width} px)")
        problems += [f"{what}: wider than the window: {w}" for w in layout["wide"]]
        problems += [f"{what}: cut off with no title: {c}" for c in layout["cut"]]
        problems += [f"{what}: {p}" for p in _header(page, width)]
        problems += [f"{what}: {p}" for p in _axe(page, axe_source)]
        if what == "inbox":
            problems += _inbox(page, size)
            if SCREENSHOTS and scheme == "light":
                page.screenshot(path=str(REPO / "docs" / f"inbox-{width}.png"), full_page=True)
        if what.startswith("detail") or what in ("audit", "exception"):
            problems += [f"{what}: {p}" for p in _timeline(page)]
    assert not problems, "\n".join(problems)


def _header(page: Page, width: int) -> list[str]:
    """The user and Sign out, when signed in, inside the window and on the dark header."""
    if page.locator(".who").count() == 0:
        return []
    head = page.locator("header.top").bounding_box()
    assert head is not None
    problems = []
    for what, locator in (
        ("the user", page.locator(".who .mono")),
        ("Sign out", page.get_by_role("button", name="Sign out")),
    ):
        expect(locator).to_be_visible()
        box = locator.bounding_box()
        assert box is not None
        if box["x"] < 0 or box["x"] + box["width"] > width:
            problems.append(f"{what} is outside the window: {box}")
        if box["y"] + box["height"] > head["y"] + head["height"] + 0.5:
            problems.append(f"{what} hangs below the header: {box} vs {head}")
    return problems


def _inbox(page: Page, size: str) -> list[str]:
    """Cards on the phone (no column heads, one row a box of the window's width); a table on
    the desktop."""
    rows = page.locator("table.inbox tbody tr")
    expect(rows).to_have_count(3)
    head = page.locator("table.inbox thead")
    if size == "desktop":
        return [] if head.is_visible() else ["inbox: the column heads are hidden on a desktop"]
    problems = ["inbox: the column heads show on a phone"] if head.is_visible() else []
    for n in range(rows.count()):
        box = rows.nth(n).bounding_box()
        assert box is not None
        if box["width"] > 390 or rows.nth(n).evaluate("r => getComputedStyle(r).display") != (
            "block"
        ):
            problems.append(f"inbox: row {n} is not a card: {box}")
    amount = page.locator("tr", has_text="booking/B-1041").locator('[data-label="Amount"]')
    expect(amount).to_have_text("84.50")
    amount = page.locator("tr", has_text="claim/C-77").locator('[data-label="Amount"]')
    expect(amount).to_have_text("12000 EUR")
    return problems


def _timeline(page: Page) -> list[str]:
    """Timeline rows of a few lines, with room for what happened: never a column squeezed to
    a letter a line."""
    rows = page.locator("table.timeline tbody tr")
    problems = []
    for n in range(rows.count()):
        row, what = rows.nth(n).bounding_box(), rows.nth(n).locator("td").last.bounding_box()
        assert row is not None
        assert what is not None
        if row["height"] > 140 or what["width"] < 200:
            problems.append(
                f"timeline row {n}: {row['height']:.0f} px high, {what['width']:.0f} wide"
            )
    return problems


def _axe(page: Page, source: str) -> list[str]:
    """axe-core's serious and critical violations, each with the elements it names."""
    page.add_script_tag(content=source)
    result = page.evaluate(
        "async (tags) => await axe.run(document, {runOnly: {type: 'tag', values: tags}})",
        AXE_TAGS,
    )
    assert result["passes"], "axe-core checked nothing"
    return [
        f"axe {v['impact']} {v['id']}: {v['help']} at "
        + "; ".join(" ".join(node["target"]) for node in v["nodes"][:5])
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
