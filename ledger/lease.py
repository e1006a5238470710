"""The signer lease: one process at a time signs a ledger's periodic checkpoints.

Several processes (gateway workers, gateways behind a load balancer) append to one ledger.
Each has a checkpoint-interval timer; were they all to sign when it fires, the log would get a
checkpoint from each in turn whenever entries come in slowly, and the processes would contend
for the append lock for nothing. So one process holds the duty, by a lease that the operating
system or the database server releases when its holder dies (a crash, SIGKILL, the OOM killer,
a lost connection): no expiry to tune, no clock to trust, and no holder outlives its process.
The others try to take it at each of their own ticks, so a survivor takes over within one
interval of the holder's death.

- PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) on a connection of its
  own, kept checked out of the pool, in autocommit (never idle in a transaction), for as long
  as the lease is held. The key derives from the current schema and differs from the append
  lock's (``ledger.database.advisory_lock_key``), so ledgers in two schemas of one database
  (two tenants, two test runs) never see each other's lease, and holding the lease never
  blocks an append. The server releases it when the session ends, however it ends; the holder
  learns that the session is gone at its next check, a query on that connection.
- SQLite: ``flock(LOCK_EX | LOCK_NB)`` on a file beside the database (``<db>.signer-lock``),
  kept open while held. The kernel releases it when the descriptor closes, with its process.
  A flock lock belongs to the open file description, so two ``Ledger`` objects of one process
  exclude each other as two processes do.
- An in-memory SQLite database belongs to one connection of one process: the lease is always
  held there.

Taking the lease never waits: a process that does not get it simply does not sign this time.
Checkpoints signed on demand (``Ledger.checkpoint``, an export, a key rotation) and those that
come due by entry count (signed inside the append that makes them due, under the append lock)
need no lease.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ledger.database import sqlite_file

__all__ = ["SignerLease", "signer_lock_key", "signer_lock_path"]

_LOCK_SUFFIX = ".signer-lock"


def signer_lock_key(conn: Connection) -> int:
    """The PostgreSQL advisory lock key of the signer lease of the ledger in the connection's
    current schema: another key than the append lock's, from the same schema."""
    schema = conn.execute(sa.text("SELECT current_schema()")).scalar_one()
    digest = hashlib.sha256(f"mandate-ledger-signer:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def signer_lock_path(engine: Engine) -> Path | None:
    """The lock file of a SQLite database's signer lease; None for an in-memory database."""
    database = sqlite_file(engine)
    return None if database is None else Path(f"{database}{_LOCK_SUFFIX}")


class SignerLease:
    """The duty of signing a ledger's periodic checkpoints, held by one process at a time.

    ``hold()`` is the one check a holder makes before it signs: it confirms that the lease is
    still held (the lock's connection or file still there), or tries to take it (never waiting)
    when it is not. ``held`` is what the last check found, without asking again. ``release()``
    gives it up. Not thread-safe: one thread (the ledger's writer) checks and releases it.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._path = None if self._postgres else signer_lock_path(engine)
        self._conn: Connection | None = None  # PostgreSQL: the session holding the lock
        self._fd: int | None = None  # SQLite: the open lock file holding the flock
        self._key: int | None = None  # PostgreSQL: the lock's key, read once
        self._held = False
        self._problem: str | None = None

    @property
    def held(self) -> bool:
        """Whether this lease was held at its last check (no I/O)."""
        return self._held

    @property
    def problem(self) -> str | None:
        """Why the last attempt to take the lease failed for another reason than another
        holder (the server unreachable, the lock file not writable), or None."""
        return self._problem

    def hold(self) -> bool:
        """Whether this process holds the lease now, taking it if it is free. Never raises,
        never waits: a failure to check counts as not holding (another process may then take
        over), and the next call tries again."""
        try:
            if self._postgres:
                self._held = self._hold_postgres()
            elif self._path is None:
                self._held = True  # an in-memory database: this process is the only one
            else:
                self._held = self._hold_file(self._path)
            self._problem = None
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            self._problem = f"{type(exc).__name__}: {first[:200]}"
            self.release()
        return self._held

    def release(self) -> None:
        """Give the lease up (the next holder can take it at once); harmless when not held."""
        self._held = False
        conn, self._conn = self._conn, None
        if conn is not None:
            # Unlock first: the server ends a closed session (and frees its locks) a moment
            # after the close returns, and whoever takes over next must find the lock free.
            # Then close the session, so that it never returns to the pool holding a lock.
            with contextlib.suppress(Exception):
                conn.execute(sa.select(sa.func.pg_advisory_unlock(self._key)))
            with contextlib.suppress(Exception):
                conn.invalidate()
            with contextlib.suppress(Exception):
                conn.close()
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # releases the flock

    # -- PostgreSQL ---------------------------------------------------------------------------

    def _hold_postgres(self) -> bool:
        if self._conn is not None:
            try:
                # A session lock lasts as long as the session: if it answers, it is held.
                self._conn.execute(sa.text("SELECT 1"))
                return True
            except Exception:
                self.release()  # terminated or lost: held no more; try again, as anyone would
        conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            key = self._key
            if key is None:
                key = self._key = signer_lock_key(conn)
            taken = conn.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar_one()
        except BaseException:
            with contextlib.suppress(Exception):
                conn.invalidate()
            conn.close()
            raise
        if taken:
            self._conn = conn
            return True
        conn.close()  # back to the pool, holding nothing
        return False

    # -- SQLite -------------------------------------------------------------------------------

    def _hold_file(self, path: Path) -> bool:
        if self._fd is not None:
            if _same_file(self._fd, path):
                return True
            # The lock file was removed or replaced: another process may lock the new one.
            self.release()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        if not _same_file(fd, path):  # replaced between the open and the lock
            os.close(fd)
            return False
        self._fd = fd
        return True


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is still the one at ``path``."""
    try:
        there = path.stat()
    except FileNotFoundError:
        return False
    here = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
