"""``--upstream-url``: the proxy in front of a remote MCP server over streamable HTTP (the
stand-in on the SDK's own server classes, served by uvicorn on loopback), with the files
workflow: a listing runs alone, a write waits for a person, a rejected one is never made."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvicorn

from gateway.server.serving import free_port
from tests.mcp.conftest import InThread, Live, decide_when_held, proxied, text_of
from tests.mcp.upstream import make_server

pytestmark = pytest.mark.slow


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[str]:
    """The stand-in served over streamable HTTP; its URL."""
    port = free_port()
    app = make_server(tmp_path).streamable_http_app()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "the remote did not start"
        assert time.monotonic() < deadline, "the remote did not start in time"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/mcp"
    server.should_exit = True
    thread.join(timeout=10)


def test_a_remote_upstream_is_governed_like_a_local_one(
    live: Live, remote: str, tmp_path: Path
) -> None:
    token, name = live.token("files-agent", workflow="files")
    (tmp_path / "old.txt").write_text("x")

    async def agent() -> dict[str, Any]:
        async with proxied(live.url, token, workflow="files", upstream_url=remote) as session:
            listed = {tool.name for tool in (await session.list_tools()).tools}
            read = await session.call_tool("list_directory", {"path": str(tmp_path)})
            approver = InThread(decide_when_held(live, str(tmp_path / "a.txt"), "approve"))
            written = await session.call_tool(
                "write_file", {"path": str(tmp_path / "a.txt"), "content": "remote"}
            )
            approver.join()
            rejecter = InThread(decide_when_held(live, str(tmp_path / "b.txt"), "reject", "no"))
            refused = await session.call_tool(
                "write_file", {"path": str(tmp_path / "b.txt"), "content": "never"}
            )
            rejecter.join()
            return {"listed": listed, "read": read, "written": written, "refused": refused}

    answers = anyio.run(agent)
    # The stand-in's lab tools are not the files workflow's: left out of the list.
    assert answers["listed"] == {"list_directory", "write_file"}
    assert answers["read"].structured_content == {"entries": ["old.txt"]}
    assert not answers["written"].is_error, text_of(answers["written"])
    assert (tmp_path / "a.txt").read_text() == "remote"
    assert answers["refused"].is_error
    assert "rejected" in text_of(answers["refused"])
    assert not (tmp_path / "b.txt").exists()

    listing, write, rejected = live.actions_of(name)
    assert live.timeline(listing.id) == ["proposal", "decision", "execution", "outcome"]
    kinds = live.timeline(write.id)
    assert kinds == ["proposal", "decision", "approval", "execution", "outcome"]
    assert live.timeline(rejected.id) == ["proposal", "decision", "rejection"]
