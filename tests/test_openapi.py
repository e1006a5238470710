"""The committed OpenAPI document matches the app, and the live app honours it."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from gateway.server.openapi import render
from gateway.settings import Settings
from tests.live import LiveGateway, serve

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "openapi" / "openapi.json"


def test_committed_openapi_matches_the_app() -> None:
    assert DOCUMENT.read_text() == render(), (
        "openapi/openapi.json is stale: run `make openapi` and commit it"
    )


schema = schemathesis.openapi.from_dict(json.loads(DOCUMENT.read_text()))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    data = tmp_path_factory.mktemp("schemathesis")
    with serve(Settings(data_dir=data, policies=ROOT / "policies")) as live:
        yield live


@pytest.fixture(scope="module")
def tokens(gateway: LiveGateway) -> dict[str, str]:
    return {
        "executor": gateway.token("fuzz-executor", "booking-agent"),
        "auditor": gateway.token("fuzz-auditor", "auditor"),
        "policy-admin": gateway.token("fuzz-policy-admin", "policy-admin"),
        "governor": gateway.token("fuzz-governor", "governor"),
    }


@schema.auth(refresh_interval=None)
class RoleToken:
    """Executors propose; policy admins change bundles; governors erase; auditors read the
    ledger: each operation is driven by the role that may call it, so the generated requests
    reach the code behind the auth check.

    Cases are generated before the gateway mints tokens, so this sets ``Bearer role:<role>``
    and the test swaps in the real token. It is given to schemathesis rather than added to
    every request so that a case generated without ``Authorization`` goes without it and
    must get its 401.
    """

    def get(self, case: schemathesis.Case[Any], context: schemathesis.AuthContext) -> str:
        if case.path.startswith("/v1/policies"):
            return "policy-admin"
        if case.path == "/v1/erasures":
            return "governor"
        return "executor" if case.path.startswith("/v1/actions") else "auditor"

    def set(
        self, case: schemathesis.Case[Any], data: str, context: schemathesis.AuthContext
    ) -> None:
        case.headers["Authorization"] = f"Bearer role:{data}"


def _with_token(case: schemathesis.Case[Any], tokens: dict[str, str]) -> dict[str, Any]:
    """The case's headers with the real token in place of ``RoleToken``'s placeholder."""
    headers = dict(case.headers or {})
    role = headers.get("Authorization", "").removeprefix("Bearer role:")
    if role in tokens:
        headers["Authorization"] = f"Bearer {tokens[role]}"
    return headers


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_every_endpoint_answers_within_its_schema(
    case: schemathesis.Case[Any], gateway: LiveGateway, tokens: dict[str, str]
) -> None:
    case.call_and_validate(
        base_url=gateway.url,
        headers=_with_token(case, tokens),
        # The schema cannot know which workflows the active bundle has, or which seq exists:
        # a schema-valid request may still get a 422 that names the field.
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
    )


# -- integer parameters ----------------------------------------------------------------------------


def _integer_parameters() -> list[tuple[str, str, dict[str, Any]]]:
    """(path, name, schema) of every integer query or path parameter the document declares:
    those of GET operations, the only ones that take any today."""
    found = []
    for path, operations in json.loads(DOCUMENT.read_text())["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                schema = parameter["schema"]
                integer = next(
                    (s for s in [schema, *schema.get("anyOf", [])] if s.get("type") == "integer"),
                    None,
                )
                if integer is not None:
                    assert method == "get", (method, path, parameter["name"])
                    found.append((path, parameter["name"], integer))
    return found


def _role(path: str) -> str:
    """The role that may call a path (as ``RoleToken`` chooses it)."""
    if path.startswith("/v1/policies"):
        return "policy-admin"
    return "executor" if path.startswith("/v1/actions") else "auditor"


def test_every_integer_parameter_declares_its_bounds() -> None:
    # Declared, they are what schemathesis generates at and past (its coverage phase): the run
    # above then tries the largest value each one takes, and the first one past it.
    parameters = _integer_parameters()
    assert parameters
    for path, name, schema in parameters:
        assert "minimum" in schema, (path, name, schema)
        assert "maximum" in schema, (path, name, schema)


@pytest.mark.parametrize(
    ("path", "name", "schema"),
    _integer_parameters(),
    ids=[f"{path}?{name}" for path, name, _ in _integer_parameters()],
)
def test_an_integer_parameter_outside_its_bounds_gets_422_naming_it(
    gateway: LiveGateway, tokens: dict[str, str], path: str, name: str, schema: dict[str, Any]
) -> None:
    required = {
        other: bounds.get("minimum", 0)
        for other_path, other, bounds in _integer_parameters()
        if other_path == path and other != name
    }
    headers = {"Authorization": f"Bearer {tokens[_role(path)]}"}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=30.0) as client:
        for value in (
            schema["maximum"] + 1,
            10**23,
            schema["minimum"] - 1,
            -(10**23),
        ):
            answer = client.get(path, params=required | {name: value})
            assert answer.status_code == 422, (value, answer.text)
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert [e["field"] for e in answer.json()["errors"]] == [name], answer.text
        # The largest value it takes is answered, whatever the other parameters are.
        for others in (required, {other: 1000 for other in required}):
            answer = client.get(path, params=others | {name: schema["maximum"]})
            assert answer.status_code in (200, 422), (others, answer.text)


def test_the_last_entries_a_bigint_holds_are_an_empty_page(
    gateway: LiveGateway, tokens: dict[str, str]
) -> None:
    headers = {"Authorization": f"Bearer {tokens['auditor']}"}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=30.0) as client:
        answer = client.get(
            "/v1/ledger/entries", params={"start": 9223372036854775000, "limit": 1000}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() == []
        answer = client.get("/v1/ledger/entries", params={"start": "99999999999999999999999"})
        assert answer.status_code == 422, answer.text
        assert [e["field"] for e in answer.json()["errors"]] == ["start"]


def test_linked_calls_answer_within_their_schema(
    gateway: LiveGateway, tokens: dict[str, str]
) -> None:
    """Stateful: calls chained by the links schemathesis infers (an action proposed, then
    looked up, its approval voted on, its outcome reported), each answered within its schema."""
    machine = schema.as_state_machine()
    answered: list[tuple[str, int]] = []
    keys = itertools.count()

    class Linked(machine):  # type: ignore[misc, valid-type]
        def before_call(self, case: schemathesis.Case[Any]) -> None:
            # A random proposal names no workflow of the bundle: chains would stop at a 422.
            # Propose what booking-agent may, so the calls after it reach a real action.
            if (case.method, case.path) == ("POST", "/v1/actions"):
                case.body = {
                    "workflow": "parking",
                    "action_type": "booking.create",
                    "case_type": "booking.create",
                    "resource": f"bay/{next(keys)}",
                    "params": {},
                    "confidence": 0.95,
                    "idempotency_key": f"linked-{next(keys)}",
                }

        def after_call(self, response: Any, case: schemathesis.Case[Any]) -> None:
            answered.append((f"{case.method} {case.path}", response.status_code))

        def get_call_kwargs(self, case: schemathesis.Case[Any]) -> dict[str, Any]:
            return {"base_url": gateway.url, "headers": _with_token(case, tokens)}

        def validate_response(
            self,
            response: Any,
            case: schemathesis.Case[Any],
            additional_checks: Any = None,
            **kwargs: Any,
        ) -> None:
            case.validate_response(
                response,
                excluded_checks=[schemathesis.checks.positive_data_acceptance],
                transport_kwargs=kwargs,
            )

    Linked.run(
        settings=settings(
            max_examples=30,
            stateful_step_count=6,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
    )
    # The walk proposed actions and called what is linked to them. Which calls it makes, with
    # or without a token, depends on the whole document and on what the module's other tests
    # left, so whether a proposed action is found by its id is checked by following the same
    # link by hand.
    assert ("POST /v1/actions", 200) in answered, sorted(set(answered))
    assert any(call.startswith(("GET /v1/actions/", "POST /v1/actions/")) for call, _ in answered)
    headers = {"Authorization": f"Bearer {tokens['executor']}"}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=30.0) as client:
        proposed = client.post(
            "/v1/actions",
            json={
                "workflow": "parking",
                "action_type": "booking.create",
                "resource": "bay/linked",
                "params": {},
                "confidence": 0.95,
                "idempotency_key": "linked-by-hand",
            },
        )
        schema["/v1/actions"]["POST"].validate_response(proposed)
        found = client.get(f"/v1/actions/{proposed.json()['action_id']}")
        assert found.status_code == 200, found.text
        schema["/v1/actions/{action_id}"]["GET"].validate_response(found)
