"""What the gateway and dispatch benches share: gateways in subprocesses, tokens, a receiver
that notes when each delivery arrived, and the gateway's database read from outside.

A served gateway is ``mandate serve`` (uvicorn, uvloop, httptools, one worker) in a process of
its own, in a scratch working directory and with every ``MANDATE_*`` variable of the caller's
environment removed, so that neither a ``mandate.toml`` nor a stray setting changes what is
measured. It is stopped by its process id.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from adapters.examples.receiver import Receiver, _handler
from gateway.server.serving import free_port
from ledger.database import create_engine
from ledger.keys import load_or_create_signing_key, load_or_create_subject_key

__all__ = [
    "DATABASE_URL_ENVS",
    "POLICIES",
    "REPO",
    "Served",
    "Store",
    "TimedReceiver",
    "bench_database_url",
    "clean_env",
    "counts",
    "cpu_seconds",
    "free_port",
    "gateway_command",
    "intent_counts",
    "mandate_command",
    "receiving",
    "rss_mib",
    "serve",
    "serve_many",
    "sqlite_rows",
    "store",
    "tokens",
    "verify_ledger",
]

REPO = Path(__file__).resolve().parent.parent
POLICIES = REPO / "policies"
_STARTUP_TIMEOUT = 60.0


def mandate_command() -> list[str]:
    """The ``mandate`` CLI of this environment (the script next to this Python, else PATH)."""
    beside = Path(sys.executable).parent / "mandate"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("mandate")
    if found:
        return [found]
    return [sys.executable, "-c", "from gateway.cli.main import app; app()"]


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without ``MANDATE_*``, plus ``settings`` (as MANDATE_<KEY>),
    with this checkout first on PYTHONPATH: a subprocess runs the code the bench imports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANDATE_")}
    env.update({f"MANDATE_{key.upper()}": value for key, value in settings.items()})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def tokens(
    data_dir: Path,
    wanted: Sequence[tuple[str, str, str | None]],
    *,
    database_url: str | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Make tokens with ``mandate token create``, one after another: (name, role, workflow)
    each; returns name -> token. ``database_url`` and ``env`` (default ``clean_env()``) for a
    gateway on another database than SQLite in ``data_dir`` (``Store.url``, ``Store.env``)."""
    made = {}
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, role, workflow in wanted:
        cmd = [*mandate_command(), "token", "create", "--name", name, "--role", role]
        cmd += ["--data-dir", str(data_dir), "--policies", str(POLICIES)]
        if database_url:
            cmd += ["--database-url", database_url]
        if workflow:
            cmd += ["--workflow", workflow]
        done = subprocess.run(
            cmd,
            cwd=data_dir.parent,
            env=dict(env) if env is not None else clean_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"mandate token create --name {name} failed: {done.stderr}")
        made[name] = done.stdout.strip()
    return made


@dataclass
class Served:
    """A server in a subprocess: its URL and process (for its CPU time)."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@contextlib.contextmanager
def serve(
    cmd: Sequence[str],
    *,
    port: int,
    workdir: Path,
    env: Mapping[str, str] | None = None,
    ready_path: str | None = "/healthz",
    name: str = "server",
) -> Iterator[Served]:
    """Run ``cmd`` (which serves on ``port``) until the block ends; wait until it answers
    ``ready_path`` (or accepts connections when None). Stopped with SIGTERM by its pid."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(cmd),
            cwd=workdir,
            env=dict(env) if env is not None else clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process, url, ready_path, log)
        yield Served(url, process, log)
    finally:
        _stop(process)


