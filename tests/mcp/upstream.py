"""A stand-in upstream MCP server for the proxy's tests, built on the MCP SDK's own ``MCPServer``.

It serves, on a directory:

- ``list_directory`` and ``write_file``, as the files workflow knows them (the remote upstream of
  ``--upstream-url``);
- the lab workflow's tools (``tests/mcp/conftest.py``): ``readFile`` (a camelCase name),
  ``setRatio`` (a float argument, answered with the float it received), ``approve_me`` (held),
  ``environment`` (which variables it was started with), ``crash`` (the process dies mid-call)
  and ``failing`` (a tool result with ``isError``).

``python -m tests.mcp.upstream DIR`` serves it over stdio.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError


def make_server(root: Path) -> MCPServer:
    """The stand-in server, acting on files under ``root``."""
    server = MCPServer("stand-in-upstream", instructions="A stand-in for the proxy's tests.")

    @server.tool()
    def list_directory(path: str) -> dict[str, list[str]]:
        """The names in a directory."""
        return {"entries": sorted(p.name for p in Path(path).iterdir())}

    @server.tool()
    def write_file(path: str, content: str) -> str:
        """Write a file."""
        Path(path).write_text(content)
        return f"wrote {len(content)} characters to {path}"

    @server.tool(name="readFile")
    def read_file(path: str) -> str:
        """Read a file (a camelCase tool name)."""
        return (root / path).read_text()

    @server.tool(name="setRatio")
    def set_ratio(ratio: float) -> dict[str, str]:
        """Answer with the exact float received."""
        return {"received": repr(ratio)}

    @server.tool()
    def approve_me(note: str, refuse: bool = False) -> str:
        """A call the lab workflow holds for a person (and refuses when asked to)."""
        (root / "approved.txt").write_text(note)
        return f"done: {note}"

    @server.tool()
    def environment() -> dict[str, str | None]:
        """What this process was started with, of the variables the tests look at."""
        names = ("MANDATE_TOKEN", "MANDATE_URL", "UPSTREAM_MARKER")
        return {name: os.environ.get(name) for name in names}

    @server.tool()
    def crash() -> str:
        """The process dies in the middle of the call."""
        os._exit(3)

    @server.tool()
    def failing() -> str:
        """A tool that reports an error in its result."""
        raise ToolError("the disk is full")

    return server


if __name__ == "__main__":
    make_server(Path(sys.argv[1])).run("stdio")
