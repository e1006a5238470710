"""What the approval and execution tests share: a real gateway on loopback (uvicorn, in a
thread, with a clock the test may move), tokens, proposals, and the ledger as an auditor gets
it (exported over HTTP, verified offline, then read).

Nothing of ours is mocked: the app is ``create_app`` with real settings, the database is a real
SQLite file or PostgreSQL schema, webhooks go to the example receiver on loopback.
"""

from __future__ import annotations

import datetime as dt
import itertools
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import sqlalchemy as sa
import uvicorn

from gateway.db.connect import open_engine
from gateway.db.tables import INTENTS
from gateway.identity import TokenBook
from gateway.server.app import create_app
from gateway.server.runtime import Runtime
from gateway.settings import Settings
from ledger.keys import load_signing_key
from ledger.note import NoteVerifier
from ledger.verify import verify_export
from tests.conftest import Database

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"
PROBLEM_JSON = "application/problem+json"
SECRET = "test-webhook-secret-0123456789abcdef"

_names = itertools.count()
_TLS = ssl.create_default_context()  # made once: httpx builds one per client otherwise


def unique(prefix: str) -> str:
    """A name no other test in this process uses."""
    return f"{prefix}-{next(_names)}"


class Clock:
    """The gateway's clock: real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = dt.timedelta()

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset

    def advance(self, **delta: float) -> None:
        self.offset += dt.timedelta(**delta)


def settings_for(database: Database, data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a gateway on ``database`` whose key and webhook secret live in
    ``data_dir``."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "policies": POLICIES,
        "database_url": database.url,
        "database_schema": database.schema,
        "webhook_secret": SECRET,
        "dispatch_backoff": 0.05,
    }
    return Settings(**(values | overrides))


def copy_bundle(target: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of the default bundle with ``change`` applied to its data.json."""
    shutil.copytree(POLICIES, target)
    data = orjson.loads((target / "data.json").read_bytes())
    change(data)
    (target / "data.json").write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    return target


