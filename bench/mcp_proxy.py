"""What ``mandate mcp proxy`` adds to a tool call, and how soon a held call runs once approved.

A gateway (``mandate serve`` in its own process, SQLite, the repository's policies) and the
reference npm filesystem server (``tests/mcp/node_modules``, installed with ``npm ci`` when it
is missing). Two MCP client sessions (the SDK's stdio client) run side by side on one
directory: one talks to the filesystem server directly, the other to ``mandate mcp proxy
--workflow files`` in front of another instance of it, with a ``files-agent`` token.

1. Executed calls: ``get_file_info`` (files.read, level 3: executed), one call at a time,
   direct and proxied in turn, so both meet the same load. Through the proxy each call is
   checked, proposed (Casbin, Rego, two ledger entries), forwarded, and its outcome reported
   (another entry): the figure is the proxied p50/p99 against the direct one of the same run.
2. Held calls: ``write_file`` (files.write, level 1: held). An approver waits until the approval
   is listed, then another 2.5 s (a person takes longer still; by then the proxy looks at the
   action every half second, as it does for any long wait), and votes over HTTP. The figure is
   the time from the vote's answer to the file appearing (the upstream made the call), and to
   the agent's call returning.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio
import httpx
from mcp import ClientSession, StdioServerParameters, stdio_client

from bench._common import Context, Figure, percentile
from bench._gateway import REPO, clean_env, free_port, gateway_command, mandate_command, serve
from bench._gateway import tokens as make_tokens

NAME = "mcp_proxy"
GROUP = "mcp"
DESCRIPTION = "a tool call through mandate mcp proxy against the upstream direct, p50/p99; held"

NODE_DIR = REPO / "tests" / "mcp"
FILESYSTEM_SERVER = NODE_DIR / "node_modules" / ".bin" / "mcp-server-filesystem"
_THINK = 2.5  # seconds an approver takes after the approval is listed


@dataclass
class _Runs:
    direct_p50: list[float] = field(default_factory=list)
    direct_p99: list[float] = field(default_factory=list)
    proxied_p50: list[float] = field(default_factory=list)
    proxied_p99: list[float] = field(default_factory=list)
    to_call: list[float] = field(default_factory=list)  # all held calls, every run
    to_answer: list[float] = field(default_factory=list)


def run(ctx: Context) -> list[Figure]:
    """Serve a gateway; time tool calls direct and through the proxy; approve held ones."""
    work = ctx.out / NAME
    shutil.rmtree(work, ignore_errors=True)
    root = work / "files"
    root.mkdir(parents=True)
    (root / "notes.txt").write_text("kept\n")
    _install(ctx)
    calls = 20 if ctx.quick else 300
    held = 1 if ctx.quick else 4
    runs = _Runs()
    with ExitStack() as stack:
        with ctx.step("setup: files-agent and approver tokens (mandate token create)"):
            made = make_tokens(
                work / "data",
                [("bench-files", "files-agent", "files"), ("bench-approver", "approver", None)],
            )
        port = free_port()
        with ctx.step("setup: starting the gateway (mandate serve)"):
            gateway = stack.enter_context(
                serve(gateway_command(port, work / "data"), port=port, workdir=work,
                      name="gateway")
            )  # fmt: skip
        ctx.log(f"{calls} executed calls each way and {held} held calls per run, {ctx.repeat} runs")
        anyio.run(_measure, ctx, gateway.url, made, root, calls, held, runs)
    shutil.rmtree(work, ignore_errors=True)  # kept only when the bench failed
    return _figures(ctx, runs, calls)


def _install(ctx: Context) -> None:
    if FILESYSTEM_SERVER.exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed: the npm filesystem server cannot be run")
    with ctx.step("setup: npm ci (the filesystem server, into tests/mcp/node_modules)"):
        cmd = [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=600)


@asynccontextmanager
async def _session(
    command: list[str], env: dict[str, str], errlog: TextIO
) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=command[0], args=command[1:], env=env)
    async with AsyncExitStack() as stack:
        read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog))
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        yield session


async def _measure(
    ctx: Context,
    url: str,
    made: dict[str, str],
    root: Path,
    calls: int,
    held: int,
    runs: _Runs,
) -> None:
    upstream = [str(FILESYSTEM_SERVER), str(root)]
    proxy = [*mandate_command(), "mcp", "proxy", "--workflow", "files", "--", *upstream]
    env = clean_env() | {"MANDATE_TOKEN": made["bench-files"], "MANDATE_URL": url}
    approver = httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {made['bench-approver']}"}, timeout=60
    )
    # The servers' stderr goes to a log beside the gateway's (kept when the bench fails).
    with (root.parent / "servers.log").open("w") as errlog:
        async with (
            approver,
            _session(upstream, clean_env(), errlog) as direct,
            _session(proxy, env, errlog) as proxied,
        ):
            await _runs(ctx, direct, proxied, approver, root, calls, held, runs)


async def _runs(
    ctx: Context,
    direct: ClientSession,
    proxied: ClientSession,
    approver: httpx.AsyncClient,
    root: Path,
    calls: int,
    held: int,
    runs: _Runs,
) -> None:
    info = {"path": str(root / "notes.txt")}
    for _ in range(5):  # warm-up: connections, caches, the tools' output schemas
        await _timed(direct, "get_file_info", info)
        await _timed(proxied, "get_file_info", info)
    for rep in range(ctx.repeat):
        plain, governed = [], []
        for _ in range(calls):
            plain.append(await _timed(direct, "get_file_info", info))
            governed.append(await _timed(proxied, "get_file_info", info))
        runs.direct_p50.append(percentile(plain, 50))
        runs.direct_p99.append(percentile(plain, 99))
        runs.proxied_p50.append(percentile(governed, 50))
        runs.proxied_p99.append(percentile(governed, 99))
        for i in range(held):
            await _held_call(proxied, approver, root / f"r{rep}-{i}.txt", runs)
        ctx.log(
            f"  run {rep + 1}/{ctx.repeat}: direct p50 {runs.direct_p50[-1]:.2f} ms p99 "
            f"{runs.direct_p99[-1]:.2f} ms; proxied p50 {runs.proxied_p50[-1]:.2f} ms p99 "
            f"{runs.proxied_p99[-1]:.2f} ms; held: vote to upstream call "
            f"{runs.to_call[-1]:.0f} ms, to the agent's answer {runs.to_answer[-1]:.0f} ms"
        )


async def _timed(session: ClientSession, tool: str, arguments: dict[str, Any]) -> float:
    started = time.perf_counter()
    result = await session.call_tool(tool, arguments)
    elapsed = (time.perf_counter() - started) * 1000
    if result.is_error:
        raise RuntimeError(f"{tool} failed: {result.content}")
    return elapsed


async def _held_call(
    proxied: ClientSession, approver: httpx.AsyncClient, path: Path, runs: _Runs
) -> None:
    """One write held for a person: approved over HTTP; when did the upstream make it, and
    when did the agent's call return."""
    answered: list[float] = []
    async with anyio.create_task_group() as tasks:

        async def agent() -> None:
            result = await proxied.call_tool("write_file", {"path": str(path), "content": "x"})
            answered.append(time.perf_counter())
            if result.is_error:
                raise RuntimeError(f"the held write failed: {result.content}")

        tasks.start_soon(agent)
        approval = await _listed(approver, str(path))
        await anyio.sleep(_THINK)
        response = await approver.post(
            f"/v1/approvals/{approval}/decisions", json={"decision": "approve", "reason": "bench"}
        )
        voted = time.perf_counter()
        if response.status_code != 200:
            raise RuntimeError(f"the vote failed: {response.status_code} {response.text}")
        while not path.exists():
            await anyio.sleep(0.0005)
        called = time.perf_counter()
    runs.to_call.append((called - voted) * 1000)
    runs.to_answer.append((answered[0] - voted) * 1000)