def _wait_ready(process: subprocess.Popen[bytes], url: str, path: str | None, log: Path) -> None:
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    port = int(url.rsplit(":", 1)[1])
    while True:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{url} exited with {process.returncode} before serving:\n{tail}")
        try:
            if path is None:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            elif httpx.get(url + path, timeout=2.0).status_code == 200:
                return
        except (OSError, httpx.HTTPError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not start within {_STARTUP_TIMEOUT:.0f} s; see {log}")
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def gateway_command(port: int, data_dir: Path, database_url: str | None = None) -> list[str]:
    """``mandate serve`` on loopback ``port`` with ``data_dir`` and the repository's policies
    (and ``database_url`` instead of SQLite in ``data_dir`` when given)."""
    return [
        *mandate_command(),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--policies",
        str(POLICIES),
        *(["--database-url", database_url] if database_url else []),
    ]


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds a process has used (Linux ``/proc``), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_mib(pid: int) -> float | None:
    """A process's resident set size (``VmRSS`` in Linux ``/proc``) in MiB, else None."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB
    return None


# -- several gateway processes on one database -------------------------------------------------

# Where the PostgreSQL of the benches is, first found wins; unset: the PostgreSQL half is skipped.
DATABASE_URL_ENVS = ("MANDATE_BENCH_DATABASE_URL", "MANDATE_TEST_DATABASE_URL")


def bench_database_url() -> str | None:
    """The PostgreSQL URL given in ``DATABASE_URL_ENVS``, else None."""
    for name in DATABASE_URL_ENVS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


@dataclass
class Store:
    """Where the processes of one gateway keep their state: a data dir (the signing key, which
    every process of one ledger must share, the webhook secret and, without ``url``, the
    SQLite file) and, on PostgreSQL, a URL and a schema of this run's own."""

    data_dir: Path
    url: str | None = None
    schema: str | None = None
    _engine: sa.Engine | None = field(default=None, repr=False)

    @property
    def backend(self) -> str:
        return "postgresql" if self.url else "sqlite"

    def env(self) -> dict[str, str]:
        """``clean_env()`` with the schema for the subprocesses."""
        return clean_env(database_schema=self.schema) if self.schema else clean_env()

    def command(self, port: int) -> list[str]:
        """``mandate serve`` on ``port`` over this store."""
        return gateway_command(port, self.data_dir, self.url)

    def args(self) -> list[str]:
        """The CLI options that name this store."""
        return [
            "--data-dir",
            str(self.data_dir),
            *(["--database-url", self.url] if self.url else []),
        ]

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of a query (from this module's callers, never from input) on the store."""
        if self._engine is None:
            url = self.url or f"sqlite:///{self.data_dir / 'mandate.db'}"
            self._engine = create_engine(url, schema=self.schema)
        with self._engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(sql))]

    def count(self, table: str, column: str) -> dict[str, int]:
        """Rows of ``table`` by ``column``."""
        rows = self.rows(f"SELECT {column}, count(*) FROM {table} GROUP BY {column}")
        return {str(value): int(n) for value, n in rows}

    def backlog(self) -> int:
        """Execution intents not yet handed over (pending or being dispatched)."""
        by_status = self.count("gateway_intents", "status")
        return by_status.get("pending", 0) + by_status.get("dispatching", 0)

    def drain(self, timeout: float = 180.0) -> tuple[int, float]:
        """Wait until no intent is pending or being dispatched; return how many there were at
        the call and how long they took."""
        start = time.perf_counter()
        first = None
        while True:
            waiting = self.backlog()
            first = waiting if first is None else first
            if waiting == 0:
                return first, time.perf_counter() - start
            if time.perf_counter() - start > timeout:
                raise RuntimeError(f"the dispatchers did not drain {waiting} intents in time")
            time.sleep(0.05)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


@contextlib.contextmanager
def store(workdir: Path, url: str | None = None, *, prefix: str = "bench") -> Iterator[Store]:
    """A fresh store under ``workdir``: SQLite in its data dir, or on PostgreSQL at ``url`` a
    schema of its own (``<prefix>_<pid>_<random>``), dropped when the block ends. Its keys are
    made here, before any gateway starts, so that all of them share them."""
    data_dir = workdir / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    schema = None
    admin = None
    if url:
        schema = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
        admin = sa.create_engine(url)
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    made = Store(data_dir, url, schema)
    try:
        # The keys every process shares (mode 0600), made before any starts, where `mandate
        # serve` would make them: the signing key and the subject key.
        load_or_create_signing_key(data_dir / "ledger-signing-key.pem", "mandate.local/ledger")
        load_or_create_subject_key(data_dir / "ledger-subject-key")
        yield made
    finally:
        made.close()
        if admin is not None:
            with admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()


