"""``mandate mcp proxy``: an MCP server for the agent's client whose every tool call is a
proposal to Mandate first, in front of the upstream MCP server that carries it out.

For each ``tools/call``:

1. The tool's name becomes the action type (``gateway.client.mcp.naming``); its arguments are
   checked against the tool's input schema and become the params
   (``gateway.client.mcp.arguments``), the argument the workflow names becomes the resource.
   Malformed arguments are an MCP error (invalid params) and nothing is proposed.
2. The proposal goes to the gateway with the proxy's executor token; the bundle decides the
   case type. No answer (the gateway is unreachable, or fails closed) is a tool result with
   ``isError`` saying "not decided: …", and nothing is forwarded.
3. ``reject``: an ``isError`` result naming each reason's code and message; the upstream is
   never called.
4. ``execute``: the call is forwarded upstream, its result returned as the upstream sent it,
   and its outcome reported to the gateway (``failed`` with the upstream's error, when it
   gave one).
5. ``hold``, ``on_hold="wait"``: the call waits for the approval, sending progress
   notifications while it waits, and is forwarded once approved and handed over to its
   executor; rejected, expired or withdrawn, it is an ``isError`` result with the reason. When
   nobody decides within ``hold_timeout`` seconds, or the client stops waiting (cancels, goes
   away), the proposal is withdrawn, so nobody approves a call no one will make.
   ``on_hold="return"``: an ``isError`` result at once naming the approval; if it is approved
   while the proxy runs, the proxy makes the call then and reports its outcome (what still
   waits when the proxy stops is withdrawn).

``tools/list`` passes the upstream's list on, without the tools the token's role may never
call in the workflow (``GET /v1/workflows/{workflow}``).

This module needs the MCP SDK, the SDK client (``gateway.client``) and the shared models: none
of the gateway's server side.
"""

from __future__ import annotations

import logging
import signal
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import anyio.abc
import mcp_types as types
from mcp import ClientSession
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, INTERNAL_ERROR, INVALID_PARAMS

from gateway.client import (
    ActionRejected,
    AsyncMandateClient,
    Conflict,
    InvalidInput,
    MandateError,
    Unavailable,
    Unreachable,
)
from gateway.client.mcp.arguments import (
    ArgumentError,
    check_arguments,
    params_from_arguments,
    resource_from_arguments,
)
from gateway.client.mcp.naming import action_type_from_tool
from gateway.client.mcp.upstream import CLIENT_INFO, Raw, connect_upstream
from gateway.schemas import ActionView, Verdict, WorkflowView

__all__ = ["Proxy", "ProxyError", "ProxyOptions", "run_proxy", "serve_proxy"]

log = logging.getLogger("mandate.mcp")

OnHold = Literal["wait", "return"]
_FIRST_POLL = 0.05  # seconds before the first look at a held action; growing by half...
_POLL_MAX = 0.5  # ...up to this
_GRACE = 5.0  # seconds a withdrawal or report may take while the proxy is stopping
_HANDOVER = 30.0  # seconds an action approved at the last moment may take to be handed over


@dataclass(frozen=True)
class ProxyOptions:
    """How the proxy proposes and waits. ``progress_every``: seconds between progress
    notifications while a call waits for a person (clients give up after about 60 s without
    one); ``workflow_ttl``: how long what the gateway said of the workflow is reused."""

    workflow: str
    on_hold: OnHold = "wait"
    hold_timeout: float = 300.0
    progress_every: float = 5.0
    workflow_ttl: float = 5.0


Report = Callable[[float, str], Awaitable[None]]


