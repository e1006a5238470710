"""Short reads on the hot path, on a driver connection that each thread keeps open.

A decision reads a few indexed rows before it is made (its idempotency key, whether its
resource is new). Through a pooled SQLAlchemy connection each such read cost some 30 times more
than the read itself (checkout, BEGIN, ROLLBACK, result wrapping): about 250 µs against 9 µs on
SQLite. ``KeptReads`` runs a statement compiled once for the database's dialect on a driver
connection of this thread's, in autocommit, so that no transaction outlives a read (SQLite's
WAL is never pinned) and each read sees what is committed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

__all__ = ["KeptReads", "Read"]


@dataclass(frozen=True, slots=True)
class Read:
    """A statement as the driver takes it: its SQL, its parameters' defaults, and their order
    where the driver takes them by position."""

    sql: str
    defaults: Mapping[str, Any]
    order: tuple[str, ...] | None

    def parameters(self, given: Mapping[str, Any]) -> Any:
        """The driver's parameters for ``given`` values (the statement's own literals kept)."""
        values = {**self.defaults, **given}
        return values if self.order is None else tuple(values[name] for name in self.order)


class KeptReads:
    """Runs ``Read`` statements on this thread's kept connection (see the module)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._errors: tuple[type[Exception], ...] = (
            engine.dialect.loaded_dbapi.Error,
            sa.exc.SQLAlchemyError,
        )
        self._local = threading.local()
        self._opened: list[Any] = []
        self._lock = threading.Lock()

    def prepare(self, statement: sa.Select[*tuple[Any, ...]]) -> Read:
        """``statement`` compiled for this database (bound parameters named, literals too)."""
        compiled = statement.compile(dialect=self._engine.dialect)
        order = (
            tuple(compiled.positiontup) if compiled.positional and compiled.positiontup else None
        )
        return Read(compiled.string, dict(compiled.params), order)

    def rows(self, read: Read, given: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """The rows ``read`` finds for ``given``; ``sa.exc.OperationalError`` when the database
        cannot say (the connection is then dropped, and the next read opens another)."""
        parameters = read.parameters(given)
        while True:
            try:
                conn, fresh = self._connection()
            except self._errors as exc:
                raise sa.exc.OperationalError(read.sql, parameters, exc) from exc
            try:
                cursor = conn.cursor()
                try:
                    cursor.execute(read.sql, parameters)
                    return [tuple(row) for row in cursor.fetchall()]
                finally:
                    cursor.close()
            except self._errors as exc:
                lost = _lost(conn)
                self._drop()
                # A kept connection the server closed meanwhile (it restarted, a proxy between
                # dropped it) is what a pool would have replaced: read again on a new one.
                if fresh or not lost:
                    raise sa.exc.OperationalError(read.sql, parameters, exc) from exc

    def close(self) -> None:
        """Close every connection these reads opened, in whichever thread."""
        with self._lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            with contextlib.suppress(Exception):
                conn.close()

    def _connection(self) -> tuple[Any, bool]:
        """This thread's connection, and whether it was opened just now."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, False
        conn = self._engine.raw_connection()
        if self._postgres:
            driver: Any = conn.driver_connection
            driver.autocommit = True
        conn.detach()  # these reads' until closed: the pool neither counts nor reuses it
        self._local.conn = conn
        with self._lock:
            self._opened.append(conn)
        return conn, True

    def _drop(self) -> None:
        """Close this thread's connection after a failed read. Closed directly, not through
        the pool, whose reset would roll back on a connection that may be gone, and log that
        at ERROR with a traceback."""
        conn, self._local.conn = getattr(self._local, "conn", None), None
        if conn is not None:
            with self._lock:
                if conn in self._opened:
                    self._opened.remove(conn)
            driver = conn.dbapi_connection
            with contextlib.suppress(Exception):
                conn.invalidate()  # detached: the pool forgets it, and does no I/O on it
            with contextlib.suppress(Exception):
                driver.close()


def _lost(conn: Any) -> bool:
    """Whether the driver says the connection is gone (psycopg: ``broken`` or ``closed``)."""
    driver = conn.dbapi_connection  # None once closed
    return bool(getattr(driver, "broken", False) or getattr(driver, "closed", False))
