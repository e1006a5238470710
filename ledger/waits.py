"""PostgreSQL connections that stop waiting: a server that never answers ends a wait in an error.

libpq waits for a server's answer without a limit of its own. The server's timeouts bound the
work it does (``statement_timeout``, ``lock_timeout``) and TCP keepalives a link that is gone,
but a server that keeps its connection open and says nothing (a hung host, a disk that stalls
its commits, a network path that freezes) would hold whoever waits on it for good: the ledger's
writer, and with it every decision. So each wait of a connection made here for an answer (a
statement, a commit, a rollback) is registered with its deadline, and a watchdog thread that
looks a few times a second shuts the socket of an overdue one down. That ends the wait with an
``OperationalError`` that says how long it waited, and the connection with it: the pool makes a
new one, once the server answers again.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg

__all__ = ["connect_answering"]

# How often the watchdog looks for overdue waits: a wait ends at most this much past its bound.
_LOOK_EVERY = 0.25


class _Watchdog:
    """The waits for an answer in progress, and the thread that ends the overdue ones."""

    def __init__(self) -> None:
        self._ids = itertools.count()
        self._start_afresh()

    def _start_afresh(self) -> None:
        """No waits, no thread yet (also in a forked child, which has neither)."""
        self._lock = threading.Lock()
        self._waits: dict[int, tuple[float, int]] = {}  # wait -> (deadline, socket)
        self._overdue: set[int] = set()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def bound(self, connection: psycopg.Connection[Any], seconds: float) -> Iterator[None]:
        """Run the block (one wait for an answer on ``connection``) within ``seconds``."""
        if connection.closed:
            yield  # psycopg says so itself
            return
        wait = next(self._ids)
        with self._lock:
            self._waits[wait] = (time.monotonic() + seconds, connection.fileno())
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="postgres-watchdog", daemon=True
                )
                self._thread.start()
        try:
            yield
        except psycopg.OperationalError as exc:
            if self._end(wait):
                raise psycopg.OperationalError(
                    f"the database server did not answer within {seconds:g} s"
                ) from exc
            raise
        finally:
            self._end(wait)

    def _end(self, wait: int) -> bool:
        """Forget a wait (once it is over, the socket may be another's); whether it was overdue."""
        with self._lock:
            self._waits.pop(wait, None)
            overdue = wait in self._overdue
            self._overdue.discard(wait)
        return overdue

    def _watch(self) -> None:
        while True:
            time.sleep(_LOOK_EVERY)
            now = time.monotonic()
            # Under the lock: a wait that ends meanwhile waits for its socket to be shut down
            # before its connection can close it (and the number be given to another file).
            with self._lock:
                for wait, (deadline, fd) in self._waits.items():
                    if deadline <= now and wait not in self._overdue:
                        self._overdue.add(wait)
                        _shut_down(fd)


def _shut_down(fd: int) -> None:
    """End the connection on socket ``fd`` for both sides: a wait on it returns at once."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    with sock, contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


_WATCHDOG = _Watchdog()
os.register_at_fork(after_in_child=_WATCHDOG._start_afresh)


class _Connection(psycopg.Connection[Any]):
    """A connection whose commits and rollbacks wait for their answer ``answer_within`` s."""

    answer_within: float = 0.0

    def commit(self) -> None:
        with _WATCHDOG.bound(self, self.answer_within):
            super().commit()

    def rollback(self) -> None:
        with _WATCHDOG.bound(self, self.answer_within):
            super().rollback()


class _Cursor(psycopg.Cursor[Any]):
    """A cursor of a ``_Connection``, whose statements wait for their answer as long."""

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        connection = self.connection
        assert isinstance(connection, _Connection)
        with _WATCHDOG.bound(connection, connection.answer_within):
            return super().execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> None:
        connection = self.connection
        assert isinstance(connection, _Connection)
        with _WATCHDOG.bound(connection, connection.answer_within):
            super().executemany(*args, **kwargs)


def connect_answering(seconds: float, *args: Any, **kwargs: Any) -> psycopg.Connection[Any]:
    """``psycopg.connect(*args, **kwargs)``, whose every wait for an answer from the server (a
    statement, a commit, a rollback) ends after ``seconds`` with an ``OperationalError`` that
    says so. The connection attempt itself is bounded by libpq's ``connect_timeout``."""
    connection = _Connection.connect(*args, cursor_factory=_Cursor, **kwargs)
    connection.answer_within = seconds
    return connection