class Proxy:
    """The tool handlers of one proxy: its gateway client, its upstream session, and the task
    group in which calls held with ``on_hold="return"`` wait for their approval."""

    def __init__(
        self,
        gateway: AsyncMandateClient,
        upstream: ClientSession,
        options: ProxyOptions,
        tasks: anyio.abc.TaskGroup,
    ) -> None:
        self.gateway = gateway
        self.upstream = upstream
        self.options = options
        self._tasks = tasks
        self._schemas: dict[str, Mapping[str, Any] | None] = {}
        self._view: tuple[float, WorkflowView] | None = None
        self._gone: str | None = None  # why the upstream can take no more calls
        info = upstream.server_info
        self._server = info.name if info is not None else "unknown"

    def server(self) -> Server[Any]:
        """The MCP server the agent's client talks to: tools only."""
        initialized = self.upstream.initialize_result
        server: Server[Any] = Server(
            "mandate-mcp-proxy",
            version=CLIENT_INFO.version,
            instructions=initialized.instructions if initialized is not None else None,
        )
        server.add_request_handler("tools/list", types.PaginatedRequestParams, self.list_tools)
        server.add_request_handler("tools/call", types.CallToolRequestParams, self.call_tool)
        return server

    # -- tools/list --------------------------------------------------------------------------

    async def list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams
    ) -> dict[str, Any]:
        """The upstream's tools, as it lists them, less those the token's role may never call."""
        try:
            view = await self._workflow(fresh=True)
        except MandateError as exc:
            raise MCPError(INTERNAL_ERROR, f"tools not listed: {_why(exc)}") from None
        listed = await self._list(params.cursor)
        allowed = {item.action_type for item in view.action_types if item.may_propose}
        listed["tools"] = [
            tool
            for tool in listed.get("tools", [])
            if action_type_from_tool(str(tool.get("name", ""))) in allowed
        ]
        return listed

    async def _list(self, cursor: str | None) -> dict[str, Any]:
        """One page of the upstream's tools; their input schemas are kept for checking calls."""
        page = types.PaginatedRequestParams(cursor=cursor) if cursor is not None else None
        answer = await self.upstream.send_request(types.ListToolsRequest(params=page), Raw)
        listed = answer.fields()
        for tool in listed.get("tools", []):
            if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                schema = tool.get("inputSchema")
                self._schemas[tool["name"]] = schema if isinstance(schema, dict) else None
        return listed

    async def _schema(self, name: str) -> Mapping[str, Any] | None:
        """The input schema of the upstream's tool ``name`` (listing all its tools again when
        it is not known yet); an MCP error when the upstream has no such tool."""
        if name not in self._schemas:
            cursor: str | None = None
            while True:
                listed = await self._list(cursor)
                cursor = listed.get("nextCursor")
                if not isinstance(cursor, str) or name in self._schemas:
                    break
        if name not in self._schemas:
            raise MCPError(INVALID_PARAMS, f"Unknown tool: {name}")
        return self._schemas[name]

    async def _workflow(self, *, fresh: bool = False) -> WorkflowView:
        now = anyio.current_time()
        if fresh or self._view is None or now - self._view[0] > self.options.workflow_ttl:
            self._view = (now, await self.gateway.workflow(self.options.workflow))
        return self._view[1]

    # -- tools/call --------------------------------------------------------------------------

    async def call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> dict[str, Any]:
        """Propose the call; forward it, refuse it, or wait for a person, as the gateway says."""
        name, arguments = params.name, dict(params.arguments or {})
        action_type = action_type_from_tool(name)
        if action_type is None:
            raise MCPError(
                INVALID_PARAMS,
                f"tool {name!r} has no action type (a name of 1 to 128 of A-Z a-z "
                "0-9 _ . - whose action type fits in 128): it cannot be proposed",
            )
        try:
            check_arguments(await self._schema(name), arguments)
            recorded = params_from_arguments(arguments)
        except ArgumentError as exc:
            raise MCPError(INVALID_PARAMS, f"invalid arguments for tool {name}: {exc}") from None
        if self._gone is not None:
            return _refusal(f"not forwarded: the upstream MCP server is gone ({self._gone})")
        proposal: dict[str, Any] | None = None
        try:
            view = await self._workflow()
            argument = next(
                (a.resource_argument for a in view.action_types if a.action_type == action_type),
                None,
            )
            proposal = {
                "workflow": self.options.workflow,
                "action_type": action_type,
                "resource": resource_from_arguments(arguments, argument, name),
                "params": recorded,
                "context": {"mcp": {"tool": name, "server": self._server}},
                "idempotency_key": f"mcp-{uuid.uuid4().hex}",
            }
            verdict = await self.gateway.propose(**proposal)
        except anyio.get_cancelled_exc_class():
            if proposal is not None:
                await self._settle_cancelled(proposal)
            raise
        except MandateError as exc:
            return _refusal(f"not decided: {_why(exc)}")
        if verdict.verdict == "reject":
            return _refusal(f"{ActionRejected(verdict)}; the tool was not called")
        if verdict.execution is None or verdict.execution.adapter != "callback":
            return _refusal(_not_ours(verdict))
        if verdict.verdict == "execute":
            return await self._forward(verdict.action_id, name, arguments, ctx)
        if self.options.on_hold == "return":
            self._tasks.start_soon(self._carry_out_later, verdict, name, arguments)
            return _refusal(
                f"held for approval {_approval(verdict)} ({_reasons(verdict)}): not carried out "
                "now. If it is approved while this proxy runs, the proxy makes the call then and "
                f"reports its outcome (action {verdict.action_id})."
            )
        return await self._wait_then_forward(verdict, name, arguments, ctx)

    async def _wait_then_forward(
        self,
        verdict: Verdict,
        name: str,
        arguments: dict[str, Any],
        ctx: ServerRequestContext[Any],
    ) -> dict[str, Any]:
        approval, timeout = _approval(verdict), self.options.hold_timeout

        async def report(elapsed: float, message: str) -> None:
            try:
                await ctx.session.report_progress(elapsed, timeout, message)
            except Exception:  # the client went away: cancellation follows
                log.debug("a progress notification for %s was not sent", approval, exc_info=True)

        view: ActionView | None = None
        try:
            with anyio.move_on_after(timeout):
                view = await self._decided(verdict, report)
        except anyio.get_cancelled_exc_class():
            await self._withdraw_quietly(verdict, "the MCP client stopped waiting for the call")
            raise
        except MandateError as exc:
            return _refusal(f"not carried out: {_why(exc)}")
        if view is None:
            why = f"nobody decided approval {approval} within {timeout:g} s"
            try:
                view = await self._withdraw(verdict, f"the MCP call gave up waiting: {why}")
            except MandateError as exc:
                return _refusal(
                    f"not carried out: {why}, and the proposal could not be withdrawn "
                    f"({_why(exc)}): if it is approved now, nobody makes the call"
                )
            if view is None:
                return _refusal(f"not carried out: {why}; the proposal was withdrawn")
        return await self._carry_out(verdict, view, name, arguments, ctx)

    async def _carry_out_later(
        self, verdict: Verdict, name: str, arguments: dict[str, Any]
    ) -> None:
        """``on_hold="return"``: wait for the decision as long as the proxy runs; make the call
        if it is approved."""
        try:
            view = await self._decided(verdict, None)
        except anyio.get_cancelled_exc_class():
            await self._withdraw_quietly(
                verdict, "the MCP proxy stopped: nobody will make the call"
            )
            raise
        except MandateError as exc:
            log.error("gave up waiting for %s: %s", verdict.action_id, exc)
            return
        try:
            result = await self._carry_out(verdict, view, name, arguments, None)
        except MCPError as exc:  # the upstream's own error: recorded as the outcome already
            log.warning("held call %s of %s failed upstream: %s", verdict.action_id, name, exc)
            return
        if result.get("isError"):
            log.warning("held call %s of %s: %s", verdict.action_id, name, _text(result))
        else:
            log.info("held call %s of %s was approved and made", verdict.action_id, name)

    async def _decided(self, verdict: Verdict, report: Report | None) -> ActionView:
        """Look at the held action, with growing pauses, until it is decided and (if approved)
        handed over to its executor; ``report`` is told every ``progress_every`` seconds. A
        gateway that does not answer for a while is looked at again."""
        started = anyio.current_time()
        next_report = started
        pause = _FIRST_POLL
        while True:
            now = anyio.current_time()
            if report is not None and now >= next_report:
                waited = now - started
                await report(
                    waited,
                    f"held for approval {_approval(verdict)} ({_reasons(verdict)}): waiting for "
                    f"a person, {waited:.0f} s of {self.options.hold_timeout:g} s",
                )
                next_report = now + self.options.progress_every
            try:
                view = await self.gateway.get_action(verdict.action_id)
            except Unavailable as exc:
                log.warning("%s: looking again shortly", exc)
            else:
                if _settled(view):
                    return view
            wake = pause if report is None else min(pause, next_report - anyio.current_time())
            await anyio.sleep(max(0.0, wake))
            pause = min(_POLL_MAX, pause * 1.5)

    async def _settle_cancelled(self, proposal: dict[str, Any]) -> None:
        """The client cancelled the call while it was being proposed: the gateway may have
        decided it. Ask again with the same idempotency key (answered the recorded verdict,
        writing nothing) and settle it: withdraw a hold, record an execution never made."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(_GRACE):
            try:
                verdict = await self.gateway.propose(**proposal)
                if verdict.verdict == "hold":
                    await self._withdraw(verdict, "the MCP client cancelled the call")
                elif verdict.verdict == "execute":
                    never = "not made: the MCP client cancelled the call before it was forwarded"
                    await self._report(verdict.action_id, "failed", {"error": never})
            except MandateError as exc:
                log.error("a cancelled call's proposal was not settled: %s", exc)

    async def _withdraw(self, verdict: Verdict, reason: str) -> ActionView | None:
        """Withdraw the held action: None once withdrawn; the action as it stands if it was
        decided just before (that decision stands). MandateError when the gateway does not
        take the withdrawal."""
        try:
            await self.gateway.withdraw(verdict.action_id, reason)
        except Conflict:
            with anyio.move_on_after(_HANDOVER):
                return await self._decided(verdict, None)
            return await self.gateway.get_action(verdict.action_id)
        return None

    async def _withdraw_quietly(self, verdict: Verdict, reason: str) -> None:
        """``_withdraw`` while the call is being cancelled: shielded, bounded, and logged when
        it fails."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(_GRACE):
            try:
                await self._withdraw(verdict, reason)
            except MandateError as exc:
                log.error(
                    "%s was not withdrawn (%s): if it is approved now, nobody makes the call",
                    verdict.action_id,
                    exc,
                )

    async def _carry_out(
        self,
        verdict: Verdict,
        view: ActionView,
        name: str,
        arguments: dict[str, Any],
        ctx: ServerRequestContext[Any] | None,
    ) -> dict[str, Any]:
        """The call once its held action is decided: forwarded if approved and handed over."""
        if view.status in ("rejected", "expired", "withdrawn"):
            return _refusal(f"{ActionRejected(verdict, view)}; the tool was not called")
        if view.status != "approved" or not _handed_over(view):
            return _refusal(f"not carried out here: action {view.action_id} is {view.status}")
        if self._gone is not None:
            await self._report(view.action_id, "failed", {"error": self._gone})
            return _refusal(f"not forwarded: the upstream MCP server is gone ({self._gone})")
        return await self._forward(view.action_id, name, arguments, ctx)

    async def _forward(
        self,
        action_id: str,
        name: str,
        arguments: dict[str, Any],
        ctx: ServerRequestContext[Any] | None,
    ) -> dict[str, Any]:
        """Make the call upstream, report its outcome, and return the upstream's result."""

        async def relay(progress: float, total: float | None, message: str | None) -> None:
            if ctx is not None:
                await ctx.session.report_progress(progress, total, message)

        request = types.CallToolRequest(
            params=types.CallToolRequestParams(name=name, arguments=arguments)
        )
        try:
            answer = await self.upstream.send_request(request, Raw, progress_callback=relay)
        except MCPError as exc:
            if exc.code != CONNECTION_CLOSED:  # the upstream's own error, passed on as sent
                await self._report(action_id, "failed", {"error": exc.message, "code": exc.code})
                raise
            return await self._lost(action_id, name, exc.message)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            return await self._lost(action_id, name, f"{type(exc).__name__}: {exc}")
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True), anyio.move_on_after(_GRACE):
                unknown = "the MCP client cancelled the call while the upstream server made it"
                await self._report(action_id, "failed", {"error": unknown})
            raise
        result = answer.fields()
        if result.get("isError") is True:
            await self._report(action_id, "failed", {"error": _text(result)})
        else:
            await self._report(action_id, "succeeded", {})
        return result

    async def _lost(self, action_id: str, name: str, why: str) -> dict[str, Any]:
        """The upstream went away during the call: it takes no more calls from this proxy."""
        self._gone = why
        await self._report(
            action_id, "failed", {"error": f"the upstream MCP server went away: {why}"}
        )
        return _refusal(
            f"the upstream MCP server went away during the call of {name} ({why}); the "
            f"outcome of action {action_id} is recorded as failed"
        )

    async def _report(
        self, action_id: str, status: Literal["succeeded", "failed"], details: dict[str, Any]
    ) -> None:
        try:
            await self.gateway.report_outcome(action_id, status, details)
        except MandateError as exc:
            log.error("the outcome of %s (%s) was not recorded: %s", action_id, status, exc)