def http_client(url: str, token: str | None = None) -> httpx.Client:
    """An httpx client for a loopback server, with a bearer token if given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=30.0, verify=_TLS)


@dataclass
class Live:
    """A gateway serving on loopback in this process."""

    url: str
    settings: Settings
    runtime: Runtime
    server: uvicorn.Server
    thread: threading.Thread
    clients: list[httpx.Client] = field(default_factory=list)

    def token(self, role: str, *, workflow: str | None = None, owner: str | None = None) -> str:
        """A new bearer token (a fresh name; owner defaults to the name)."""
        token, _ = self.runtime.tokens.create(
            name=unique(role), role=role, workflow=workflow, owner=owner
        )
        return token

    def client(self, token: str | None = None) -> httpx.Client:
        client = http_client(self.url, token)
        self.clients.append(client)
        return client

    def as_role(
        self, role: str, *, workflow: str | None = None, owner: str | None = None
    ) -> httpx.Client:
        """A client with a fresh token for ``role``."""
        return self.client(self.token(role, workflow=workflow, owner=owner))

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start(settings: Settings, *, clock: Callable[[], dt.datetime] | None = None) -> Live:
    """Serve ``create_app(settings)`` under uvicorn on a free loopback port."""
    app = create_app(settings, clock=clock)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"gateway-{port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout=5)
            sock.close()
            raise RuntimeError("the gateway did not start; see the log above")
        time.sleep(0.01)
    return Live(f"http://127.0.0.1:{port}", settings, app.state.runtime, server, thread)


# -- proposals, votes, answers ---------------------------------------------------------------


def proposal(
    workflow: str,
    action_type: str,
    *,
    amount: str | None = None,
    confidence: float | None = 0.99,
    resource: str = "thing/1",
) -> dict[str, Any]:
    """A proposal whose case type is its action type, with a fresh idempotency key."""
    body: dict[str, Any] = {
        "workflow": workflow,
        "action_type": action_type,
        "resource": resource,
        "case_type": action_type,
        "params": {} if amount is None else {"amount": amount},
        "idempotency_key": unique("key"),
    }
    if confidence is not None:
        body["confidence"] = confidence
    return body


def propose(client: httpx.Client, body: dict[str, Any], verdict: str) -> dict[str, Any]:
    """Propose; the verdict must be ``verdict``; return the answer."""
    response = client.post("/v1/actions", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["verdict"] == verdict, answer
    assert isinstance(answer, dict)
    return answer


def held_claim(client: httpx.Client, amount: str = "12000") -> dict[str, Any]:
    """A claim over the review threshold: held at level 3 for a quorum of 2."""
    answer = propose(client, proposal("claims", "claim.approve", amount=amount), "hold")
    assert answer["approval"]["quorum"] == 2, answer
    return answer


def held_refund(client: httpx.Client, amount: str = "20") -> dict[str, Any]:
    """A small refund: held at level 1 (advisory) for a quorum of 1."""
    answer = propose(client, proposal("parking", "refund.issue", amount=amount), "hold")
    assert answer["approval"]["quorum"] == 1, answer
    return answer


def vote(client: httpx.Client, approval_id: str, decision: str, reason: str = "") -> httpx.Response:
    return client.post(
        f"/v1/approvals/{approval_id}/decisions", json={"decision": decision, "reason": reason}
    )


def pending_ids(client: httpx.Client) -> set[str]:
    response = client.get("/v1/approvals", params={"status": "pending"})
    assert response.status_code == 200, response.text
    return {item["id"] for item in response.json()}


def intent_count(live: Live, action_id: str) -> int:
    with live.runtime.engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(INTENTS)
                .where(INTENTS.c.action_id == action_id)
            ).scalar_one()
        )


def action_status(client: httpx.Client, action_id: str) -> str:
    response = client.get(f"/v1/actions/{action_id}")
    assert response.status_code == 200, response.text
    status = response.json()["status"]
    assert isinstance(status, str)
    return status


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status; return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    body = response.json()
    assert isinstance(body, dict)
    assert body["status"] == status
    assert body.get("detail"), body
    return body


def wait_for(predicate: Callable[[], bool], *, timeout: float = 15.0, what: str = "") -> None:
    """Poll until ``predicate`` holds; fail (naming ``what``) if ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)


# -- the ledger, as an auditor gets it -------------------------------------------------------


@dataclass(frozen=True)
class Ledger:
    """A verified export, read back: its entries by seq (checkpoint entries included)."""

    entries: list[dict[str, Any]]

    def of(self, kind: str, action_id: str | None = None) -> list[dict[str, Any]]:
        """Entries of ``kind``, about ``action_id`` if given, in seq order."""
        return [
            e
            for e in self.entries
            if e["kind"] == kind and (action_id is None or e["subject"] == action_id)
        ]

    def about(self, action_id: str) -> list[str]:
        """The kinds of the entries about an action, in order."""
        return [e["kind"] for e in self.entries if e["subject"] == action_id]


def verified_ledger(url: str, settings: Settings, tmp_dir: Path) -> Ledger:
    """Export the ledger over HTTP as an auditor, verify it offline with the gateway's public
    key, and return its entries. Fails the test if the export does not verify."""
    signer = load_signing_key(settings.key_path, settings.ledger_origin)
    path = tmp_dir / f"export-{unique('ledger')}.jsonl"
    token = _auditor_token(settings)
    with http_client(url, token) as auditor, auditor.stream("GET", "/v1/ledger/export") as got:
        assert got.status_code == 200, got.read()
        with path.open("wb") as out:
            for chunk in got.iter_bytes():
                out.write(chunk)
    result = verify_export(path, [NoteVerifier.from_vkey(signer.vkey)])
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    entries = [line for line in lines if "seq" in line]  # the last line is the checkpoint
    assert len(entries) == result.size, (len(entries), result.size)
    return Ledger(entries)


def _auditor_token(settings: Settings) -> str:
    """An auditor token, made straight in the database as `mandate token create` makes it."""
    engine = open_engine(settings)
    try:
        token, _ = TokenBook(engine).create(name=unique("auditor"), role="auditor")
    finally:
        engine.dispose()
    return token
