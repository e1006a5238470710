"""What the gateway and dispatch benches share: gateways in subprocesses, tokens, a receiver
that notes when each delivery arrived, and the gateway's database read from outside.

A served gateway is ``mandate serve`` (uvicorn, uvloop, httptools, one worker) in a process of
its own, in a scratch working directory and with every ``MANDATE_*`` variable of the caller's
environment removed, so that neither a ``mandate.toml`` nor a stray setting changes what is
measured. It is stopped by its process id.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx

from adapters.receiver import Receiver, _handler
from gateway.serving import free_port

__all__ = [
    "POLICIES",
    "REPO",
    "Served",
    "TimedReceiver",
    "clean_env",
    "counts",
    "cpu_seconds",
    "free_port",
    "gateway_command",
    "intent_counts",
    "mandate_command",
    "receiving",
    "serve",
    "sqlite_rows",
    "tokens",
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
    return [sys.executable, "-c", "from gateway.cli import app; app()"]


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without ``MANDATE_*``, plus ``settings`` (as MANDATE_<KEY>),
    with this checkout first on PYTHONPATH: a subprocess runs the code the bench imports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANDATE_")}
    env.update({f"MANDATE_{key.upper()}": value for key, value in settings.items()})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def tokens(data_dir: Path, wanted: Sequence[tuple[str, str, str | None]]) -> dict[str, str]:
    """Make tokens with ``mandate token create``, one after another: (name, role, workflow)
    each; returns name -> token."""
    made = {}
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, role, workflow in wanted:
        cmd = [*mandate_command(), "token", "create", "--name", name, "--role", role]
        cmd += ["--data-dir", str(data_dir), "--policies", str(POLICIES)]
        if workflow:
            cmd += ["--workflow", workflow]
        done = subprocess.run(
            cmd,
            cwd=data_dir.parent,
            env=clean_env(),
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


def gateway_command(port: int, data_dir: Path) -> list[str]:
    """``mandate serve`` on loopback ``port`` with ``data_dir`` and the repository's policies."""
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
    ]


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds a process has used (Linux ``/proc``), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return (int(fields[11]) + int(fields[12])) / ticks


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
    """``adapters.receiver.running_receiver`` with a listen backlog of 128 instead of the
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
