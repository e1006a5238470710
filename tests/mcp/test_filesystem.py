"""End to end: an agent's MCP client (the SDK's own stdio client) in front of
``mandate mcp proxy --workflow files`` in front of the real npm filesystem server, with a real
gateway. Reading runs alone, writing waits for a person, and the ledger holds every step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp_types import ListRootsResult, Root

from tests.mcp.conftest import InThread, Live, decide_when_held, proxied, text_of

pytestmark = pytest.mark.slow


def test_reads_run_writes_wait_for_a_person_and_the_ledger_holds_each_step(
    live: Live, filesystem_server: Path, tmp_path: Path
) -> None:
    token, name = live.token("files-agent", workflow="files")
    notices: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notices.append((progress, message))

    async def agent() -> dict[str, Any]:
        async with proxied(
            live.url, token, str(filesystem_server), str(tmp_path), workflow="files"
        ) as session:
            listed = {tool.name for tool in (await session.list_tools()).tools}
            (tmp_path / "notes.txt").write_text("kept")
            read = await session.call_tool("list_directory", {"path": str(tmp_path)})

            approver = InThread(decide_when_held(live, str(tmp_path / "a.txt"), "approve"))
            written = await session.call_tool(
                "write_file",
                {"path": str(tmp_path / "a.txt"), "content": "hello"},
                progress_callback=on_progress,
            )
            approver.join()

            rejecter = InThread(
                decide_when_held(live, str(tmp_path / "b.txt"), "reject", "not that file")
            )
            refused = await session.call_tool(
                "write_file", {"path": str(tmp_path / "b.txt"), "content": "nope"}
            )
            rejecter.join()
            return {"listed": listed, "read": read, "written": written, "refused": refused}

    answers = anyio.run(agent)
    assert {"list_directory", "write_file", "move_file", "edit_file"} <= answers["listed"]

    read = answers["read"]
    assert not read.is_error
    assert "notes.txt" in text_of(read)
    assert read.structured_content == {"content": "[FILE] notes.txt"}  # as the server sent it

    assert not answers["written"].is_error, text_of(answers["written"])
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert notices, "no progress notification while the call waited"
    assert "waiting for a person" in str(notices[0][1])

    refused = answers["refused"]
    assert refused.is_error
    assert "not that file" in text_of(refused)
    assert not (tmp_path / "b.txt").exists()

    listing, write, rejected = live.actions_of(name)
    assert (listing.action_type, listing.case_type, listing.status) == (
        "list_directory",
        "files.read",
        "succeeded",
    )
    assert live.timeline(listing.id) == ["proposal", "decision", "execution", "outcome"]
    assert (write.action_type, write.case_type, write.status) == (
        "write_file",
        "files.write",
        "succeeded",
    )
    kinds = live.timeline(write.id)
    assert kinds == ["proposal", "decision", "approval", "execution", "outcome"]
    assert (rejected.status, live.timeline(rejected.id)) == (
        "rejected",
        ["proposal", "decision", "rejection"],
    )


def test_the_upstream_keeps_its_own_directories_whatever_roots_the_agent_offers(
    live: Live, filesystem_server: Path, tmp_path: Path
) -> None:
    allowed, elsewhere = tmp_path / "allowed", tmp_path / "elsewhere"
    allowed.mkdir()
    elsewhere.mkdir()
    token, _ = live.token("files-agent", workflow="files")

    async def roots(context: Any) -> ListRootsResult:
        return ListRootsResult(roots=[Root(uri=elsewhere.as_uri(), name="elsewhere")])

    async def agent() -> str:
        async with proxied(
            live.url, token, str(filesystem_server), str(allowed), workflow="files", roots=roots
        ) as session:
            return text_of(await session.call_tool("list_allowed_directories", {}))

    shown = anyio.run(agent)
    assert str(allowed) in shown
    assert str(elsewhere) not in shown


def test_with_the_gateway_down_nothing_is_forwarded(
    live: Live, filesystem_server: Path, tmp_path: Path
) -> None:
    from tests.sdk.conftest import closed_port

    token, _ = live.token("files-agent", workflow="files")
    down = f"http://127.0.0.1:{closed_port()}"

    async def agent() -> tuple[str, Any]:
        async with proxied(
            down, token, str(filesystem_server), str(tmp_path), workflow="files"
        ) as session:
            try:
                await session.list_tools()
            except Exception as exc:
                listing = str(exc)
            else:
                listing = "listed"
            called = await session.call_tool(
                "write_file", {"path": str(tmp_path / "a.txt"), "content": "hello"}
            )
            return listing, called

    listing, called = anyio.run(agent)
    assert listing.startswith("tools not listed: gateway unreachable")
    assert called.is_error
    assert text_of(called).startswith("not decided: gateway unreachable")
    assert not (tmp_path / "a.txt").exists()
