"""What the gateway tests share: a real gateway served by uvicorn on loopback, tokens, proposals.

Nothing of ours is mocked: the app is ``create_app`` with real settings, the database is a real
SQLite file or PostgreSQL schema, and requests are real HTTP through httpx.
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
from typing import Any, Protocol

import httpx
import sqlalchemy as sa
import uvicorn
from sqlalchemy.engine import Engine

from gateway.db.connect import open_engine
from gateway.db.tables import create_gateway_tables
from gateway.identity import TokenBook
from gateway.server.app import create_app
from gateway.settings import Settings
from ledger.models import ENTRIES
from tests.conftest import Database

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"
PROBLEM_JSON = "application/problem+json"
START_TIMEOUT = 20.0

_names = itertools.count()
# Made once: an httpx client builds an SSL context when made unless given one, which costs
# ~0.1 s a client (plain HTTP on loopback never uses it).
_TLS = ssl.create_default_context()


def http_client(url: str, headers: dict[str, str] | None = None) -> httpx.Client:
    """An httpx client for a loopback server."""
    return httpx.Client(base_url=url, headers=headers or {}, timeout=30.0, verify=_TLS)


def copy_bundle(tmp_path: Path, name: str = "bundle") -> Path:
    """A copy of the default bundle that a test may change."""
    target = tmp_path / name
    shutil.copytree(POLICIES, target)
    return target


def with_parking_rules(tmp_path: Path, rules: str) -> Path:
    """A copy of the default bundle with ``rules`` (Rego) added to its parking package."""
    root = copy_bundle(tmp_path)
    source = root / "rego" / "parking.rego"
    source.write_text(source.read_text() + rules)
    return root


@dataclass
class Gateway:
    """A running gateway and what a test needs around it.

    ``engine`` is the test's own connection to the gateway's database, as the CLI would open
    it: tokens made or revoked through it reach the server only through the database.
    """

    url: str
    settings: Settings
    database: Database
    engine: Engine
    server: uvicorn.Server
    thread: threading.Thread
    tokens: TokenBook
    _clients: list[httpx.Client] = field(default_factory=list)

    def token(
        self,
        role: str,
        *,
        workflow: str | None = None,
        name: str | None = None,
        owner: str | None = None,
    ) -> str:
        """A new bearer token for ``role`` (optionally bound to a workflow; its owner defaults
        to its name)."""
        token, _ = self.tokens.create(
            name=name or f"{role}-{next(_names)}", role=role, workflow=workflow, owner=owner
        )
        return token

    def client(self, token: str | None = None) -> httpx.Client:
        """An HTTP client for the gateway, sending ``token`` as the bearer token if given."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = http_client(self.url, headers)
        self._clients.append(client)
        return client

    def as_role(
        self, role: str, *, workflow: str | None = None, owner: str | None = None
    ) -> httpx.Client:
        """A client holding a fresh token for ``role``."""
        return self.client(self.token(role, workflow=workflow, owner=owner))

    def ledger_size(self) -> int:
        """How many entries the ledger holds, read straight from the database."""
        with self.engine.connect() as conn:
            last = conn.execute(sa.select(sa.func.max(ENTRIES.c.seq))).scalar()
        return 0 if last is None else int(last) + 1

    def proposals_recorded(self) -> int:
        """How many ``proposal`` and ``decision`` entries the ledger holds: what proposing
        writes. (Executions of earlier actions are appended in the background by the
        dispatcher, so the raw size is no measure of what one request wrote.)"""
        with self.engine.connect() as conn:
            count = conn.execute(
                sa.select(sa.func.count()).where(ENTRIES.c.kind.in_(("proposal", "decision")))
            ).scalar_one()
        return int(count)

    def healthy(self) -> bool:
        """Whether the worker still answers /healthz."""
        with http_client(self.url) as client:
            return client.get("/healthz").status_code == 200

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.engine.dispose()


class Serve(Protocol):
    """The ``serve_gateway`` fixture: start a gateway on a database, stopped after the test."""

    def __call__(
        self,
        database: Database,
        *,
        policies: Path = ...,
        opa_url: str | None = ...,
        clock: Callable[[], dt.datetime] | None = ...,
        data_dir: Path | None = ...,
    ) -> Gateway: ...


def serve(
    database: Database,
    data_dir: Path,
    *,
    policies: Path = POLICIES,
    opa_url: str | None = None,
    clock: Callable[[], dt.datetime] | None = None,
) -> Gateway:
    """Start ``create_app`` under uvicorn on a free loopback port; return once it serves."""
    settings = Settings(
        data_dir=data_dir,
        policies=policies,
        database_url=database.url,
        database_schema=database.schema,
        opa_url=opa_url,
    )
    app = create_app(settings, clock=clock)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"gateway-{port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout=5)
            sock.close()
            raise RuntimeError(f"the gateway did not start (policies {policies})")
        time.sleep(0.01)
    engine = open_engine(settings)
    create_gateway_tables(engine)
    return Gateway(
        url=f"http://127.0.0.1:{port}",
        settings=settings,
        database=database,
        engine=engine,
        server=server,
        thread=thread,
        tokens=TokenBook(engine),
    )


# -- proposals and answers -------------------------------------------------------------------


def proposal(
    workflow: str,
    action_type: str,
    *,
    amount: str | None = None,
    confidence: float | None = None,
    key: str | None = None,
    resource: str = "thing/1",
    **extra: Any,
) -> dict[str, Any]:
    """A proposal body whose case type is its action type, with a fresh idempotency key."""
    body: dict[str, Any] = {
        "workflow": workflow,
        "action_type": action_type,
        "resource": resource,
        "case_type": action_type,
        "params": {} if amount is None else {"amount": amount},
        "idempotency_key": key or f"key-{next(_names)}",
    }
    if confidence is not None:
        body["confidence"] = confidence
    body.update(extra)
    return body


def good_booking(**extra: Any) -> dict[str, Any]:
    """A proposal that booking-agent gets executed under the default bundle."""
    return proposal("parking", "booking.create", confidence=0.95, **extra)


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status; return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    body = response.json()
    assert isinstance(body, dict)
    assert body["status"] == status
    for member in ("type", "title", "detail"):
        assert isinstance(body.get(member), str), body
        assert body[member], body
    return body


def fields_named(problem: dict[str, Any]) -> set[str]:
    """The fields a 422 problem names."""
    return {item["field"] for item in problem.get("errors") or []}


def wait_for(predicate: Callable[[], bool], *, timeout: float = 10.0) -> bool:
    """Poll until ``predicate`` holds or ``timeout`` passes; never a timing assertion."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
