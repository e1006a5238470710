"""The committed OpenAPI document matches the app, and the live app honours it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from gateway.openapi import render
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
    }


@schema.auth(refresh_interval=None)
class RoleToken:
    """Executors propose; policy admins change bundles; auditors read the ledger: each
    operation is driven by the role that may call it, so the generated requests reach the
    code behind the auth check.

    Cases are generated before the gateway mints tokens, so this sets ``Bearer role:<role>``
    and the test swaps in the real token. It is given to schemathesis rather than added to
    every request so that a case generated without ``Authorization`` goes without it and
    must get its 401.
    """

    def get(self, case: schemathesis.Case[Any], context: schemathesis.AuthContext) -> str:
        if case.path.startswith("/v1/policies"):
            return "policy-admin"
        return "executor" if case.path.startswith("/v1/actions") else "auditor"

    def set(
        self, case: schemathesis.Case[Any], data: str, context: schemathesis.AuthContext
    ) -> None:
        case.headers["Authorization"] = f"Bearer role:{data}"


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
    headers = dict(case.headers or {})
    role = headers.get("Authorization", "").removeprefix("Bearer role:")
    if role in tokens:
        headers["Authorization"] = f"Bearer {tokens[role]}"
    case.call_and_validate(
        base_url=gateway.url,
        headers=headers,
        # The schema cannot know which workflows the active bundle has, or which seq exists:
        # a schema-valid request may still get a 422 that names the field.
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
    )
