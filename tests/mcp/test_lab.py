"""The proxy's rules, with the stand-in upstream (``tests/mcp/upstream.py``) behind it: names and
numbers as the ledger records them, malformed calls, an upstream that dies mid-call, held calls
that time out, return at once, or lose their client, and what the upstream may see."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from gateway.client import Conflict, MandateClient
from tests.mcp.conftest import MANDATE, STAND_IN, InThread, Live, decide_when_held, proxied, text_of

pytestmark = pytest.mark.slow


def lab(live: Live) -> tuple[str, str]:
    return live.token("lab-agent", workflow="lab")


def wait_until(predicate: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_camel_case_tool_and_a_float_are_recorded_as_forwarded(
    live: Live, tmp_path: Path
) -> None:
    (tmp_path / "n.txt").write_text("seen")
    token, name = lab(live)

    async def agent() -> tuple[Any, Any]:
        async with proxied(live.url, token, *STAND_IN, str(tmp_path), workflow="lab") as session:
            listed = {tool.name for tool in (await session.list_tools()).tools}
            assert {"readFile", "setRatio", "approve_me"} <= listed
            assert "list_directory" not in listed  # the lab lists no such action type
            read = await session.call_tool("readFile", {"path": "n.txt"})
            ratio = await session.call_tool("setRatio", {"ratio": 1e-7})
            return read, ratio

    read, ratio = anyio.run(agent)
    assert text_of(read) == "seen"
    assert ratio.structured_content == {"received": "1e-07"}  # the very float sent
    reading, setting = live.actions_of(name)
    assert (reading.action_type, reading.status) == ("read.file", "succeeded")
    with MandateClient(live.url, token) as client:
        proposal = client.get_action(setting.id).timeline[0]["body"]["proposal"]
        assert proposal["params"] == {"ratio": "0.0000001"}
        assert proposal["action_type"] == "set.ratio"
        assert proposal["resource"] == "setRatio"  # no resource argument: the tool's name
        assert proposal["context"] == {"mcp": {"tool": "setRatio", "server": "stand-in-upstream"}}
        assert client.get_action(reading.id).timeline[0]["body"]["proposal"]["resource"] == "n.txt"


def test_malformed_arguments_and_unknown_tools_are_mcp_errors_and_nothing_is_proposed(
    live: Live, tmp_path: Path
) -> None:
    token, name = lab(live)

    async def agent() -> list[MCPError]:
        errors = []
        calls: list[tuple[str, dict[str, Any]]] = [
            ("setRatio", {"ratio": "not a number"}),
            ("setRatio", {}),
            ("approve_me", {"note": 7}),
            ("no_such_tool", {}),
            ("bad name!", {}),
        ]
        async with proxied(live.url, token, *STAND_IN, str(tmp_path), workflow="lab") as session:
            for tool, arguments in calls:
                with pytest.raises(MCPError) as caught:
                    await session.call_tool(tool, arguments)
                errors.append(caught.value)
        return errors

    errors = anyio.run(agent)
    assert [error.code for error in errors] == [INVALID_PARAMS] * 5
    assert "invalid arguments for tool setRatio" in errors[0].message
    assert "'ratio' is a required property" in errors[1].message
    assert "note" in errors[2].message
    assert "Unknown tool: no_such_tool" in errors[3].message
    assert "has no action type" in errors[4].message
    assert live.actions_of(name) == []
    assert not (tmp_path / "approved.txt").exists()


def test_an_upstream_that_dies_mid_call_is_a_failed_outcome_and_takes_no_more_calls(
    live: Live, tmp_path: Path
) -> None:
    token, name = lab(live)

    async def agent() -> tuple[Any, Any]:
        async with proxied(live.url, token, *STAND_IN, str(tmp_path), workflow="lab") as session:
            crashed = await session.call_tool("crash", {})
            after = await session.call_tool("environment", {})
            return crashed, after

    crashed, after = anyio.run(agent)
    assert crashed.is_error
    assert "went away during the call of crash" in text_of(crashed)
    assert after.is_error
    assert "upstream MCP server is gone" in text_of(after)
    (action,) = live.actions_of(name)  # the call after the crash was not proposed
    assert action.status == "failed"
    with MandateClient(live.url, token) as client:
        outcome, handed = client.get_action(action.id).timeline[-2:]
    assert outcome["kind"] == "outcome"
    assert handed["kind"] == "exception"  # the failure is handed to people
    assert handed["body"]["event"] == "opened"
    assert outcome["body"]["status"] == "failed"
    assert "went away" in outcome["body"]["detail"]["error"]


def test_a_tool_error_is_returned_as_sent_and_recorded_as_failed(
    live: Live, tmp_path: Path
) -> None:
    token, name = lab(live)

    async def agent() -> Any:
        async with proxied(live.url, token, *STAND_IN, str(tmp_path), workflow="lab") as session:
            return await session.call_tool("failing", {})

    result = anyio.run(agent)
    assert result.is_error
    assert "the disk is full" in text_of(result)
    (action,) = live.actions_of(name)
    with MandateClient(live.url, token) as client:
        recorded, handed = client.get_action(action.id).timeline[-2:]
    outcome = recorded["body"]
    assert (recorded["kind"], handed["kind"]) == ("outcome", "exception")
    assert outcome["status"] == "failed"
    assert "the disk is full" in outcome["detail"]["error"]


def test_a_rejection_names_its_reasons_and_never_calls_the_tool(live: Live, tmp_path: Path) -> None:
    token, name = lab(live)
    outsider, _ = live.token("booking-agent")

    async def agent(token: str) -> Any:
        async with proxied(live.url, token, *STAND_IN, str(tmp_path), workflow="lab") as session:
            return await session.call_tool("approve_me", {"note": "x", "refuse": True})

    refused = anyio.run(agent, token)
    assert refused.is_error
    assert "refused: the lab refuses it" in text_of(refused)
    assert "the tool was not called" in text_of(refused)
    (action,) = live.actions_of(name)
    assert (action.verdict, live.timeline(action.id)) == ("reject", ["proposal", "decision"])

    outside = anyio.run(agent, outsider)
    assert outside.is_error
    assert "not decided: role 'booking-agent' has no part in workflow 'lab'" in text_of(outside)
    assert not (tmp_path / "approved.txt").exists()


def test_the_upstream_never_sees_the_token(live: Live, tmp_path: Path) -> None:
    token, _ = lab(live)

    async def agent() -> Any:
        async with proxied(
            live.url,
            token,
            *STAND_IN,
            str(tmp_path),
            workflow="lab",
            env={"UPSTREAM_MARKER": "passed on"},
        ) as session:
            return await session.call_tool("environment", {})

    seen = anyio.run(agent).structured_content
    assert seen == {"MANDATE_TOKEN": None, "MANDATE_URL": None, "UPSTREAM_MARKER": "passed on"}


def test_a_hold_nobody_decides_in_time_is_withdrawn(live: Live, tmp_path: Path) -> None:
    token, name = lab(live)

    async def agent() -> Any:
        async with proxied(
            live.url, token, *STAND_IN, str(tmp_path), workflow="lab", hold_timeout=1
        ) as session:
            return await session.call_tool("approve_me", {"note": "too late"})

    result = anyio.run(agent)
    assert result.is_error
    assert "within 1 s; the proposal was withdrawn" in text_of(result)
    (action,) = live.actions_of(name)
    assert action.status == "withdrawn"
    assert live.timeline(action.id) == ["proposal", "decision", "withdrawal"]
    with MandateClient(live.url, live.token("approver")[0]) as approver:
        (closed,) = approver.approvals("withdrawn")[:1]
        assert closed.action_id == action.id
        with pytest.raises(Conflict):
            approver.decide(closed.id, "approve")
    assert not (tmp_path / "approved.txt").exists()


def test_a_hold_whose_client_goes_away_is_withdrawn(live: Live, tmp_path: Path) -> None:
    token, name = lab(live)

    async def agent() -> None:
        async with (
            proxied(live.url, token, *STAND_IN, str(tmp_path), workflow="lab") as session,
            anyio.create_task_group() as tasks,
        ):
            tasks.start_soon(session.call_tool, "approve_me", {"note": "left"})
            with anyio.fail_after(30):
                while not live.actions_of(name):
                    await anyio.sleep(0.05)
            tasks.cancel_scope.cancel()  # the agent gives up, then exits

    anyio.run(agent)
    assert wait_until(lambda: live.actions_of(name)[0].status == "withdrawn")
    (action,) = live.actions_of(name)
    with MandateClient(live.url, token) as client:
        withdrawal = client.get_action(action.id).timeline[-1]
    assert withdrawal["kind"] == "withdrawal"
    assert "stopped waiting" in withdrawal["body"]["reason"]


def test_on_hold_return_answers_at_once_and_makes_the_call_once_approved(
    live: Live, tmp_path: Path
) -> None:
    token, name = lab(live)

    async def agent() -> Any:
        async with proxied(
            live.url, token, *STAND_IN, str(tmp_path), workflow="lab", on_hold="return"
        ) as session:
            answer = await session.call_tool("approve_me", {"note": "later"})
            approver = InThread(decide_when_held(live, "later", "approve"))
            approver.join()
            with anyio.fail_after(30):
                while live.actions_of(name)[0].status != "succeeded":
                    await anyio.sleep(0.05)
            return answer

    answer = anyio.run(agent)
    assert answer.is_error
    (action,) = live.actions_of(name)
    assert "held for approval apr_" in text_of(answer)
    assert action.id in text_of(answer)
    assert (tmp_path / "approved.txt").read_text() == "later"
    assert live.timeline(action.id) == ["proposal", "decision", "approval", "execution", "outcome"]


def test_on_hold_return_withdraws_what_still_waits_when_the_proxy_stops(
    live: Live, tmp_path: Path
) -> None:
    token, name = lab(live)

    async def agent() -> Any:
        async with proxied(
            live.url, token, *STAND_IN, str(tmp_path), workflow="lab", on_hold="return"
        ) as session:
            return await session.call_tool("approve_me", {"note": "abandoned"})

    assert anyio.run(agent).is_error
    assert wait_until(lambda: live.actions_of(name)[0].status == "withdrawn")


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--workflow", "lab", "--", "true"], {}, "set MANDATE_TOKEN"),
        (["--workflow", "lab"], {"MANDATE_TOKEN": "mdt_x"}, "name the upstream MCP server"),
        (
            ["--workflow", "lab", "--", "/no/such/server"],
            {"MANDATE_TOKEN": "mdt_x"},
            "did not start or answer",
        ),
    ],
)
def test_the_command_refuses_what_it_cannot_run_in_one_line(
    args: list[str], env: dict[str, str], says: str
) -> None:
    done = subprocess.run(
        [str(MANDATE), "mcp", "proxy", *args],
        env={"PATH": "/usr/bin:/bin"} | env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2, done.stderr
    assert says in done.stderr
    assert "Traceback" not in done.stderr


def _proxy_pid(marker: str) -> int:
    """The process of ``mandate mcp proxy`` whose command line holds ``marker`` (Linux)."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"proxy" in cmdline and marker.encode() in cmdline:
            return int(proc.name)
    raise AssertionError(f"no proxy with {marker} in its command line")


def test_a_hold_whose_proxy_is_stopped_with_sigterm_is_withdrawn(
    live: Live, tmp_path: Path
) -> None:
    token, name = lab(live)
    marker = "287.5"  # a --hold-timeout no other test uses: finds this proxy's process

    async def agent() -> None:
        async with (
            proxied(
                live.url, token, *STAND_IN, str(tmp_path), workflow="lab", hold_timeout=287.5
            ) as session,
            anyio.create_task_group() as tasks,
        ):
            tasks.start_soon(session.call_tool, "approve_me", {"note": "stopped"})
            with anyio.fail_after(30):
                while not live.actions_of(name):
                    await anyio.sleep(0.05)
            os.kill(_proxy_pid(marker), signal.SIGTERM)
            with anyio.fail_after(30):
                while live.actions_of(name)[0].status == "held":
                    await anyio.sleep(0.05)
            tasks.cancel_scope.cancel()

    anyio.run(agent)
    (action,) = live.actions_of(name)
    assert action.status == "withdrawn"
    assert not (tmp_path / "approved.txt").exists()
