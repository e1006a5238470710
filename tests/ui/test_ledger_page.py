"""The ledger's status page in Chromium: any signed-in role sees the ledger's size, the latest
signed checkpoint as the API gives it (a note that verifies under the key the page shows), the
signing keys and how to verify an export offline."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from ledger.checkpoint import open_checkpoint
from ledger.note import NoteVerifier
from tests.ui.conftest import Gateway

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
expect = sync_api.expect


def test_any_role_sees_the_checkpoint_the_api_gives_and_it_verifies(
    gateway: Gateway, page: Page
) -> None:
    agent = gateway.token("pay-bot", "payments-agent")
    gateway.hold_refund(agent)
    with gateway.api(agent) as client:
        response = client.get("/v1/ledger/checkpoint")  # signs one covering the refund
    assert response.status_code == 200, response.text
    api = response.json()

    # An executor's token: the least-trusted role still sees the ledger's status.
    page.goto(gateway.url + "/ui/ledger")
    page.get_by_label("Token").fill(agent)
    page.get_by_role("button", name="Sign in").click()
    assert page.url == gateway.url + "/ui/ledger"
    nav = page.get_by_role("navigation", name="Sections")
    expect(nav.get_by_role("link")).to_have_text(["Approvals", "Autonomy", "Ledger"])
    expect(nav.get_by_role("link", name="Ledger")).to_have_attribute("aria-current", "page")

    size = gateway.runtime.ledger.size()
    expect(page.get_by_role("heading", name="Ledger")).to_contain_text(f"{size} entries")
    expect(page.locator('[data-field="size"]')).to_have_text(str(size))
    expect(page.locator('[data-field="checkpoint-size"]')).to_have_text(str(api["size"]))
    expect(page.locator('[data-field="root"]')).to_have_text(api["root_hash"])
    note = page.get_by_label("The signed checkpoint note")
    expect(note).to_be_visible()
    page.screenshot(path="/tmp/ui-ledger.png", full_page=True)

    # The note reads exactly as the API's, and verifies under the signing key the page shows.
    shown = note.text_content()
    assert shown is not None
    assert shown == api["note"]
    vkey = page.locator("code.vkey").last.text_content()
    assert vkey is not None
    checkpoint, _ = open_checkpoint(shown, [NoteVerifier.from_vkey(vkey)])
    assert (checkpoint.size, checkpoint.root.hex()) == (api["size"], api["root_hash"])

    # How to verify an export offline, with the commands the README gives.
    steps = page.get_by_role("region", name="Verify an export offline")
    expect(steps).to_contain_text("mandate ledger public-key > mandate.pub")
    expect(steps).to_contain_text("mandate ledger export --out ledger.jsonl")
    expect(steps).to_contain_text(
        "python -m ledger verify ledger.jsonl --public-key mandate.pub "
        "--trusted-checkpoint kept.note"
    )
    expect(page.locator("form[method=post]")).to_have_count(1)  # signing out: nothing else
