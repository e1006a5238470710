"""A call cancelled while it is being proposed: the gateway may have decided it already, and
the proxy has no answer yet. It asks again with the same idempotency key and settles what was
decided, so no held proposal is left for a person to approve with nobody to make the call.

The proxy runs in this process here (``Proxy``, the handlers the MCP server calls), with the
stand-in upstream over stdio and the real gateway; its gateway client's HTTP transport is the
real one, with the answers to proposals held back a while, so that the cancellation lands
after the gateway recorded the proposal and before the proxy learnt the verdict.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp_types as types
import pytest

from gateway.client import AsyncMandateClient
from gateway.client.mcp.proxy import Proxy, ProxyOptions
from gateway.client.mcp.upstream import connect_upstream
from tests.mcp.conftest import STAND_IN, Live

pytestmark = pytest.mark.slow


class SlowAnswers(httpx.AsyncHTTPTransport):
    """Real HTTP; the answer to a proposal reaches the caller a second late."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if request.method == "POST" and request.url.path == "/v1/actions":
            await anyio.sleep(1.0)
        return response


@pytest.mark.parametrize(
    ("tool", "settled"), [("approve_me", "withdrawn"), ("environment", "failed")]
)
def test_a_call_cancelled_while_proposed_is_settled(
    live: Live, tmp_path: Path, tool: str, settled: str
) -> None:
    token, name = live.token("lab-agent", workflow="lab")
    arguments = {"note": "cancelled"} if tool == "approve_me" else {}

    async def scenario() -> None:
        async with (
            AsyncMandateClient(live.url, token, transport=SlowAnswers()) as gateway,
            connect_upstream(command=[*STAND_IN, str(tmp_path)], environ=os.environ) as upstream,
            anyio.create_task_group() as tasks,
        ):
            proxy = Proxy(gateway, upstream, ProxyOptions(workflow="lab"), tasks)
            params = types.CallToolRequestParams(name=tool, arguments=arguments)
            async with anyio.create_task_group() as call:
                no_context: Any = None  # the request's context is not used before the verdict
                call.start_soon(proxy.call_tool, no_context, params)
                with anyio.fail_after(30):
                    while not live.actions_of(name):  # recorded; the answer is on its way
                        await anyio.sleep(0.01)
                call.cancel_scope.cancel()
            tasks.cancel_scope.cancel()

    anyio.run(scenario)
    (action,) = live.actions_of(name)  # asking again proposed nothing new
    assert action.status == settled
    if tool == "approve_me":
        assert not (tmp_path / "approved.txt").exists()