async def serve_proxy(
    options: ProxyOptions,
    *,
    gateway_url: str,
    token: str,
    command: Sequence[str] = (),
    upstream_url: str | None = None,
    environ: Mapping[str, str],
) -> None:
    """Run the proxy on this process's stdin and stdout until the agent's client goes away
    (closes stdin, or sends SIGTERM or SIGINT); then withdraw what still waits for a person.
    ProxyError when the upstream does not start or answer."""
    async with AsyncExitStack() as stack:
        gateway = await stack.enter_async_context(AsyncMandateClient(gateway_url, token))
        try:
            upstream = await stack.enter_async_context(
                connect_upstream(command=command, url=upstream_url, environ=environ)
            )
        except Exception as exc:  # whatever the transport raised, wrapped in task groups
            cause = _first(exc)
            raise ProxyError(
                f"the upstream MCP server did not start or answer: {cause} ({type(cause).__name__})"
            ) from None
        tasks = await stack.enter_async_context(anyio.create_task_group())
        proxy = Proxy(gateway, upstream, options, tasks)
        server = proxy.server()
        async with anyio.create_task_group() as serving:
            serving.start_soon(_stop_on_signal, serving.cancel_scope)
            async with stdio_server() as (read, write):
                await server.run(read, write, server.create_initialization_options())
            serving.cancel_scope.cancel()
        tasks.cancel_scope.cancel()


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    """Stop serving on SIGTERM or SIGINT as when stdin closes: the calls in flight are
    cancelled, and what waits for a person is withdrawn (many clients stop a server so)."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()
            return


class ProxyError(Exception):
    """The proxy cannot run as asked (no upstream, or one that does not start or answer);
    the message says why in one line."""


def run_proxy(
    options: ProxyOptions,
    *,
    gateway_url: str,
    token: str,
    command: Sequence[str] = (),
    upstream_url: str | None = None,
    environ: Mapping[str, str],
) -> None:
    """``serve_proxy`` from synchronous code (the command line): returns when the agent's
    client goes away; ProxyError when the proxy cannot run as asked."""
    if bool(command) == (upstream_url is not None):
        raise ProxyError("name the upstream MCP server: a command after --, or --upstream-url")
    try:
        anyio.run(
            lambda: serve_proxy(
                options,
                gateway_url=gateway_url,
                token=token,
                command=command,
                upstream_url=upstream_url,
                environ=environ,
            )
        )
    except BaseExceptionGroup as group:  # a task group's wrapping of one
        first = _first(group)
        if isinstance(first, ProxyError):
            raise first from None
        raise


def _first(error: BaseException) -> BaseException:
    """The first error inside nested exception groups (task groups wrap what they raise)."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


