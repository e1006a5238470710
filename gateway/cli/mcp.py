"""``mandate mcp``: Mandate in front of MCP servers, with no change to the agent."""

from __future__ import annotations

import os
from typing import Annotated, Literal

import typer

from gateway.cli.console import fail
from gateway.cli.remote import DEFAULT_URL, GatewayUrl

__all__ = ["mcp_app"]

mcp_app = typer.Typer(
    help="Mandate in front of MCP servers: every tool call an agent makes is proposed first.",
    no_args_is_help=True,
)


@mcp_app.command("proxy")
def mcp_proxy(
    workflow: Annotated[str, typer.Option(help="The workflow the tool calls are proposed in.")],
    upstream: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="-- UPSTREAM_COMMAND [ARGS...]",
            help="The upstream MCP server to launch over stdio (or use --upstream-url).",
            show_default=False,
        ),
    ] = None,
    url: GatewayUrl = DEFAULT_URL,
    on_hold: Annotated[
        Literal["wait", "return"],
        typer.Option(
            help="A held call waits for the approval (sending progress), or returns at once "
            "naming it and is made if approved while the proxy runs."
        ),
    ] = "wait",
    hold_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds a held call waits before it is withdrawn.")
    ] = 300.0,
    upstream_url: Annotated[
        str | None,
        typer.Option(help="A remote upstream MCP server (streamable HTTP) instead of a command."),
    ] = None,
) -> None:
    """An MCP server on stdin/stdout for the agent's client: each tool call becomes a proposal
    with the executor token in MANDATE_TOKEN, and is forwarded upstream only when Mandate
    executes it or a person approves it (README: MCP)."""
    from gateway.client.mcp.proxy import ProxyError, ProxyOptions, run_proxy

    token = os.environ.get("MANDATE_TOKEN")
    if not token:
        raise fail("set MANDATE_TOKEN to the proxy's executor token (mandate token create)")
    options = ProxyOptions(workflow=workflow, on_hold=on_hold, hold_timeout=hold_timeout)
    try:
        run_proxy(
            options,
            gateway_url=url,
            token=token,
            command=upstream or (),
            upstream_url=upstream_url,
            environ=os.environ,
        )
    except ProxyError as exc:
        raise fail(str(exc)) from None
