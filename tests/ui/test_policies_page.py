"""What a policy admin finds on signing in, in Chromium: the active bundle (digest, who put it
in force, why, its files) and the shadow beside it with how often it decides otherwise and its
latest disagreements, as the API gives them; other roles see no link to it and a 403 page."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gateway.policy.bundle import load_bundle
from tests.policies.support import activate, bundle_copy, raised_review
from tests.ui.conftest import Gateway
from tests.ui.test_inbox import sign_in

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
expect = sync_api.expect


def test_a_policy_admin_lands_on_the_active_bundle_and_its_shadow(
    gateway: Gateway, page: Page, tmp_path: Path
) -> None:
    admin = gateway.token("paula", "policy-admin")
    sign_in(page, gateway, admin)
    assert page.url == gateway.url + "/ui/policies"
    active = gateway.runtime.in_force.policy.bundle.digest
    panel = page.get_by_role("region", name=re.compile("Active bundle"))
    expect(panel).to_contain_text(active)
    expect(panel).to_contain_text("claims, files, parking")
    expect(panel.locator("table.files tr", has_text="data.json")).to_have_count(1)
    expect(page.get_by_role("region", name="Shadow bundle")).to_contain_text(
        "No shadow bundle is running"
    )
    expect(page.get_by_role("link", name="Approvals")).to_have_count(0)

    candidate = bundle_copy(tmp_path / "raised", raised_review)
    with gateway.api(admin) as client:
        started = activate(client, candidate, mode="shadow", reason="try a higher threshold")
    assert started.status_code == 200, started.text
    claims = gateway.token("claims-agent", "claims-agent")
    held = gateway.propose(
        claims, "claims", "claim.approve", amount="12000", confidence=0.97, resource="claim/C-1"
    )
    assert held["verdict"] == "hold"
    gateway.runtime.policies.shadow.drain()

    page.reload()
    shadow = page.get_by_role("region", name="Shadow bundle")
    expect(shadow).to_contain_text(load_bundle(candidate).digest)
    expect(shadow).to_contain_text("try a higher threshold")
    counts = shadow.locator(".shadow-counts dd")
    expect(counts).to_have_text(["1", "1", "0", "0"])
    item = page.get_by_role("region", name=re.compile("Latest disagreements")).locator("li")
    expect(item).to_have_count(1)
    expect(item).to_contain_text("claim.approve in claims by claims-agent")
    expect(item).to_contain_text("active hold → shadow execute")


def test_who_else_sees_the_policies_page(gateway: Gateway, page: Page) -> None:
    sign_in(page, gateway, gateway.token("audrey", "auditor"))
    page.get_by_role("link", name="Policies").click()
    expect(page.get_by_role("heading", name="Policies")).to_be_visible()

    other = page.context.browser
    assert other is not None
    context = other.new_context()
    try:
        approver = context.new_page()
        sign_in(approver, gateway, gateway.token("alice", "approver"))
        expect(approver.get_by_role("link", name="Policies")).to_have_count(0)
        response = approver.goto(gateway.url + "/ui/policies")
        assert response is not None
        assert response.status == 403
    finally:
        context.close()
