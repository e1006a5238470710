"""The hot path: ``POST /v1/actions``'s common request is answered in front of FastAPI's
routing (``gateway.api.direct``), and answers exactly as FastAPI's way does, refusals included.
A request with ``Content-Type: application/json; charset=utf-8`` takes FastAPI's way (the
direct way takes only ``application/json``), which lets a test send the same proposal both
ways."""

from __future__ import annotations

from typing import Any

import httpx

from gateway.api.direct import _index
from gateway.schemas import Verdict
from gateway.server.app import create_app
from gateway.settings import Settings
from tests.conftest import Database
from tests.gateway.support import Serve, assert_problem, good_booking

_ROUTED = {"Content-Type": "application/json; charset=utf-8"}


def _post(client: httpx.Client, body: dict[str, Any], *, routed: bool) -> httpx.Response:
    return client.post("/v1/actions", json=body, headers=_ROUTED if routed else None)


def test_the_proposal_route_is_found_for_the_direct_way() -> None:
    # FastAPI keeps an included router's routes apart (with their prefix beside them): if a
    # FastAPI upgrade moved them, every proposal would silently take the slow way.
    assert list(_index(create_app(Settings())).routes) == [("POST", "/v1/actions")]


def test_both_ways_decide_alike(sqlite_database: Database, serve_gateway: Serve) -> None:
    agent = serve_gateway(sqlite_database).as_role("booking-agent")
    direct = _post(agent, good_booking(), routed=False)
    routed = _post(agent, good_booking(), routed=True)
    assert direct.status_code == routed.status_code == 200
    assert direct.headers["content-type"] == routed.headers["content-type"]
    one, other = Verdict.model_validate(direct.json()), Verdict.model_validate(routed.json())
    assert one.verdict == other.verdict == "execute"
    assert one.action_id != other.action_id
    assert one.trace.autonomy == other.trace.autonomy
    assert direct.json().keys() == routed.json().keys()


def test_refusals_raised_while_deciding_are_answered_alike(
    sqlite_database: Database, serve_gateway: Serve
) -> None:
    agent = serve_gateway(sqlite_database).as_role("booking-agent")
    first = good_booking()
    assert _post(agent, first, routed=False).status_code == 200
    # The key again with another body: 409, raised by the decider on either way.
    other = first | {"resource": "lot-7/space-43"}
    conflicts = [_post(agent, other, routed=routed) for routed in (False, True)]
    problems = [assert_problem(r, 409) for r in conflicts]
    assert problems[0] == problems[1]
    # A case type the action type does not list: 422 naming the field, from the decider.
    unlisted = good_booking(case_type="refund.issue")
    problems = [assert_problem(_post(agent, unlisted, routed=r), 422) for r in (False, True)]
    assert problems[0] == problems[1]
    assert [e["field"] for e in problems[0]["errors"]] == ["case_type"]


def test_a_body_the_model_refuses_is_answered_by_fastapi_naming_the_field(
    sqlite_database: Database, serve_gateway: Serve
) -> None:
    agent = serve_gateway(sqlite_database).as_role("booking-agent")
    problem = assert_problem(_post(agent, good_booking(spaces=3), routed=False), 422)
    assert [e["field"] for e in problem["errors"]] == ["spaces"]
