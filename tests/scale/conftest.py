"""Several gateway processes on one database: real ``mandate serve`` processes on loopback
ports, started together, killed (SIGKILL) and restarted by the tests; the example webhook
receiver; and what a user checks afterwards (deliveries against the ledger)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from adapters.examples.receiver import Receiver, running_receiver
from gateway.db.connect import open_engine
from gateway.db.tables import INTENTS
from gateway.identity import TokenBook
from gateway.server.serving import free_port
from gateway.settings import Settings
from tests.approvals.harness import POLICIES, SECRET, Ledger, http_client, wait_for
from tests.conftest import Database, postgres_url

MANDATE = Path(sys.executable).parent / "mandate"


@contextmanager
def pg_schema() -> Iterator[Database]:
    """A fresh schema in the test PostgreSQL (skips without one), dropped afterwards: the
    ``pg_database`` fixture's, for fixtures that outlive a test."""
    url = postgres_url()
    schema = f"mandate_scale_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        yield Database(url, schema)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def gateway_environment(database: Database, **more: str) -> dict[str, str]:
    """The environment of a gateway process on ``database``: no ``MANDATE_*`` of the caller's,
    the test's webhook secret, and a short dispatch lease so that an intent a killed process
    held is taken over within seconds (the lease must outlast an attempt)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANDATE_")}
    env |= {
        "MANDATE_DATABASE_URL": database.url,
        "MANDATE_WEBHOOK_SECRET": SECRET,
        "MANDATE_DISPATCH_LEASE": "2",
        "MANDATE_DISPATCH_TIMEOUT": "1.5",
        "MANDATE_DISPATCH_BACKOFF": "0.1",
        "MANDATE_DISPATCH_ATTEMPTS": "50",
    }
    if database.schema:
        env["MANDATE_DATABASE_SCHEMA"] = database.schema
    return env | more


class Gateway:
    """``mandate serve`` as a child process on a port of its own, its output kept in a file.

    The process leads a process group of its own, so that a kill reaches its workers too.
    """

    def __init__(
        self,
        data_dir: Path,
        env: dict[str, str],
        logs: Path,
        *,
        workers: int = 1,
        policies: Path = POLICIES,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.env = env
        self.workers = workers
        self.policies = policies
        logs.mkdir(parents=True, exist_ok=True)
        self.logs = logs
        self.log = logs / f"gateway-{self.port}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or start again, on the same port); ``wait_ready`` waits until it answers."""
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                [
                    str(MANDATE),
                    "serve",
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.data_dir),
                    "--policies",
                    str(self.policies),
                    "--workers",
                    str(self.workers),
                ],
                env=self.env,
                cwd=self.logs,  # no mandate.toml there
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self) -> None:
        """Wait until it answers (a cold start of several at once on 2 cores takes a while)."""
        wait_for(self._ready, timeout=90, what=f"the gateway to start (log {self.log})")

    def _ready(self) -> bool:
        assert self.popen is not None
        if self.popen.poll() is not None:
            raise AssertionError(f"the gateway exited: {self.log.read_text()}")
        try:
            with http_client(self.url) as client:
                return client.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: no shutdown of any kind."""
        assert self.popen is not None
        os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)

    def stop(self) -> None:
        """Stop it if it runs: SIGTERM, then SIGKILL if it does not exit in time."""
        if self.popen is None or self.popen.poll() is not None:
            return
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()


class Gateways:
    """The gateway processes of a test: started together, all stopped after it."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[Gateway] = []

    def start(
        self,
        count: int,
        data_dir: Path,
        env: dict[str, str],
        *,
        workers: int = 1,
        policies: Path = POLICIES,
    ) -> list[Gateway]:
        """Start ``count`` processes at once on one data dir (one signing key) and wait until
        each answers: a deployment starts them together, on a database that may be empty."""
        batch = [
            Gateway(data_dir, env, self.logs, workers=workers, policies=policies)
            for _ in range(count)
        ]
        for gateway in batch:
            self.started.append(gateway)
            gateway.start()
        for gateway in batch:
            gateway.wait_ready()
        return batch

    def stop(self) -> None:
        for gateway in self.started:
            gateway.stop()


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Gateways]:
    """Start gateway processes with ``gateways.start``; every one stops after the test."""
    started = Gateways(tmp_path / "logs")
    try:
        yield started
    finally:
        started.stop()


def gateway_settings(database: Database, data_dir: Path) -> Settings:
    """The settings the gateway processes resolve (for making tokens, finding the key)."""
    return Settings(
        data_dir=data_dir,
        database_url=database.url,
        database_schema=database.schema,
        policies=POLICIES,
    )


def make_tokens(settings: Settings, roles: dict[str, str]) -> dict[str, str]:
    """Tokens (name → token) made in the database, as ``mandate token create`` makes them,
    once a gateway has made its tables."""
    engine = open_engine(settings)
    try:
        book = TokenBook(engine)
        return {name: book.create(name=name, role=role)[0] for name, role in roles.items()}
    finally:
        engine.dispose()


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    """The example receiver on loopback (it counts the calls for each Idempotency-Key and
    carries each out once), and its URL."""
    example = Receiver(SECRET.encode())
    with running_receiver(example) as url:
        yield example, url


def webhooks(url: str) -> str:
    """``MANDATE_WEBHOOKS``: the parking workflow's actions go to ``url``."""
    return json.dumps({"parking": url})


def wait_until_delivered(settings: Settings, timeout: float = 60) -> None:
    """Wait until every webhook intent in the database has succeeded."""
    engine = open_engine(settings)
    try:

        def delivered() -> bool:
            with engine.connect() as conn:
                return not conn.execute(
                    sa.select(INTENTS.c.action_id).where(
                        INTENTS.c.adapter == "webhook", INTENTS.c.status != "succeeded"
                    )
                ).first()

        wait_for(delivered, timeout=timeout, what="every webhook delivered")
    finally:
        engine.dispose()


def assert_carried_out_once(receiver: Receiver, ledger: Ledger, executed: set[str]) -> None:
    """Each executed action carried out once: the receiver did exactly these; each delivery
    was an attempt the ledger recorded before it was made, under a claim no other process
    held at the same time (claims number the attempts: two at once would share a number); one
    outcome each.

    A delivery may be repeated (a process killed before it recorded the answer, an attempt that
    timed out): the receiver answers a repeat from its memory of the Idempotency-Key, as an
    executor's endpoint must.
    """
    with receiver.lock:
        done, calls, refused = set(receiver.done), Counter(receiver.calls), list(receiver.refused)
    assert done == executed
    assert refused == []
    attempts: dict[str, list[int]] = {}
    for entry in ledger.of("execution"):
        if entry["body"]["result"] == "dispatching":
            attempts.setdefault(entry["subject"], []).append(entry["body"]["attempt"])
    shared = {a: numbers for a, numbers in attempts.items() if len(set(numbers)) < len(numbers)}
    assert shared == {}, "attempts made under one claim by two processes"
    unrecorded = [a for a in executed if calls[a] > len(attempts.get(a, []))]
    assert unrecorded == [], "deliveries the ledger has no attempt for"
    assert Counter(e["subject"] for e in ledger.of("outcome")) == Counter(executed)
