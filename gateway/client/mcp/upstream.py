"""The upstream MCP server the proxy governs: launched over stdio, or reached over streamable
HTTP, with the MCP SDK's own client session.

As the upstream's client the proxy advertises no capability: no ``roots`` (a filesystem server
would replace its allowed directories with a client's roots), no sampling, no elicitation. A
launched server inherits the proxy's environment except Mandate's own variables: the token that
proposes stays with the proxy.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import mcp_types as types
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from pydantic import BaseModel, ConfigDict

__all__ = ["CLIENT_INFO", "Raw", "connect_upstream", "upstream_environment"]

CLIENT_INFO = types.Implementation(name="mandate-mcp-proxy", version="0.1.0")


class Raw(BaseModel):
    """A result as the upstream sent it (``fields()``): no model of the SDK's in between to
    reshape it, and no output-schema check of the proxy's own (the agent's client makes it)."""

    model_config = ConfigDict(extra="allow")

    def fields(self) -> dict[str, Any]:
        """The result's members, as sent."""
        return dict(self.model_extra or {})


_OURS = "MANDATE_"  # MANDATE_TOKEN, MANDATE_URL: the proxy's, never the upstream's


def upstream_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a launched upstream server gets: the proxy's, without ``MANDATE_*``."""
    return {key: value for key, value in environ.items() if not key.startswith(_OURS)}


@asynccontextmanager
async def connect_upstream(
    *, command: Sequence[str] = (), url: str | None = None, environ: Mapping[str, str]
) -> AsyncIterator[ClientSession]:
    """An initialised client session with the upstream: ``command`` (its program and
    arguments) launched over stdio, or the streamable-HTTP endpoint at ``url``."""
    if bool(command) == (url is not None):
        raise ValueError("name the upstream MCP server: a command or a URL, not both")
    async with AsyncExitStack() as stack:
        if url is not None:
            read, write = await stack.enter_async_context(streamable_http_client(url))
        else:
            server = StdioServerParameters(
                command=command[0], args=list(command[1:]), env=upstream_environment(environ)
            )
            read, write = await stack.enter_async_context(stdio_client(server, errlog=sys.stderr))
        session = await stack.enter_async_context(
            ClientSession(read, write, client_info=CLIENT_INFO)
        )
        await session.initialize()
        yield session
