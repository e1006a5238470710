"""Bad requests get problem details naming what is wrong, write nothing to the ledger and leave
the worker serving; idempotency keys give the same answer once, and 409 for another body."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.gateway.support import (
    Gateway,
    assert_problem,
    fields_named,
    good_booking,
    http_client,
    proposal,
    wait_for,
)

LIMIT = 64 * 1024
NFD = unicodedata.normalize("NFD", "café")


def still_serving(gateway: Gateway, size_before: int) -> None:
    """Nothing reached the ledger, and the worker still answers and decides."""
    assert gateway.proposals_recorded() == size_before
    assert gateway.healthy()
    answer = gateway.as_role("booking-agent").post("/v1/actions", json=good_booking())
    assert answer.status_code == 200, answer.text
    assert answer.json()["verdict"] == "execute"
    assert gateway.proposals_recorded() == size_before + 2


def _without(name: str) -> Callable[[dict[str, Any]], None]:
    return lambda body: body.pop(name)


def _set(name: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda body: body.__setitem__(name, value)


def _params(value: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return lambda body: body.__setitem__("params", value)


INVALID: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "missing resource": (_without("resource"), "resource"),
    "missing idempotency key": (_without("idempotency_key"), "idempotency_key"),
    "missing workflow": (_without("workflow"), "workflow"),
    "params not an object": (_set("params", "amount=20"), "params"),
    "confidence a string": (_set("confidence", "high"), "confidence"),
    "workflow a number": (_set("workflow", 7), "workflow"),
    "confidence above 1": (_set("confidence", 1.5), "confidence"),
    "confidence below 0": (_set("confidence", -0.1), "confidence"),
    "amount a float": (_params({"amount": 20.5}), "params.amount"),
    "amount not decimal": (_params({"amount": "20 EUR"}), "params.amount"),
    "float nested in params": (_params({"items": [{"price": 1.5}]}), "params.items[0].price"),
    "string not NFC": (_set("resource", f"{NFD}/1"), "resource"),
    "unknown workflow": (_set("workflow", "laundry"), "workflow"),
    "extra field": (_set("colour", "red"), "colour"),
}


@pytest.mark.parametrize("case", INVALID.values(), ids=INVALID.keys())
def test_invalid_proposals_get_422_naming_the_field(
    sqlite_gateway: Gateway, case: tuple[Callable[[dict[str, Any]], None], str]
) -> None:
    change, field = case
    client = sqlite_gateway.as_role("payments-agent")
    before = sqlite_gateway.proposals_recorded()
    body = proposal("parking", "refund.issue", amount="20", confidence=0.99)
    change(body)

    problem = assert_problem(client.post("/v1/actions", json=body), 422)

    assert field in fields_named(problem), problem
    assert field in problem["detail"]
    still_serving(sqlite_gateway, before)


@pytest.mark.parametrize(
    "raw",
    [b'{"workflow": "parking",', b"not json at all", b"", b"[]", b'"a string"', b"null"],
    ids=["truncated", "garbage", "empty", "array", "string", "null"],
)
def test_a_body_that_is_not_a_json_object_gets_422(sqlite_gateway: Gateway, raw: bytes) -> None:
    client = sqlite_gateway.as_role("booking-agent")
    before = sqlite_gateway.proposals_recorded()
    response = client.post("/v1/actions", content=raw, headers={"Content-Type": "application/json"})
    assert_problem(response, 422)
    still_serving(sqlite_gateway, before)


def test_nan_is_no_confidence(sqlite_gateway: Gateway) -> None:
    client = sqlite_gateway.as_role("booking-agent")
    before = sqlite_gateway.proposals_recorded()
    raw = json.dumps(good_booking()).replace("0.95", "NaN").encode()
    problem = assert_problem(
        client.post("/v1/actions", content=raw, headers={"Content-Type": "application/json"}),
        422,
    )
    assert "confidence" in fields_named(problem)
    still_serving(sqlite_gateway, before)


# -- what executes is what was proposed: one strict parse of the raw body ---------------------

# Each body is a good refund proposal with one part written by hand: parsers disagree on a key
# sent twice (first wins in some, last in Python's), and Python's reads NaN and Infinity, which
# JSON has not, and turns 1e400 into infinity; the ledger then wrote them as null.
GOOD_PARTS = (
    '"workflow": "parking", "action_type": "refund.issue", "case_type": "refund.issue", '
    '"resource": "booking/B-1", "idempotency_key": "{key}"'
)
NOT_WHAT_WAS_SENT = {
    "duplicate in params": ('"params": {"amount": "20", "amount": "5000"}', "params.amount"),
    "duplicate at the top": (
        '"params": {"amount": "20"}, "resource": "booking/B-2"',
        "resource",
    ),
    "duplicate deep in context": (
        '"params": {"amount": "20"}, "context": {"lines": [{"sku": "a", "sku": "b"}]}',
        "context.lines[0].sku",
    ),
    "NaN in params": ('"params": {"amount": "20", "x": NaN}', "params.x"),
    "Infinity in params": ('"params": {"amount": "20", "x": Infinity}', "params.x"),
    "-Infinity in params": ('"params": {"amount": "20", "x": -Infinity}', "params.x"),
    "1e400 in params": ('"params": {"amount": "20", "x": 1e400}', "params.x"),
    "-1e400 in a list": ('"params": {"amount": "20", "xs": [1, -1e400]}', "params.xs[1]"),
    "NaN in context": ('"params": {"amount": "20"}, "context": {"x": NaN}', "context.x"),
    "Infinity in context": ('"params": {"amount": "20"}, "context": {"x": Infinity}', "context.x"),
    "confidence Infinity": ('"params": {"amount": "20"}, "confidence": Infinity', "confidence"),
    "confidence 1e400": ('"params": {"amount": "20"}, "confidence": 1e400', "confidence"),
}


@pytest.mark.parametrize("case", NOT_WHAT_WAS_SENT.values(), ids=NOT_WHAT_WAS_SENT.keys())
def test_duplicate_keys_and_non_finite_numbers_get_422_naming_the_field(
    sqlite_gateway: Gateway, case: tuple[str, str]
) -> None:
    part, field = case
    client = sqlite_gateway.as_role("payments-agent")
    before = sqlite_gateway.proposals_recorded()
    key = f"strict-{field}-{len(part)}"
    raw = "{" + GOOD_PARTS.replace("{key}", key) + ", " + part + "}"

    response = client.post(
        "/v1/actions", content=raw.encode(), headers={"Content-Type": "application/json"}
    )

    problem = assert_problem(response, 422)
    assert field in fields_named(problem), problem
    assert field in problem["detail"]
    still_serving(sqlite_gateway, before)


def test_a_fault_before_a_body_nested_too_deep_is_no_500(sqlite_gateway: Gateway) -> None:
    # The strict parse stops at the NaN; naming it means parsing the rest, which is too deep.
    raw = b'{"params": {"x": NaN}, "context": {"deep": ' + b"[" * 5000 + b"]" * 5000 + b"}}"
    headers = {"Content-Type": "application/json"}
    before = sqlite_gateway.proposals_recorded()
    problem = assert_problem(
        sqlite_gateway.as_role("booking-agent").post("/v1/actions", content=raw, headers=headers),
        422,
    )
    assert fields_named(problem) == {"body"}
    assert_problem(sqlite_gateway.client().post("/v1/actions", content=raw, headers=headers), 401)
    still_serving(sqlite_gateway, before)


def test_every_json_body_the_api_takes_is_parsed_strictly(sqlite_gateway: Gateway) -> None:
    # Every operation with a JSON body, as the API documents them: a key sent twice or a NaN is
    # refused before anything looks at the body, whoever sends it and whatever the path names.
    document = sqlite_gateway.client().get("/openapi.json").json()
    operations = [
        (method, path.replace("{", "").replace("}", ""))
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    ]
    assert ("post", "/v1/actions") in operations
    assert len(operations) >= 8
    governor = sqlite_gateway.as_role("governor")
    anonymous = sqlite_gateway.client()
    headers = {"Content-Type": "application/json"}
    for method, path in operations:
        for raw, field in (
            (b'{"reason": "a", "reason": "b"}', "reason"),
            (b'{"details": {"n": NaN}}', "details.n"),
        ):
            response = governor.request(method, path, content=raw, headers=headers)
            problem = assert_problem(response, 422)
            assert field in fields_named(problem), (method, path, problem)
            # An anonymous caller learns nothing about bodies: 401, as for any other.
            assert_problem(anonymous.request(method, path, content=raw, headers=headers), 401)


# -- who may call ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer mdt_not-a-token", "Bearer", "Basic dXNlcjpwYXNz", "mdt_no-scheme"],
    ids=["none", "unknown", "empty", "basic", "no-scheme"],
)
def test_no_or_bad_token_gets_401(sqlite_gateway: Gateway, authorization: str | None) -> None:
    before = sqlite_gateway.proposals_recorded()
    headers = {"Authorization": authorization} if authorization else {}
    with http_client(sqlite_gateway.url, headers) as client:
        response = client.post("/v1/actions", json=good_booking())
    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    still_serving(sqlite_gateway, before)


def test_a_revoked_token_stops_working_within_a_second_or_so(sqlite_gateway: Gateway) -> None:
    token = sqlite_gateway.token("booking-agent", name="soon-revoked")
    client = sqlite_gateway.client(token)
    assert client.post("/v1/actions", json=good_booking()).status_code == 200
    before = sqlite_gateway.proposals_recorded()

    # Revoked from elsewhere (as `mandate token revoke` does): only the database tells the server.
    assert sqlite_gateway.tokens.revoke("soon-revoked")

    assert wait_for(lambda: client.get("/readyz").status_code == 401, timeout=5.0)
    assert_problem(client.post("/v1/actions", json=good_booking()), 401)
    assert_problem(client.get("/readyz"), 401)
    still_serving(sqlite_gateway, before)


@pytest.mark.parametrize("role", ["approver", "auditor", "governor"])
def test_people_do_not_propose_403(sqlite_gateway: Gateway, role: str) -> None:
    before = sqlite_gateway.proposals_recorded()
    problem = assert_problem(
        sqlite_gateway.as_role(role).post("/v1/actions", json=good_booking()), 403
    )
    assert role in problem["detail"]
    still_serving(sqlite_gateway, before)


def test_a_token_bound_to_another_workflow_gets_403(sqlite_gateway: Gateway) -> None:
    before = sqlite_gateway.proposals_recorded()
    client = sqlite_gateway.as_role("booking-agent", workflow="claims")
    problem = assert_problem(client.post("/v1/actions", json=good_booking()), 403)
    assert "bound to workflow 'claims'" in problem["detail"]
    still_serving(sqlite_gateway, before)


# -- size ------------------------------------------------------------------------------------


def _oversized() -> bytes:
    body = good_booking(context={"padding": "x" * LIMIT})
    raw = json.dumps(body).encode()
    assert len(raw) > LIMIT
    return raw


def test_a_body_over_64_kib_gets_413(sqlite_gateway: Gateway) -> None:
    client = sqlite_gateway.as_role("booking-agent")
    before = sqlite_gateway.proposals_recorded()
    response = client.post(
        "/v1/actions", content=_oversized(), headers={"Content-Type": "application/json"}
    )
    problem = assert_problem(response, 413)
    assert str(LIMIT) in problem["detail"]
    still_serving(sqlite_gateway, before)


def test_a_chunked_body_that_grows_past_64_kib_gets_413(sqlite_gateway: Gateway) -> None:
    client = sqlite_gateway.as_role("booking-agent")
    before = sqlite_gateway.proposals_recorded()
    raw = _oversized()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(raw), 4096):
            yield raw[start : start + 4096]

    request = client.build_request(
        "POST", "/v1/actions", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    assert_problem(client.send(request), 413)
    still_serving(sqlite_gateway, before)


def test_a_body_just_under_the_limit_is_decided(sqlite_gateway: Gateway) -> None:
    client = sqlite_gateway.as_role("booking-agent")
    body = good_booking(context={"padding": "x" * (LIMIT - 1024)})
    assert len(json.dumps(body)) < LIMIT
    response = client.post("/v1/actions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["verdict"] == "execute"


# -- idempotency -----------------------------------------------------------------------------


def test_the_same_key_and_body_give_the_same_answer_and_no_new_entries(
    gateway: Gateway,
) -> None:
    client = gateway.as_role("claims-agent")
    body = proposal("claims", "claim.approve", amount="12000", confidence=0.97)
    first = client.post("/v1/actions", json=body)
    assert first.status_code == 200
    size = gateway.proposals_recorded()

    again = client.post("/v1/actions", json=dict(reversed(body.items())))  # key order is no matter

    assert again.status_code == 200
    assert again.json() == first.json()
    assert gateway.proposals_recorded() == size


def test_the_same_key_with_another_body_gets_409(gateway: Gateway) -> None:
    client = gateway.as_role("claims-agent")
    body = proposal("claims", "claim.approve", amount="800", confidence=0.97)
    first = client.post("/v1/actions", json=body)
    assert first.status_code == 200
    size = gateway.proposals_recorded()

    problem = assert_problem(
        client.post("/v1/actions", json=body | {"params": {"amount": "900"}}), 409
    )

    assert body["idempotency_key"] in problem["detail"]
    assert first.json()["action_id"] not in problem["detail"]  # a 409 names no action
    assert gateway.proposals_recorded() == size
    assert client.post("/v1/actions", json=body).json() == first.json()  # the first still stands


def test_keys_belong_to_their_owner(gateway: Gateway) -> None:
    body = proposal("claims", "claim.approve", amount="800", confidence=0.97, key="shared-key")
    one = gateway.as_role("claims-agent").post("/v1/actions", json=body)
    other = gateway.as_role("claims-agent").post("/v1/actions", json=body)
    assert one.status_code == other.status_code == 200
    assert one.json()["action_id"] != other.json()["action_id"]


def test_twenty_concurrent_identical_requests_make_one_action(gateway: Gateway) -> None:
    token = gateway.token("claims-agent")
    body = proposal("claims", "claim.approve", amount="12000", confidence=0.97)
    before, recorded = gateway.ledger_size(), gateway.proposals_recorded()

    def send(_: int) -> httpx.Response:
        with http_client(gateway.url, {"Authorization": f"Bearer {token}"}) as client:
            return client.post("/v1/actions", json=body)

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(send, range(20)))

    assert [r.status_code for r in responses] == [200] * 20
    answers = [r.json() for r in responses]
    assert all(answer == answers[0] for answer in answers)
    assert gateway.proposals_recorded() == recorded + 2
    auditor = gateway.as_role("auditor")
    entries = auditor.get("/v1/ledger/entries", params={"start": before}).json()
    assert [e["entry"]["kind"] for e in entries] == ["proposal", "decision"]
    assert {e["entry"]["subject"] for e in entries} == {answers[0]["action_id"]}
