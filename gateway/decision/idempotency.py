"""What an idempotency key was answered, found before anything is decided.

A retry (the same owner's key again) is answered as the first time, to a token that could have
proposed it, and costs no decision and no write: the decider looks its key up first, in the
answers this process recorded or looked up lately (``Recent``, a bounded map), else in the
database (``Lookup``: one read of the unique (owner, key) index). The unique constraint in the
ledger's transaction still settles a key decided by two processes at once.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from gateway.db.tables import ACTIONS
from gateway.decision.answer import Answer, answer_json

__all__ = ["Decided", "Lookup", "Recent"]

Key = tuple[str, str]  # (owner, idempotency key)


@dataclass(frozen=True, slots=True)
class Decided:
    """A key's recorded proposal: its request digest, the token that made it, its answer."""

    digest: str
    executor: str
    answer: Answer


class Recent:
    """The answers of the keys this process decided or looked up lately, the oldest dropped
    first past ``capacity`` (a retry storm follows its first attempts closely)."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._decided: dict[Key, Decided] = {}

    def get(self, key: Key) -> Decided | None:
        return self._decided.get(key)

    def put(self, key: Key, decided: Decided) -> None:
        kept = self._decided
        if len(kept) >= self.capacity and key not in kept:
            del kept[next(iter(kept))]  # dicts keep insertion order: the oldest
        kept[key] = decided


class Lookup:
    """Reads a key's record in the database: one statement on a driver connection that each
    thread keeps open, in autocommit (no transaction outlives the read). Through a pooled
    SQLAlchemy connection the same read cost some 30 times more (checkout, BEGIN, ROLLBACK),
    and it runs before every decision. ``close`` closes them all."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self._sql = _BY_IDEMPOTENCY_KEY.format(table=ACTIONS.name, mark=mark)
        self._errors: tuple[type[Exception], ...] = (
            engine.dialect.loaded_dbapi.Error,
            sa.exc.SQLAlchemyError,
        )
        self._local = threading.local()
        self._opened: list[Any] = []
        self._lock = threading.Lock()

    def __call__(self, key: Key) -> Decided | None:
        """The key's recorded proposal, or None; ``sa.exc.OperationalError`` when the database
        cannot say (the connection is then dropped, and the next read opens another)."""
        try:
            conn = self._connection()
            cursor = conn.cursor()
            try:
                cursor.execute(self._sql, key)
                row = cursor.fetchone()
            finally:
                cursor.close()
        except self._errors as exc:
            self._drop()
            raise sa.exc.OperationalError(self._sql, key, exc) from exc
        if row is None:
            return None
        digest, executor, response, action_id, verdict, proposal_seq, decision_seq, leaf = row
        answer = Answer(
            action_id,
            verdict,
            proposal_seq,
            decision_seq,
            answer_json(bytes(response), proposal_seq, decision_seq, leaf),
        )
        return Decided(digest, executor, answer)

    def close(self) -> None:
        """Close every connection this lookup opened, in whichever thread."""
        with self._lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            with contextlib.suppress(Exception):
                conn.close()

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._engine.raw_connection()
            if self._postgres:
                driver: Any = conn.driver_connection
                driver.autocommit = True
            conn.detach()  # this lookup's until closed: the pool neither counts nor reuses it
            self._local.conn = conn
            with self._lock:
                self._opened.append(conn)
        return conn

    def _drop(self) -> None:
        conn, self._local.conn = getattr(self._local, "conn", None), None
        if conn is not None:
            with self._lock:
                if conn in self._opened:
                    self._opened.remove(conn)
            with contextlib.suppress(Exception):
                conn.close()


_BY_IDEMPOTENCY_KEY = (
    "SELECT request_digest, executor, response, id, verdict, proposal_seq, decision_seq, "
    "decision_leaf FROM {table} WHERE owner = {mark} AND idempotency_key = {mark}"
)
