"""The MCP proxy's tests: a real gateway on loopback, ``mandate mcp proxy`` launched as the
agent's client launches it (the MCP SDK's own stdio client), and real upstream servers (the npm
filesystem server, installed here on first use; a stand-in on the SDK's own server classes).

Nothing of ours is mocked. The gateway runs the default bundle plus a ``lab`` workflow for the
stand-in's tools (``tests/mcp/upstream.py``): they run alone at level 4, except ``approve_me``,
held at level 1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import sqlalchemy as sa
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.session import ListRootsFnT

from gateway.client import MandateClient
from gateway.db.tables import ACTIONS
from gateway.server.runtime import Runtime
from gateway.server.serving import serve_in_background
from gateway.settings import Settings

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MANDATE = Path(sys.executable).with_name("mandate")
FILESYSTEM_SERVER = HERE / "node_modules" / ".bin" / "mcp-server-filesystem"
STAND_IN = [sys.executable, "-m", "tests.mcp.upstream"]

LAB_RULES = """package mandate.workflows.lab

import rego.v1

deny contains {"code": "refused", "message": "the lab refuses it"} if {
	input.proposal.params.refuse == true
}

hold contains {"code": "asked", "message": "the caller asked for a person"} if {
	input.proposal.params.ask == true
}
"""


def _add_lab(bundle: Path) -> None:
    data = json.loads((bundle / "data.json").read_text())
    run = {"case_types": ["lab.run"]}
    data["workflows"]["lab"] = {
        "description": "The stand-in upstream's tools.",
        "action_types": {
            "read.file": run | {"mcp": {"resource": "path"}},
            "set.ratio": run,
            "environment": run,
            "crash": run,
            "failing": run,
            "approve_me": {"case_types": ["lab.held"], "mcp": {"resource": "note"}},
        },
        "case_types": {"lab.run": {"initial_level": 4}, "lab.held": {"initial_level": 1}},
    }
    (bundle / "data.json").write_text(json.dumps(data, indent=2))
    (bundle / "rego" / "lab.rego").write_text(LAB_RULES)
    with (bundle / "casbin" / "policy.csv").open("a") as policy:
        policy.write("\np, lab-agent, lab, *, propose\np, approver, lab, *, approve\n")


@pytest.fixture(scope="session")
def filesystem_server() -> Path:
    """The npm filesystem server, installed into tests/mcp/node_modules from the pinned lock
    when it is not there yet (``.ci/run`` installs it too)."""
    if not FILESYSTEM_SERVER.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed, so the npm filesystem server cannot be run")
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(HERE)],
            check=True,
            capture_output=True,
            timeout=600,
        )
    return FILESYSTEM_SERVER


@dataclass
class Live:
    """The serving gateway and what the tests need of it."""

    url: str
    runtime: Runtime
    _names: Iterator[int]

    def token(self, role: str, workflow: str | None = None) -> tuple[str, str]:
        """A new token for ``role`` (with a name, and so an owner, of its own): (token, name)."""
        name = f"{role}-{next(self._names)}"
        token, _ = self.runtime.tokens.create(name=name, role=role, workflow=workflow)
        return token, name

    def actions_of(self, executor: str) -> list[Any]:
        """The actions a token proposed, oldest first, as the gateway keeps them."""
        with self.runtime.engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(ACTIONS)
                    .where(ACTIONS.c.executor == executor)
                    .order_by(ACTIONS.c.proposal_seq)
                )
            )

    def timeline(self, action_id: str) -> list[str]:
        """The kinds of the action's ledger entries, in order."""
        with MandateClient(self.url, self.token("auditor")[0]) as auditor:
            return [entry["kind"] for entry in auditor.get_action(action_id).timeline]


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A gateway with the default bundle and the lab workflow."""
    bundle = tmp_path_factory.mktemp("bundle") / "policies"
    shutil.copytree(REPO / "policies", bundle)
    _add_lab(bundle)
    settings = Settings(data_dir=tmp_path_factory.mktemp("gateway"), policies=bundle)
    with serve_in_background(settings) as served:
        yield Live(served.url, served.runtime, iter(range(10**6)))


@asynccontextmanager
async def proxied(
    url: str,
    token: str,
    *upstream: str,
    workflow: str,
    on_hold: Literal["wait", "return"] = "wait",
    hold_timeout: float = 60,
    upstream_url: str | None = None,
    roots: ListRootsFnT | None = None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[ClientSession]:
    """``mandate mcp proxy`` started by the MCP SDK's stdio client, as an agent's config starts
    it (the token and the gateway passed in its environment), with an initialised session."""
    args = ["mcp", "proxy", "--workflow", workflow, "--on-hold", on_hold]
    args += ["--hold-timeout", str(hold_timeout)]
    if upstream_url is not None:
        args += ["--upstream-url", upstream_url]
    else:
        args += ["--", *upstream]
    params = StdioServerParameters(
        command=str(MANDATE),
        args=args,
        env={"MANDATE_TOKEN": token, "MANDATE_URL": url, "PYTHONPATH": str(REPO)} | (env or {}),
        cwd=str(REPO),
    )
    async with (
        stdio_client(params) as (read, write),
        ClientSession(read, write, list_roots_callback=roots) as session,
    ):
        await session.initialize()
        yield session


def decide_when_held(
    live: Live, resource: str, decision: Literal["approve", "reject"], reason: str = ""
) -> Callable[[], None]:
    """Work for another thread: an approver waits for the approval of the action on
    ``resource`` to appear in their list, then decides it."""

    def work() -> None:
        with MandateClient(live.url, live.token("approver")[0]) as approver:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                pending = [a for a in approver.approvals() if a.resource == resource]
                if pending:
                    approver.decide(pending[0].id, decision, reason)
                    return
                time.sleep(0.05)
            raise AssertionError(f"no approval for {resource} appeared")

    return work


class InThread:
    """Run ``work`` in another thread; ``join()`` re-raises what it raised."""

    def __init__(self, work: Callable[[], object]) -> None:
        self._failure: list[BaseException] = []

        def run() -> None:
            try:
                work()
            except BaseException as exc:  # handed to the test by join()
                self._failure.append(exc)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def join(self, timeout: float = 60.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the other thread did not finish"
        if self._failure:
            raise self._failure[0]


def text_of(result: Any) -> str:
    """The text blocks of a tool result, joined."""
    return " ".join(block.text for block in result.content if block.type == "text")
