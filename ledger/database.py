"""Database engines for the ledger: SQLite (WAL, fsync on commit) or PostgreSQL (psycopg 3, every
wait on the server bounded: ``Timeouts``).

Appends are serialised across processes: on SQLite by ``BEGIN IMMEDIATE`` (the write lock is
taken before the tail is read), on PostgreSQL by a transaction-scoped advisory lock whose key is
derived from the schema, so two ledgers in two schemas of one database never block each other.
On SQLite the writers of several processes also take turns (``AppendTurns``), so that none of
them waits out SQLite's busy-handler sleeps while the others write.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
import resource
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from ledger.models import ENTRIES, LEDGER_TABLES

__all__ = [
    "ANSWER_GRACE",
    "CONNECT_TIMEOUT",
    "JOIN_TRANSACTION",
    "WRITE",
    "AppendTurns",
    "Timeouts",
    "advisory_lock_key",
    "check_writable",
    "create_engine",
    "create_tables",
    "sqlite_file",
    "sqlite_room",
    "sqlite_url",
]

# Seconds a PostgreSQL connection attempt may take before it fails (libpq's connect_timeout).
CONNECT_TIMEOUT = 10

# Seconds past ``statement_timeout`` that this process still waits for an answer: a server that
# cancels the statement says so within them, one that says nothing is not coming back.
ANSWER_GRACE = 5.0

# TCP keepalive probes that go unanswered before a connection counts as dead.
_PROBES = 3


@dataclass(frozen=True)
class Timeouts:
    """How long a PostgreSQL connection waits on the server, in seconds: each wait is bounded,
    so a server that stops answering fails the request (an append among them) instead of
    holding it and everyone queued behind it.

    - ``connect``: a connection attempt (libpq's ``connect_timeout``, which waits 2 s at least).
    - ``statement``: the server cancels a statement that runs longer (``statement_timeout``).
      When not even that answer comes, this process stops waiting for the answer to a
      statement, a commit or a rollback ``ANSWER_GRACE`` seconds later and drops the
      connection (``ledger.waits``).
    - ``lock``: the server stops a statement that waits longer for a lock (``lock_timeout``),
      the ledger's append lock among them.
    - ``idle_in_transaction``: the server ends a session that sits in a transaction saying
      nothing for longer (``idle_in_transaction_session_timeout``), so that the locks of a
      client that froze mid-transaction go free for the others.
    - ``keepalive``: both ends probe a connection silent that long, then every ``keepalive``
      seconds; three probes unanswered, or data sent and not acknowledged for four times as
      long, and the connection is dropped (libpq's ``keepalives_*`` and ``tcp_user_timeout``,
      the server's ``tcp_keepalives_*``): a host that is gone, a route that was lost.
    """

    connect: float = CONNECT_TIMEOUT
    statement: float = 15.0
    lock: float = 10.0
    idle_in_transaction: float = 30.0
    keepalive: float = 10.0

    def connect_args(self) -> dict[str, Any]:
        """libpq's connection parameters for these bounds, the server's settings in ``options``."""
        keepalive = max(1, math.ceil(self.keepalive))
        server = {
            "statement_timeout": _milliseconds(self.statement),
            "lock_timeout": _milliseconds(self.lock),
            "idle_in_transaction_session_timeout": _milliseconds(self.idle_in_transaction),
            "tcp_keepalives_idle": keepalive,
            "tcp_keepalives_interval": keepalive,
            "tcp_keepalives_count": _PROBES,
        }
        return {
            "connect_timeout": max(1, math.ceil(self.connect)),
            "keepalives": 1,
            "keepalives_idle": keepalive,
            "keepalives_interval": keepalive,
            "keepalives_count": _PROBES,
            "tcp_user_timeout": keepalive * (_PROBES + 1) * 1000,
            "options": " ".join(f"-c {name}={value}" for name, value in server.items()),
        }


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


# Execution option that makes a SQLite transaction start with BEGIN IMMEDIATE.
WRITE = "ledger_write"

# ``Connection.info`` flag, for the ledger's writer: it has issued BEGIN IMMEDIATE on the driver
# connection itself, and the SQLAlchemy transaction that begins next joins that one instead of
# beginning another. Taken (popped) by that begin, so it holds for one transaction only.
JOIN_TRANSACTION = "ledger_join_transaction"


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file."""
    return f"sqlite:///{path}"


def sqlite_file(engine: Engine) -> Path | None:
    """The file of a SQLite engine's database; None for another database or an in-memory one."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    return Path(database)


def sqlite_room(engine: Engine) -> int | None:
    """How many bytes a SQLite database's files may still grow by: the free space of their file
    system, or less where this process may write no file past a size (``RLIMIT_FSIZE``, as
    ``ulimit -f`` sets it). None for another database or an in-memory one."""
    database = sqlite_file(engine)
    if database is None:
        return None
    usage = os.statvfs(database.parent)
    room = usage.f_bavail * usage.f_frsize
    limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limit != resource.RLIM_INFINITY:
        files = [database, Path(f"{database}-wal")]  # the two that grow
        largest = max((path.stat().st_size for path in files if path.exists()), default=0)
        room = min(room, limit - largest)
    return max(0, room)


class AppendTurns:
    """The order in which the ledger writers of several processes write to one SQLite file.

    SQLite's own lock keeps their transactions apart, but a writer that finds it taken sleeps
    (its busy handler waits 1, 2, 5 ... up to 100 ms between tries) while the writer that just
    committed takes it again at once: with two or more busy processes, one of them waited
    hundreds of milliseconds at a time (p99 of ``POST /v1/actions`` 200-850 ms against 16 ms
    for one process). So a writer first waits in the kernel for an exclusive ``flock`` on a
    file beside the database (``<db>.append-lock``), which wakes it as soon as the writer
    before it is done, and holds it for its one transaction. Only the order changes: SQLite's
    lock still guards the data, so where the lock file cannot be made, writers go without.
    """

    def __init__(self, engine: Engine) -> None:
        found = sqlite_file(engine)
        self._path = None if found is None else Path(f"{found}.append-lock")
        self._fd: int | None = None

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Wait for this process's turn (the GIL released meanwhile); hold it in the block."""
        fd = self._open()
        if fd is None:
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the lock file (harmless when it was never opened)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _open(self) -> int | None:
        if self._fd is None and self._path is not None:
            try:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                self._path = None  # a read-only directory, say: SQLite's lock alone, then
        return self._fd


def create_engine(
    url: str, *, schema: str | None = None, timeouts: Timeouts | None = None, **kwargs: Any
) -> Engine:
    """Create an engine configured for durable, serialised appends.

    SQLite: WAL journal, ``synchronous=FULL`` (a commit returns after fsync), ``secure_delete``
    (what is deleted is zeroed), a long busy timeout so concurrent writers queue instead of
    failing. PostgreSQL: ``schema`` sets the search path, so a test run (or a tenant) can keep
    its rows apart; every wait on the server is bounded by ``timeouts`` (default
    ``Timeouts()``; ``connect_args`` given here win).
    """
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url,
            connect_args={"timeout": 60, "check_same_thread": False},
            **kwargs,
        )
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    timeouts = timeouts or Timeouts()
    # Without them, a server that does not answer (a dropped route, a hung host, a full
    # backlog) holds whoever waits for minutes or for good: the ledger's writer, a readiness
    # check, every request behind them.
    connect_args = timeouts.connect_args() | dict(kwargs.pop("connect_args", {}))
    if schema is not None:
        connect_args["options"] += f" -c search_path={schema}"
    engine = sa.create_engine(url, connect_args=connect_args, pool_pre_ping=True, **kwargs)
    if engine.dialect.driver == "psycopg":
        answer_within = timeouts.statement + ANSWER_GRACE

        def connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
            from ledger.waits import connect_answering  # psycopg: only for PostgreSQL

            return connect_answering(answer_within, *cargs, **cparams)

        event.listen(engine, "do_connect", connect)
    return engine


def _sqlite_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself, so writers can ask for IMMEDIATE.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    _switch_to_wal(cursor)
    cursor.execute("PRAGMA synchronous=FULL")
    # Deleted and overwritten content is zeroed in its page, not left in free space: an erased
    # sealed value must not stay readable in the file (ledger.sealing).
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _switch_to_wal(cursor: sqlite3.Cursor) -> None:
    """Put the file in WAL mode, waiting (up to the busy timeout) for another writer.

    On a file that is not yet in WAL mode (a new one, while several processes start at once)
    the switch reads the header and then must write it; SQLite does not wait for a write lock
    that another connection holds when it is asked for inside a read, and fails at once with
    "database is locked". So wait here, as the busy timeout would.
    """
    deadline = time.monotonic() + 60  # the busy timeout
    delay = 0.001
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(2 * delay, 0.05)


def _sqlite_begin(conn: Connection) -> None:
    if conn.info.pop(JOIN_TRANSACTION, False):
        if not conn.connection.driver_connection.in_transaction:  # type: ignore[union-attr]
            # Never let SQLAlchemy think it is in a transaction that holds no lock.
            raise RuntimeError("asked to join a transaction, but the connection is in none")
        return
    immediate = conn.get_execution_options().get(WRITE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def advisory_lock_key(conn: Connection) -> int:
    """The PostgreSQL advisory lock key of the ledger in the connection's current schema."""
    schema = conn.execute(sa.text("SELECT current_schema()")).scalar_one()
    digest = hashlib.sha256(f"mandate-ledger:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def create_tables(engine: Engine) -> None:
    """Create the ledger's tables where they do not exist yet.

    Several processes may start at once on an empty database: the check and the creation run in
    one transaction that holds the append lock (SQLite ``BEGIN IMMEDIATE``, the PostgreSQL
    advisory lock), so the others wait, then find the tables made.
    """
    with engine.connect().execution_options(**{WRITE: True}) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(advisory_lock_key(conn))))
        SQLModel.metadata.create_all(conn, tables=list(LEDGER_TABLES))


def check_writable(engine: Engine) -> None:
    """Raise what an append would meet now, leaving nothing behind.

    In one transaction that takes the append lock (SQLite ``BEGIN IMMEDIATE``, the PostgreSQL
    advisory lock), a row is written to the entries' table as an append writes one, and rolled
    back: a file or a server that takes no writes, a missing grant or table, a lock that another
    process holds past the lock timeout all fail it. A connection that failed is dropped, not
    pooled: a SQLite file opened read-only stays so for that connection.
    """
    conn = engine.connect().execution_options(**{WRITE: True})
    try:
        with conn.begin() as transaction:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(advisory_lock_key(conn))))
            probe = {"seq": -1, "kind": "probe", "leaf_hash": b"", "data": b"", "nodes": b""}
            conn.execute(sa.insert(ENTRIES).values(probe))
            transaction.rollback()
    except BaseException:
        conn.invalidate()
        raise
    finally:
        conn.close()