def _mandate(where: Store, *args: str, timeout: float = 600) -> str:
    """Run ``mandate ARGS`` on ``where``; its stdout (raises with stderr if it failed)."""
    cmd = [*mandate_command(), *args, *where.args()]
    done = subprocess.run(
        cmd,
        cwd=where.data_dir.parent,
        env=where.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"mandate {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout


def verify_ledger(where: Store, workdir: Path) -> dict[str, Any]:
    """Export the store's ledger (``mandate ledger export``) and verify the export offline
    against the public key (``mandate ledger verify --json``); the verifier's JSON, which says
    ``valid`` and ``size``. Raises if the export does not verify."""
    key = workdir / "ledger-public-key"
    key.write_text(_mandate(where, "ledger", "public-key"))
    export = workdir / "ledger-export.jsonl"
    _mandate(where, "ledger", "export", "--out", str(export))
    cmd = [*mandate_command(), "ledger", "verify", str(export), "--public-key", str(key)]
    done = subprocess.run(
        [*cmd, "--json"], env=where.env(), capture_output=True, text=True, timeout=600, check=False
    )
    lines = done.stdout.strip().splitlines()
    result: dict[str, Any] = json.loads(lines[-1]) if lines else {"valid": None}
    export.unlink(missing_ok=True)
    if done.returncode != 0 or result.get("valid") is not True:
        raise RuntimeError(f"the ledger export does not verify: {result} {done.stderr[-2000:]}")
    return result


@contextlib.contextmanager
def serve_many(
    where: Store, count: int, *, workdir: Path, name: str = "gateway"
) -> Iterator[list[Served]]:
    """``count`` gateway processes (``mandate serve``) on ``where``, each on a port of its own,
    started together and all answering ``/healthz`` when the block begins; stopped (SIGTERM by
    pid) when it ends."""
    workdir.mkdir(parents=True, exist_ok=True)
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    started: list[Served] = []
    try:
        for number, port in enumerate(ports):
            log = workdir / f"{name}-{number}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    where.command(port),
                    cwd=workdir,
                    env=where.env(),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            started.append(Served(f"http://127.0.0.1:{port}", process, log))
        for served in started:
            _wait_ready(served.process, served.url, "/healthz", served.log)
        yield started
    finally:  # all told at once (one SIGTERM each: a second one makes uvicorn force its exit)
        for served in started:
            if served.process.poll() is None:
                served.process.send_signal(signal.SIGTERM)
        for served in started:
            try:
                served.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                served.process.kill()
                served.process.wait(timeout=10)


def sqlite_rows(db: Path, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
    """Rows of a read-only query on a gateway's SQLite file (WAL: readers never block it)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return list(conn.execute(sql, params))
    finally:
        conn.close()


def counts(db: Path, table: str, column: str) -> dict[str, int]:
    """Rows of ``table`` by ``column`` (names from this module's callers, never from input)."""
    rows = sqlite_rows(db, f"SELECT {column}, count(*) FROM {table} GROUP BY {column}")
    return {str(value): int(str(count)) for value, count in rows}


def intent_counts(db: Path) -> dict[str, int]:
    """Execution intents by status."""
    return counts(db, "gateway_intents", "status")


class TimedReceiver(Receiver):
    """The example receiver, noting (``time.perf_counter``) when each key's first call arrived
    and when it was carried out; waiters can block until a key is done."""

    def __init__(self, secret: bytes, fail_rate: float = 0.0) -> None:
        super().__init__(secret, fail_rate=fail_rate)
        self.first_call: dict[str, float] = {}
        self.done_at: dict[str, float] = {}
        self._changed = threading.Condition(self.lock)

    def reset(self, fail_rate: float | None = None) -> None:
        """Forget everything seen (the same seeded failures again)."""
        with self.lock:
            self.done.clear()
            self.calls.clear()
            self.refused.clear()
            self.in_progress.clear()
            self.first_call.clear()
            self.done_at.clear()
            self._random = random.Random(2)  # which calls fail: the same each run
            if fail_rate is not None:
                self.fail_rate = fail_rate

    def handle(self, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        arrived = time.perf_counter()
        key = headers.get("idempotency-key", "")
        with self.lock:
            self.first_call.setdefault(key, arrived)
        status, text = super().handle(headers, body)
        if 200 <= status < 300:
            finished = time.perf_counter()
            with self._changed:
                self.done_at.setdefault(key, finished)
                self._changed.notify_all()
        return status, text

    def wait_done(self, key: str, timeout: float) -> float:
        """When ``key`` was carried out, waiting up to ``timeout`` seconds for it."""
        with self._changed:
            if not self._changed.wait_for(lambda: key in self.done_at, timeout):
                raise TimeoutError(f"no delivery of {key} within {timeout} s")
            return self.done_at[key]

    def wait_count(self, count: int, timeout: float) -> None:
        """Wait until ``count`` keys were carried out."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.done_at) >= count, timeout):
                raise TimeoutError(f"{len(self.done_at)} of {count} deliveries within {timeout} s")


class _BackloggedServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's default of 5 drops bursts of new connections


@contextlib.contextmanager
def receiving(receiver: Receiver) -> Iterator[str]:
    """``adapters.examples.receiver.running_receiver`` with a listen backlog of 128 instead of the
    socketserver default of 5: with 16 deliveries at once (each a new connection: the example
    handler speaks HTTP/1.0), a backlog of 5 overflows and the kernel drops connection
    attempts, which the sender retries after a second: a throughput figure would measure that
    second. Same handler, same ``Receiver``."""
    server = _BackloggedServer(("127.0.0.1", 0), _handler(receiver))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()
