"""``GET /v1/workflows/{workflow}``: what the MCP proxy (or any executor) learns about the
workflow it works in, and who may ask."""

from __future__ import annotations

from tests.gateway.support import Gateway, assert_problem


def test_an_executor_learns_its_workflows_action_types_and_what_it_may_propose(
    sqlite_gateway: Gateway,
) -> None:
    agent = sqlite_gateway.as_role("files-agent", workflow="files")
    answer = agent.get("/v1/workflows/files")
    assert answer.status_code == 200, answer.text
    view = answer.json()
    assert (view["workflow"], view["role"]) == ("files", "files-agent")
    assert "filesystem" in view["description"]
    by_type = {item["action_type"]: item for item in view["action_types"]}
    assert by_type["write_file"] == {
        "action_type": "write_file",
        "case_types": ["files.write"],
        "may_propose": True,
        "resource_argument": "path",
    }
    assert by_type["move_file"]["resource_argument"] == "source"
    assert by_type["read_multiple_files"]["resource_argument"] == "paths"
    assert by_type["list_allowed_directories"]["resource_argument"] is None
    assert by_type["edit_file"]["case_types"] == ["files.write", "files.read"]
    assert all(item["may_propose"] for item in view["action_types"])

    # A parking agent learns which of parking's action types are its own.
    booking = sqlite_gateway.as_role("booking-agent").get("/v1/workflows/parking").json()
    mine = {item["action_type"] for item in booking["action_types"] if item["may_propose"]}
    assert mine == {"booking.create", "booking.modify", "booking.cancel"}
    assert len(booking["action_types"]) == 5


def test_only_those_with_a_part_in_the_workflow_may_look(sqlite_gateway: Gateway) -> None:
    refused = assert_problem(
        sqlite_gateway.as_role("booking-agent").get("/v1/workflows/files"), 403
    )
    assert "no part in workflow 'files'" in refused["detail"]
    bound = sqlite_gateway.as_role("files-agent", workflow="files")
    refused = assert_problem(bound.get("/v1/workflows/parking"), 403)
    assert "bound to workflow 'files'" in refused["detail"]
    for role in ("approver", "governor", "auditor", "policy-admin"):
        view = sqlite_gateway.as_role(role).get("/v1/workflows/files").json()
        assert not any(item["may_propose"] for item in view["action_types"]), role
    assert_problem(sqlite_gateway.as_role("files-agent").get("/v1/workflows/laundry"), 404)
    assert_problem(sqlite_gateway.as_role("files-agent").get("/v1/workflows/No-Such"), 422)
    assert_problem(sqlite_gateway.client().get("/v1/workflows/files"), 401)