async def _listed(approver: httpx.AsyncClient, resource: str) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = await approver.get("/v1/approvals")
        for item in response.json():
            if item["resource"] == resource:
                return str(item["id"])
        await anyio.sleep(0.02)
    raise TimeoutError(f"no approval for {resource} was listed")


def _figures(ctx: Context, runs: _Runs, calls: int) -> list[Figure]:
    med = statistics.median
    figures = [
        Figure(
            f"{NAME}.direct_p50",
            tuple(runs.direct_p50),
            "ms",
            baseline=f"{NAME}.direct_p50",
            ratio=1.0,
            note=f"baseline: get_file_info on the filesystem server, the SDK's client direct; "
            f"{calls} calls per run",
            digits=2,
        ),
        Figure(
            f"{NAME}.direct_p99",
            tuple(runs.direct_p99),
            "ms",
            baseline=f"{NAME}.direct_p99",
            ratio=1.0,
            note="baseline: as direct_p50",
            digits=2,
        ),
        Figure(
            f"{NAME}.proxied_p50",
            tuple(runs.proxied_p50),
            "ms",
            baseline=f"{NAME}.direct_p50",
            ratio=med(runs.proxied_p50) / med(runs.direct_p50),
            note=f"the same call through mandate mcp proxy (proposed, executed, outcome "
            f"reported); added p50 {med(runs.proxied_p50) - med(runs.direct_p50):.2f} ms",
            digits=2,
        ),
        Figure(
            f"{NAME}.proxied_p99",
            tuple(runs.proxied_p99),
            "ms",
            baseline=f"{NAME}.direct_p99",
            ratio=med(runs.proxied_p99) / med(runs.direct_p99),
            note=f"added p99 {med(runs.proxied_p99) - med(runs.direct_p99):.2f} ms",
            digits=2,
        ),
        Figure(
            f"{NAME}.held_to_call",
            (percentile(runs.to_call, 50),),
            "ms",
            note=f"vote's HTTP answer to the upstream making the held write_file (the file "
            f"appears), p50 of {len(runs.to_call)}; p99 {percentile(runs.to_call, 99):.0f} ms; "
            f"the proxy looks every 0.5 s during a long wait",
        ),
        Figure(
            f"{NAME}.held_to_answer",
            (percentile(runs.to_answer, 50),),
            "ms",
            note="vote's HTTP answer to the agent's call returning (outcome reported), p50",
        ),
    ]
    for figure in figures:
        ctx.figure(figure)
    return figures
