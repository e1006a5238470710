"""What one caller may ask of the gateway is bounded: requests a second per token (429 with
Retry-After), how deeply a JSON body nests, how long request strings are, and how large a page
a list endpoint returns. Each refusal is a problem that says why, and refuses before anything
is recorded.
"""

from __future__ import annotations

import time

import httpx
import pytest

from gateway.api.limits import json_too_deep
from tests.conftest import Database
from tests.gateway.support import (
    Gateway,
    Serve,
    assert_problem,
    fields_named,
    good_booking,
    proposal,
)

RATE = 0.5  # a second: Retry-After is 2 s, time enough to see a refusal hold
BURST = 3


@pytest.fixture
def limited(
    monkeypatch: pytest.MonkeyPatch, sqlite_database: Database, serve_gateway: Serve
) -> Gateway:
    """A gateway whose tokens may send BURST requests at once, then RATE a second (set as an
    operator would, in the environment)."""
    monkeypatch.setenv("MANDATE_RATE_LIMIT_PER_SECOND", str(RATE))
    monkeypatch.setenv("MANDATE_RATE_LIMIT_BURST", str(BURST))
    return serve_gateway(sqlite_database)


def _until_refused(client: httpx.Client, path: str) -> tuple[int, httpx.Response]:
    """Send until the gateway refuses; how many went through, and the refusal."""
    for sent in range(BURST + 5):
        response = client.get(path)
        if response.status_code != 200:
            return sent, response
    raise AssertionError(f"{BURST + 5} requests and no refusal")


def test_a_token_over_its_burst_gets_429_with_retry_after(limited: Gateway) -> None:
    agent = limited.as_role("booking-agent")
    # A token's requests of every kind count; the burst goes through before any refusal (a
    # refill during the loop may let one more through, never fewer).
    before = limited.proposals_recorded()
    passed, refused = _until_refused(agent, "/v1/ledger/checkpoint")
    # A refused proposal is not decided, and not recorded.
    assert_problem(agent.post("/v1/actions", json=good_booking()), 429)
    assert passed >= BURST
    problem = assert_problem(refused, 429)
    assert "rate limit" in problem["detail"]
    retry_after = int(refused.headers["Retry-After"])
    assert retry_after >= 1
    assert limited.proposals_recorded() == before

    # Another token is not held back by this one's requests.
    assert limited.as_role("booking-agent").get("/v1/ledger/checkpoint").status_code == 200

    # After Retry-After, the token is served again.
    time.sleep(retry_after)
    verdict = agent.post("/v1/actions", json=good_booking())
    assert verdict.status_code == 200, verdict.text
    assert limited.proposals_recorded() == before + 2


def test_requests_without_a_valid_token_are_not_counted_per_token(limited: Gateway) -> None:
    anonymous = limited.client()
    for _ in range(BURST + 2):
        assert_problem(anonymous.get("/v1/ledger/checkpoint"), 401)
    stranger = limited.client("mdt_not-a-token")
    for _ in range(BURST + 2):
        assert_problem(stranger.get("/v1/ledger/checkpoint"), 401)


def nested(depth: int) -> dict[str, object]:
    """A value whose arrays and objects nest ``depth`` deep, counting itself."""
    value: object = "bottom"
    for _ in range(depth - 1):
        value = [value]
    return {"v": value}


def test_json_nested_deeper_than_the_limit_is_refused_and_nothing_recorded(
    sqlite_gateway: Gateway,
) -> None:
    agent = sqlite_gateway.as_role("booking-agent")
    limit = sqlite_gateway.settings.max_json_depth
    before = sqlite_gateway.proposals_recorded()

    # The proposal object is one level, params another: nested(limit - 1) as a param fills it.
    at_limit = good_booking(params={"deep": nested(limit - 2)})
    assert agent.post("/v1/actions", json=at_limit).status_code == 200
    one_more = good_booking(params={"deep": nested(limit - 1)})
    problem = assert_problem(agent.post("/v1/actions", json=one_more), 422)
    assert fields_named(problem) == {"body"}
    assert f"deeper than {limit}" in problem["detail"]

    # Far deeper than any parser's recursion: refused the same way, and the gateway goes on.
    abyss = b"[" * 30000 + b"]" * 30000  # within the body size limit
    response = agent.post(
        "/v1/actions", content=abyss, headers={"Content-Type": "application/json"}
    )
    assert fields_named(assert_problem(response, 422)) == {"body"}
    assert sqlite_gateway.healthy()
    assert sqlite_gateway.proposals_recorded() == before + 2  # the proposal at the limit


def test_brackets_inside_strings_do_not_count() -> None:
    quoted = b'{"note": "' + b"[[[[{{{{" * 20 + b'\\" ]]"}'
    assert not json_too_deep(quoted, 2)
    assert json_too_deep(b'{"a": [[["\\"]"]]]}', 3)
    assert not json_too_deep(b'{"a": [["\\"]"]]}', 3)


@pytest.mark.parametrize(
    ("field", "body"),
    [
        ("resource", proposal("parking", "booking.create", resource="r" * 257)),
        ("idempotency_key", proposal("parking", "booking.create", key="k" * 129)),
    ],
)
def test_an_over_long_proposal_string_is_refused_naming_the_field(
    sqlite_gateway: Gateway, field: str, body: dict[str, object]
) -> None:
    agent = sqlite_gateway.as_role("booking-agent")
    before = sqlite_gateway.proposals_recorded()
    problem = assert_problem(agent.post("/v1/actions", json=body), 422)
    assert fields_named(problem) == {field}
    assert sqlite_gateway.proposals_recorded() == before


@pytest.mark.parametrize(
    ("role", "method", "path", "body", "field"),
    [
        ("approver", "POST", "/v1/approvals/apr_x/decisions", {"decision": "reject"}, "reason"),
        ("auditor", "POST", "/v1/audits/aud_x", {"finding": "incorrect"}, "note"),
        ("governor", "POST", "/v1/autonomy/parking/booking.create", {"level": 2}, "reason"),
        ("policy-admin", "POST", "/v1/policies/replay", {}, "since"),
    ],
)
def test_over_long_strings_elsewhere_are_refused_naming_the_field(
    sqlite_gateway: Gateway, role: str, method: str, path: str, body: dict[str, object], field: str
) -> None:
    too_long = 65 if field == "since" else 2001
    response = sqlite_gateway.as_role(role).request(
        method, path, json=body | {field: "x" * too_long}
    )
    assert fields_named(assert_problem(response, 422)) == {field}


@pytest.mark.parametrize(
    ("role", "path", "most"),
    [("auditor", "/v1/ledger/entries", 1000), ("auditor", "/v1/policies/shadow", 500)],
)
def test_a_page_larger_than_the_maximum_is_refused(
    sqlite_gateway: Gateway, role: str, path: str, most: int
) -> None:
    client = sqlite_gateway.as_role(role)
    assert client.get(path, params={"limit": most}).status_code == 200
    problem = assert_problem(client.get(path, params={"limit": most + 1}), 422)
    assert fields_named(problem) == {"limit"}
