"""The pages keep a token's workflow binding as the API does: a person signed in with a token
bound to claims, whatever their role, opens no parking approval (the 403 page names the
binding) and finds none in the inbox, the audit queue or the autonomy page.

Plain HTTP with the session cookie (no browser needed): what is asserted is what the server
sends."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from tests.ui.conftest import Gateway

ROLES = ("approver", "governor", "auditor")


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, html
    return found.group(1)


@contextmanager
def signed_in(gateway: Gateway, token: str) -> Iterator[httpx.Client]:
    """A client holding the session cookie of someone signed in with ``token``."""
    with httpx.Client(base_url=gateway.url, timeout=30.0) as client:
        csrf = _csrf(client.get("/ui/login").text)
        signed = client.post("/ui/login", data={"token": token, "csrf": csrf, "next": "/ui/"})
        assert signed.status_code == 303, signed.text
        yield client


def test_a_person_bound_to_claims_sees_no_parking_page(gateway: Gateway) -> None:
    payments = gateway.token("payments", "payments-agent", owner="ops")
    parking_approval = gateway.hold_refund(payments, resource="booking/B-77")
    claims = gateway.token("claims", "claims-agent", owner="ops")
    claim = gateway.propose(
        claims, "claims", "claim.approve", amount="12000", confidence=0.97, resource="claim/C-9"
    )
    assert claim["verdict"] == "hold", claim
    claim_approval = claim["approval"]["id"]

    for role in ROLES:
        with signed_in(gateway, gateway.token(f"{role}-claims", role, workflow="claims")) as page:
            refused = page.get(f"/ui/approvals/{parking_approval}")
            assert refused.status_code == 403, (role, refused.text)
            assert "bound to workflow" in refused.text, role
            assert "booking/B-77" not in refused.text, role

            own = page.get(f"/ui/approvals/{claim_approval}")
            assert own.status_code == 200, (role, own.text)

            inbox = page.get("/ui/", params={"status": "all"})
            assert inbox.status_code == 200, inbox.text
            assert parking_approval not in inbox.text, role
            assert claim_approval in inbox.text, role

            levels = page.get("/ui/autonomy")
            assert levels.status_code == 200, levels.text
            assert 'data-case="parking/' not in levels.text, role
            assert 'data-case="claims/' in levels.text, role

            if role == "auditor":
                queue = page.get("/ui/audits", params={"status": "all"})
                assert queue.status_code == 200, queue.text
                assert "parking" not in queue.text
