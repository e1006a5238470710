"""The SQL of one append: a transaction that holds the cross-process lock, or one statement.

Most of it goes straight to the driver: compiling the hot statements through SQLAlchemy per
batch would cost more than the rows themselves.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import sqlite3
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ledger.batch import Row
from ledger.database import JOIN_TRANSACTION
from ledger.merkle import HASH_SIZE

__all__ = ["ONE_STATEMENT_MAX", "Transaction", "append_in_one_statement", "driver_statements"]

_SELECT_TAIL = "SELECT seq, leaf_hash FROM ledger_entries ORDER BY seq DESC LIMIT 1"
_SELECT_SINCE = (
    "SELECT seq, kind, leaf_hash FROM ledger_entries WHERE seq >= {mark} ORDER BY seq LIMIT {mark}"
)
_INSERT_ENTRIES = "INSERT INTO ledger_entries (seq, kind, leaf_hash, data, nodes) VALUES ({})"
# The most entries the SQLite writer appends in one statement (one prepared statement per count
# up to this, kept in the driver's statement cache); larger batches take the transaction path.
ONE_STATEMENT_MAX = 64
_ONE_STATEMENT = (
    "INSERT INTO ledger_entries (seq, kind, leaf_hash, data, nodes) "
    "SELECT * FROM (VALUES {values}) "
    "WHERE EXISTS (SELECT 1 FROM ledger_entries WHERE seq = ? AND leaf_hash = ?) "
    "AND NOT EXISTS (SELECT 1 FROM ledger_entries WHERE seq >= ?)"
)


def driver_statements(engine: Engine) -> tuple[str, str]:
    """The entries' insert and the read of the entries since a seq, in the driver's own
    parameter style (for ``Transaction.insert_entries`` and ``Transaction.since``)."""
    mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    return _INSERT_ENTRIES.format(", ".join([mark] * 5)), _SELECT_SINCE.format(mark=mark)


@functools.lru_cache(maxsize=ONE_STATEMENT_MAX)
def _one_statement(count: int) -> str:
    """Insert ``count`` entries if, and only if, the log ends where they start."""
    values = ", ".join(["(?, ?, ?, ?, ?)"] * count)  # placeholders only: nothing is quoted
    return _ONE_STATEMENT.replace("{values}", values)


def append_in_one_statement(
    cursor: sqlite3.Cursor, entries: list[Row], base: tuple[int, bytes]
) -> bool:
    """SQLite, entries only: check the tail, insert and commit in one statement.

    An INSERT takes SQLite's write lock when it starts, before it reads anything (its program
    opens a write transaction first, as BEGIN IMMEDIATE does), so the check that the log still
    ends at ``base`` (its size and last leaf hash) and the insert are one atomic step, as a
    separate tail read under BEGIN IMMEDIATE would be. Run as one statement outside any
    explicit transaction, it also commits (and waits for fsync) inside that one call into
    SQLite, which releases the GIL for all of it: callers keep preparing the next batch
    meanwhile.

    False when nothing was written: another process appended (the tail moved), or SQLite
    refused (busy). The caller then takes the transaction path, which reads the tail under
    BEGIN IMMEDIATE and builds again.
    """
    driver = cursor.connection
    if driver.isolation_level is not None or driver.in_transaction:
        # Not in autocommit mode (an engine not made by ledger.database.create_engine), or
        # inside a transaction: the statement would not commit by itself.
        return False
    size, prev = base
    statement = _one_statement(len(entries))
    params = [*itertools.chain.from_iterable(entries), size - 1, prev, size]
    try:
        cursor.execute(statement, params)
    except sqlite3.Error:
        return False
    return cursor.rowcount == len(entries) and not driver.in_transaction


class Transaction:
    """One append transaction on the writer's connection, holding the cross-process lock.

    SQLite: the hot statements (``BEGIN IMMEDIATE``, the tail, the entries, ``COMMIT``) go
    through the driver connection under the writer's SQLAlchemy connection: per batch that
    saves more Python time than the rows of a 16-entry batch cost SQLite. Whatever needs
    SQLAlchemy (the other tables, the callers' rows and hooks, reading a frontier back) calls
    ``core()``, which makes SQLAlchemy join the transaction the driver began (see
    ``ledger.database.JOIN_TRANSACTION``): one transaction, one commit. PostgreSQL: all Core,
    the transaction-scoped advisory lock taken first.
    """

    __slots__ = ("_conn", "_core", "_cursor")

    def __init__(self, conn: Connection, cursor: sqlite3.Cursor | None) -> None:
        self._conn = conn
        self._cursor = cursor
        self._core: sa.RootTransaction | None = None

    def begin(self, lock_key: int | None) -> None:
        if self._cursor is not None:
            self._cursor.execute("BEGIN IMMEDIATE")
            return
        self._core = self._conn.begin()
        if lock_key is not None:
            self._conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock_key)))

    def tail(self) -> tuple[int, bytes]:
        """The size of the log and its last leaf hash (zeros when empty), as the database has it."""
        if self._cursor is not None:
            last = self._cursor.execute(_SELECT_TAIL).fetchone()
        else:
            last = self._conn.exec_driver_sql(_SELECT_TAIL).first()
        return (0, bytes(HASH_SIZE)) if last is None else (int(last[0]) + 1, bytes(last[1]))

    def since(self, statement: str, start: int, limit: int) -> list[tuple[int, str, bytes]]:
        """(seq, kind, leaf hash) of at most ``limit`` entries from ``start`` on, in order
        (``statement``: the second of ``driver_statements``)."""
        params = (start, limit)
        rows: Iterable[Any]
        if self._cursor is not None:
            rows = self._cursor.execute(statement, params).fetchall()
        else:
            rows = self._conn.exec_driver_sql(statement, params).all()
        return [(int(seq), str(kind), bytes(leaf)) for seq, kind, leaf in rows]

    def insert_entries(self, statement: str, rows: list[Row]) -> None:
        if self._cursor is not None:
            self._cursor.executemany(statement, rows)
        else:
            self._conn.exec_driver_sql(statement, rows)

    def core(self) -> Connection:
        """The writer's SQLAlchemy connection, in this very transaction."""
        if self._core is None:
            self._conn.info[JOIN_TRANSACTION] = True
            self._core = self._conn.begin()
        return self._conn

    def commit(self) -> None:
        if self._core is not None:
            self._core.commit()
        else:
            assert self._cursor is not None
            self._cursor.execute("COMMIT")

    def abandon(self) -> None:
        """Roll back what can be (the caller drops the connection anyway)."""
        with contextlib.suppress(Exception):
            if self._core is not None and self._core.is_active:
                self._core.rollback()
            elif self._cursor is not None and self._cursor.connection.in_transaction:
                self._cursor.connection.rollback()
        with contextlib.suppress(Exception):
            self._conn.info.pop(JOIN_TRANSACTION, None)