# -- answers ------------------------------------------------------------------------------------


def _refusal(message: str) -> dict[str, Any]:
    """A tool result that tells the agent the call was not made (or failed), and why."""
    return {"content": [{"type": "text", "text": message}], "isError": True}


def _why(exc: MandateError) -> str:
    if isinstance(exc, Unreachable):
        return f"gateway unreachable ({exc})"
    if isinstance(exc, InvalidInput) and exc.errors:
        return "; ".join(f"{e.field}: {e.message}" for e in exc.errors)
    return str(exc)


def _approval(verdict: Verdict) -> str:
    return verdict.approval.id if verdict.approval is not None else "?"


def _reasons(verdict: Verdict) -> str:
    return "; ".join(f"{r.code}: {r.message}" for r in verdict.reasons) or "no reasons"


def _not_ours(verdict: Verdict) -> str:
    adapter = verdict.execution.adapter if verdict.execution else "none"
    return (
        f"not carried out here: action {verdict.action_id} is carried out by the gateway's "
        f"{adapter} adapter (a webhook is configured for this token or workflow), so the proxy "
        "does not call the tool"
    )


def _handed_over(view: ActionView) -> bool:
    """Whether the approved action waits for this executor's outcome (its execution entry is
    written): then, and only then, the proxy makes the call."""
    return view.execution is not None and view.execution.status == "awaiting_outcome"


def _settled(view: ActionView) -> bool:
    """Whether there is nothing more to wait for: decided, and if approved, handed over (or
    carried out by someone else)."""
    if view.status == "held":
        return False
    if view.status == "approved" and view.execution is not None:
        return view.execution.adapter != "callback" or _handed_over(view)
    return view.status != "approved"


def _text(result: Mapping[str, Any]) -> str:
    """The text of a tool result, for an outcome's details (at most 2,000 characters)."""
    parts = [
        str(block.get("text", ""))
        for block in result.get("content") or []
        if isinstance(block, dict) and block.get("type") == "text"
    ]
    return " ".join(parts)[:2000] or "the tool reported an error"
