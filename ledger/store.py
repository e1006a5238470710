"""The ledger store: durable, serialised, group-committed appends; proofs; checkpoints; erasure.

Appends go through one writer thread per ``Ledger``, pipelined so that what the callers do and
what the database does overlap:

- A caller (a thread, or an asyncio task on its event loop) validates and encodes its records,
  then queues them under the ledger's lock. While the writer commits one batch, what is queued
  meanwhile is built right there into the next one (the draft): each entry gets its ``seq``, its
  ``prev`` link, its leaf hash and the subtree hashes it completes, on top of the tail that the
  committing batch leaves.
- The writer takes what is queued as the next batch (building what the draft did not, and
  adding a checkpoint when one is due) and writes it under the cross-process append lock. On
  SQLite a batch of entries alone is one statement that checks that the log still ends where
  the batch starts, inserts and commits, with the GIL released for all of it, fsync included.
  Any other batch, and every batch on PostgreSQL, is a transaction: ``BEGIN IMMEDIATE`` or the
  advisory lock, the tail, the entries, the other rows, the callers' rows and hooks, commit.
  When the log does not end where a batch was built to start (another process appended, or the
  batch before failed), the batch is built again from the database's tail under the lock:
  contiguous ``seq``, one chain, never a fork. That tail is caught up from the one this writer
  last saw, with the same read that checks it: the leaf hashes appended since, added to its
  frontier (see ``Ledger._catch_up``).
- Callers return only once their batch is committed (an append is durable when ``append``
  returns). The writer tells them at once and starts on the next batch, already built: their
  next appends are made while that one waits for fsync. With many concurrent callers the
  appends settle into two groups that take turns, one committing while the other prepares; the
  writer splits the crowd in two when it finds everybody waiting at once.

Checkpoints come due by entry count, inside the append that makes them due (whichever process
makes it, under the append lock), or by time: when the checkpoint interval passes with entries
unsigned. With several processes on one database only one signs those periodic checkpoints,
the holder of the signer lease (``ledger.lease``), which dies with its holder: the others try
to take it at each tick of their own timers, so one of them takes over within an interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import itertools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.compact import CompactRange
from ledger.database import (
    JOIN_TRANSACTION,
    WRITE,
    AppendTurns,
    advisory_lock_key,
    create_tables,
)
from ledger.entry import (
    Entry,
    assemble_entry,
    canonical_json,
    check_kind,
    format_time,
    parse_entry,
)
from ledger.errors import EntryError, LedgerError, ProofError, SignatureError, StorageError
from ledger.lease import SignerLease
from ledger.merkle import (
    complete_subtrees,
    consistency_proof_ranges,
    fold_subtrees,
    inclusion_proof_ranges,
)
from ledger.models import CHECKPOINTS, ENTRIES, KEYS, SEALED
from ledger.note import NoteSigner

__all__ = ["Appended", "Ledger", "Record", "StoredCheckpoint"]

SEALED_MARK = "$sealed"
_SELECT_TAIL = "SELECT seq, leaf_hash FROM ledger_entries ORDER BY seq DESC LIMIT 1"
# The most entries other processes may have appended since this writer's last batch for it to
# catch up on them leaf by leaf (see Ledger._catch_up); past that it rebuilds the tail whole.
_CATCH_UP_MAX = 4096
_SELECT_SINCE = (
    "SELECT seq, kind, leaf_hash FROM ledger_entries WHERE seq >= {mark} ORDER BY seq LIMIT {mark}"
)
_INSERT_ENTRIES = "INSERT INTO ledger_entries (seq, kind, leaf_hash, data, nodes) VALUES ({})"
_HASH = 32
# When the writer wakes to find this many requests waiting, it commits only half of them: the
# other half becomes the next batch, and from then on one group of callers prepares its next
# appends while the other's batch commits (see Ledger._take).
_PIPELINE_FROM = 16
# The most entries the SQLite writer appends in one statement (one prepared statement per count
# up to this, kept in the driver's statement cache); larger batches take the transaction path.
_ONE_STATEMENT_MAX = 64
_ONE_STATEMENT = (
    "INSERT INTO ledger_entries (seq, kind, leaf_hash, data, nodes) "
    "SELECT * FROM (VALUES {values}) "
    "WHERE EXISTS (SELECT 1 FROM ledger_entries WHERE seq = ? AND leaf_hash = ?) "
    "AND NOT EXISTS (SELECT 1 FROM ledger_entries WHERE seq >= ?)"
)


@functools.lru_cache(maxsize=_ONE_STATEMENT_MAX)
def _one_statement(count: int) -> str:
    """Insert ``count`` entries if, and only if, the log ends where they start."""
    values = ", ".join(["(?, ?, ?, ?, ?)"] * count)  # placeholders only: nothing is quoted
    return _ONE_STATEMENT.replace("{values}", values)


class Record(NamedTuple):
    """What a caller asks to append. ``sensitive`` names body fields (dotted paths) to seal."""

    kind: str
    actor: str
    subject: str
    body: Mapping[str, Any]
    sensitive: Sequence[str] = ()


class Appended(NamedTuple):
    """A durable entry: where it landed and what it hashes to."""

    seq: int
    leaf_hash: bytes
    time: str
    data: bytes


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A signed tree head as stored: the note, and the size and root it signs."""

    size: int
    root_hash: bytes
    note: str
    seq: int


class _Prepared(NamedTuple):
    """A record validated and encoded in the caller's thread, ready to be enveloped."""

    kind: str
    actor: bytes  # canonical JSON
    subject: bytes  # canonical JSON
    body: bytes  # canonical JSON
    sealed: Sequence[tuple[str, bytes, bytes]]  # (path, salt, canonical value)
    subject_text: str


InTransaction = Callable[[Connection, list[Appended]], None]
RowsFor = Callable[[list[Appended]], Sequence[tuple[sa.Table, Mapping[str, Any]]]]
_Outcome = list[Appended] | BaseException
_Row = tuple[int, str, bytes, bytes, bytes]  # seq, kind, leaf_hash, data, nodes

# RFC 9162 leaf hashes start from a copy of a hasher seeded with the prefix 0x00 (no copy of
# the entry's bytes behind a prefix). The seed is never updated, so threads may share it.
_new_leaf_hasher = hashlib.sha256(b"\x00").copy


class _Waiter:
    """A thread waiting for its request: a lock it does not hold, released once settled.

    Lighter than a ``concurrent.futures.Future`` (no condition variable, no callbacks): the
    waiting thread blocks acquiring the lock, the writer sets the outcome and releases it.
    """

    __slots__ = ("_settled", "outcome")

    def __init__(self) -> None:
        self._settled = threading.Lock()
        self._settled.acquire()
        self.outcome: _Outcome | None = None

    def set(self, outcome: _Outcome) -> None:
        self.outcome = outcome
        self._settled.release()

    def wait(self) -> list[Appended]:
        self._settled.acquire()
        outcome = self.outcome
        if isinstance(outcome, BaseException):
            raise outcome
        assert outcome is not None
        return outcome


@dataclass(slots=True)
class _Request:
    """Work for the writer and who waits for it: a thread (``thread``) or a coroutine."""

    records: list[_Prepared]
    rows: RowsFor | None = None
    in_transaction: InTransaction | None = None
    force_checkpoint: bool = False
    rotate_to: NoteSigner | None = None
    thread: _Waiter | None = None
    future: asyncio.Future[list[Appended]] | None = None


@dataclass(frozen=True, slots=True)
class _Tail:
    """The end of the log as this writer sees it: committed, or past a batch not yet committed.

    ``frontier`` is never appended to once it is a tail's: a ``_Build`` works on a copy.
    """

    size: int
    prev: bytes
    frontier: CompactRange
    checkpoint_size: int
    vkey: str | None
    signer: NoteSigner


class _Build:
    """The rows of one transaction, built from a known tail before anything is written.

    Entries get their ``seq``, ``prev``, leaf hash and completed subtree hashes here, and the
    checkpoint and key rows when due. A build is only valid on top of ``base`` (the size and
    last leaf hash it started from): the writer checks that against the database under the
    append lock, and builds again from the database's tail when another process appended.
    """

    __slots__ = (
        "base",
        "checkpoint_size",
        "checkpoints",
        "end",
        "entries",
        "every",
        "forced",
        "frontier",
        "keys",
        "origin",
        "prev",
        "records",
        "results",
        "sealed",
        "signer",
        "size",
        "time",
        "time_json",
        "vkey",
    )

    def __init__(self, tail: _Tail, *, origin: str, every: int, now: dt.datetime) -> None:
        self.base = (tail.size, tail.prev)
        self.size = tail.size
        self.prev = tail.prev
        self.frontier = tail.frontier.copy()
        self.checkpoint_size = tail.checkpoint_size
        self.vkey = tail.vkey
        self.signer = tail.signer
        self.origin = origin
        self.every = every
        self.time = format_time(now)
        self.time_json = canonical_json(self.time, "time")
        self.entries: list[_Row] = []
        self.sealed: list[Mapping[str, Any]] = []
        self.checkpoints: list[Mapping[str, Any]] = []
        self.keys: list[Mapping[str, Any]] = []
        self.results: list[list[Appended]] = []  # one list per request added
        self.records = 0  # the callers' records among the entries
        self.forced = False
        self.end: _Tail | None = None  # set by finish()
        if self.size == 0:
            self._add_key(self.signer.vkey, None)
            self.vkey = self.signer.vkey

    def add(self, request: _Request) -> None:
        """Add a request's records (and the key handover it asks for) after those so far."""
        appended = list(map(self._add, request.records))
        if request.rotate_to is not None:
            self._add_key(request.rotate_to.vkey, self.vkey)
            self._add_checkpoint(self.signer)
            self.signer, self.vkey = request.rotate_to, request.rotate_to.vkey
        self.forced = self.forced or request.force_checkpoint
        self.results.append(appended)
        self.records += len(appended)

    def finish(self, *, forced: bool = False) -> _Tail:
        """Sign a checkpoint if one is due; return (and keep as ``end``) the tail after it."""
        uncovered = self.size - self.checkpoint_size - (1 if self.checkpoint_size else 0)
        if uncovered >= self.every or ((forced or self.forced) and uncovered > 0):
            self._add_checkpoint(self.signer)
        self.end = _Tail(
            self.size, self.prev, self.frontier, self.checkpoint_size, self.vkey, self.signer
        )
        return self.end

    def _add(self, item: _Prepared) -> Appended:
        size = self.size
        data = assemble_entry(
            size, self.time_json, item.kind, item.actor, item.subject, item.body, self.prev.hex()
        )
        hasher = _new_leaf_hasher()
        hasher.update(data)
        leaf = hasher.digest()
        self.entries.append((size, item.kind, leaf, data, self.frontier.append_nodes(leaf)))
        for path, salt, value in item.sealed:
            self.sealed.append(
                {
                    "seq": size,
                    "path": path,
                    "subject": item.subject_text,
                    "salt": salt,
                    "value": value,
                    "erased_by": None,
                }
            )
        self.size = size + 1
        self.prev = leaf
        appended: Appended = _new_tuple(Appended, (size, leaf, self.time, data))
        return appended

    def _add_checkpoint(self, by: NoteSigner) -> None:
        if by.vkey != self.vkey:
            raise SignatureError(
                f"this process signs with {by.vkey} but the ledger's current key is "
                f"{self.vkey}; restart it with the current signing key"
            )
        size = self.size
        root = self.frontier.root()
        note = sign_checkpoint(Checkpoint(self.origin, size, root), by)
        self.checkpoints.append(
            {"size": size, "seq": size, "root_hash": root, "note": note, "signed_at": self.time}
        )
        self.checkpoint_size = size
        self._add(self._internal("checkpoint", {"note": note}))

    def _add_key(self, new: str, previous: str | None) -> None:
        # A new key signs from the size after the checkpoint its predecessor signs next.
        size = self.size
        from_size = size + 1 if previous is None else size + 2
        self.keys.append({"from_size": from_size, "seq": size, "vkey": new})
        body: dict[str, Any] = {"vkey": new, "from_size": from_size}
        if previous is not None:
            body["previous"] = previous
        self._add(self._internal("key", body))

    def _internal(self, kind: str, body: Mapping[str, Any]) -> _Prepared:
        """An entry the ledger writes about itself (keys, checkpoints)."""
        return _prepare(Record(kind, "ledger", self.origin, body))


class _Transaction:
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
        return (0, bytes(_HASH)) if last is None else (int(last[0]) + 1, bytes(last[1]))

    def since(self, statement: str, start: int) -> list[tuple[int, str, bytes]]:
        """(seq, kind, leaf hash) of the entries from ``start`` on, in order (``_SELECT_SINCE``)."""
        params = (start, _CATCH_UP_MAX + 1)
        rows: Iterable[Any]
        if self._cursor is not None:
            rows = self._cursor.execute(statement, params).fetchall()
        else:
            rows = self._conn.exec_driver_sql(statement, params).all()
        return [(int(seq), str(kind), bytes(leaf)) for seq, kind, leaf in rows]

    def insert_entries(self, statement: str, rows: list[_Row]) -> None:
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


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Ledger:
    """An append-only, hash-chained, Merkle-tree ledger in a SQL database.

    ``signer`` signs checkpoints; without one the ledger is read-only. ``checkpoint_every``
    entries or ``checkpoint_interval`` seconds (whichever comes first) trigger a checkpoint;
    ``clock`` is injected so tests and replays control time. Of the processes (or ``Ledger``
    objects) writing to one database, only the holder of the signer lease signs when the
    interval passes (``signs_periodically``); a checkpoint due by count is signed by whichever
    appends it, and one asked for (``checkpoint``, ``rotate_key``) by whoever asks.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        origin: str,
        signer: NoteSigner | None = None,
        checkpoint_every: int = 1000,
        checkpoint_interval: float | None = 60.0,
        clock: Callable[[], dt.datetime] = _utcnow,
        max_batch: int = 1000,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        self._engine = engine
        self._origin = origin
        self._signer = signer
        self._every = checkpoint_every
        self._interval = checkpoint_interval
        self._clock = clock
        self._max_batch = max_batch
        self._postgres = engine.dialect.name == "postgresql"
        # The hot insert goes straight to the driver: compiling it per batch costs more than
        # the rows themselves.
        mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self._insert_entries = _INSERT_ENTRIES.format(", ".join([mark] * 5))
        self._select_since = _SELECT_SINCE.format(mark=mark)
        self._lock_key: int | None = None
        self._turns = AppendTurns(engine)  # SQLite: the processes' writers take turns
        self._writer: threading.Thread | None = None
        self._opened = False
        self._closed = False
        # What callers and the writer share, under _lock: the requests not yet taken, in order;
        # the draft (those requests, or the first of them, built on _draft_base); whether the
        # writer sleeps, waiting to acquire _wakeup, which whoever sees it idle releases.
        self._lock = threading.Lock()
        self._wakeup = threading.Lock()
        self._wakeup.acquire()
        self._pending: list[_Request] = []
        self._draft: _Build | None = None
        self._draft_base: _Tail | None = None
        self._idle = False
        # The writer's own: its connection, and the tail it last committed.
        self._conn: Connection | None = None
        self._cursor: sqlite3.Cursor | None = None
        self._tail: _Tail | None = None
        self._last_checkpoint_at = time.monotonic()
        # The duty of signing the periodic checkpoints: made and first tried by open(), then
        # checked by the writer alone at each tick of the interval, released by close().
        self._lease: SignerLease | None = None
        # Why the writer's last transaction failed for the database's sake (not a caller's),
        # until one commits: what readiness reports while the disk is full or the server gone.
        self._failure: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        """The checkpoint origin line that names this log."""
        return self._origin

    @property
    def signer(self) -> NoteSigner | None:
        """The key this process signs checkpoints with, if any."""
        return self._signer

    @property
    def failure(self) -> str | None:
        """Why the writer's most recent transaction did not commit, if it did not: the
        database's failure (unreachable, disk full), never a caller's. None once one commits,
        be it only the periodic checkpoint's, so a ledger that recovers says so by itself."""
        return self._failure

    @property
    def signs_periodically(self) -> bool:
        """Whether this ledger signs the periodic (interval) checkpoints: it holds the signer
        lease, as its last check found (one per tick; no I/O here). False without a signer
        or an interval, or once closed."""
        lease = self._lease
        return lease is not None and lease.held and not self._closed

    @property
    def signer_problem(self) -> str | None:
        """Why this ledger could not check the signer lease at its last try, for another reason
        than another holder (the server unreachable, the lock file not writable), or None."""
        lease = self._lease
        return None if lease is None else lease.problem

    @property
    def writing(self) -> bool:
        """Whether this ledger's writer is running (appends can be made)."""
        return self._writer is not None and self._writer.is_alive() and not self._closed

    def open(self) -> Ledger:
        """Create the tables if needed, start the writer and, on an empty log, write its key.

        Opening an open ledger does nothing.
        """
        if self._opened:
            return self
        self._opened = True
        create_tables(self._engine)
        if self._postgres:
            with self._engine.connect() as conn:
                self._lock_key = advisory_lock_key(conn)
        if self._signer is not None:
            if self._interval is not None:
                self._lease = SignerLease(self._engine)
                self._lease.hold()  # before the writer starts: from then on, the writer's
            self._writer = threading.Thread(
                target=self._run_writer, name="ledger-writer", daemon=True
            )
            self._writer.start()
            try:
                self._wait(_Request([]))
                self._check_signer()
            except BaseException:
                self.close()
                raise
        return self

    def _check_signer(self) -> None:
        """Refuse to open with a key that is not the log's current one (fail closed now, not
        at the next checkpoint)."""
        current = self.keys()[-1][1] if self.keys() else None
        signer = self._signer
        if signer is not None and current is not None and current != signer.vkey:
            raise SignatureError(
                f"this process signs with {signer.vkey} but the ledger's current key is "
                f"{current}; start it with the current signing key"
            )

    def close(self) -> None:
        """Stop the writer after it has committed everything queued."""
        with self._lock:
            if self._writer is None or self._closed:
                return
            # Nothing can be queued after this: _submit checks it under the same lock.
            self._closed = True
            # Only an idle writer needs waking (a busy one sees _closed before it idles), and
            # only once: a second release of a wake-up not yet taken would raise.
            if self._idle:
                self._wake()
        self._writer.join()
        self._drop_connection()
        self._turns.close()
        if self._lease is not None:
            self._lease.release()

    def __enter__(self) -> Ledger:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- appending ---------------------------------------------------------------------------

    def append(
        self,
        kind: str,
        *,
        actor: str,
        subject: str,
        body: Mapping[str, Any],
        sensitive: Sequence[str] = (),
    ) -> Appended:
        """Append one entry and return once it is durable."""
        return self.append_many([Record(kind, actor, subject, body, sensitive)])[0]

    def append_many(
        self,
        records: Sequence[Record],
        *,
        rows: RowsFor | None = None,
        in_transaction: InTransaction | None = None,
    ) -> list[Appended]:
        """Append records as contiguous entries in one transaction; return once durable.

        A caller commits its own rows atomically with the entries: ``rows(appended)`` returns
        (table, values) pairs that are inserted together with those of every other request in
        the batch (one statement per table); ``in_transaction(conn, appended)`` runs any other
        SQL. If either raises, none of this request's entries or rows are written; an exception
        from ``in_transaction`` reaches the caller as it was raised. A batch that fails is
        retried request by request, so a hook may run more than once: it must act only through
        ``conn``.
        """
        request = _Request(self._prepare_all(records), rows=rows, in_transaction=in_transaction)
        return self._wait(request)

    async def append_many_async(
        self,
        records: Sequence[Record],
        *,
        rows: RowsFor | None = None,
        in_transaction: InTransaction | None = None,
    ) -> list[Appended]:
        """``append_many`` for asyncio callers: waits without blocking the event loop.

        Invalid records raise ``EntryError`` before anything is queued.
        """
        future: asyncio.Future[list[Appended]] = asyncio.get_running_loop().create_future()
        self._submit(_Request(self._prepare_all(records), rows, in_transaction, future=future))
        return await future

    def checkpoint(self) -> StoredCheckpoint:
        """Sign a checkpoint of the whole log now, unless the latest one already covers it."""
        self._wait(_Request([], force_checkpoint=True))
        latest = self.latest_checkpoint()
        assert latest is not None
        return latest

    def rotate_key(self, new_signer: NoteSigner) -> StoredCheckpoint:
        """Hand signing over to ``new_signer``.

        Writes a ``key`` entry naming the new key and the first tree size it signs, then a
        checkpoint signed by the old key that covers that entry, so a verifier who trusts the
        old key learns the new one from a signed tree.
        """
        self._wait(_Request([], rotate_to=new_signer))
        latest = self.latest_checkpoint()
        assert latest is not None
        return latest

    def erase(self, subject: str, *, actor: str, reason: str) -> Appended | None:
        """Erase the sealed values and salts of ``subject``; the ledger still verifies.

        The erasure is itself an entry, listing which sealed fields were erased and nothing of
        their content. Returns None when the subject has nothing left to erase.
        """
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(SEALED.c.seq, SEALED.c.path)
                .where(SEALED.c.subject == subject, SEALED.c.value.is_not(None))
                .order_by(SEALED.c.seq, SEALED.c.path)
            ).all()
        if not rows:
            return None
        erased = [{"seq": seq, "path": path} for seq, path in rows]

        def wipe(conn: Connection, appended: list[Appended]) -> None:
            for seq, path in rows:
                conn.execute(
                    sa.update(SEALED)
                    .where(SEALED.c.seq == seq, SEALED.c.path == path)
                    .values(salt=None, value=None, erased_by=appended[0].seq)
                )

        body = {"erased": erased, "reason": reason}
        return self.append_many([Record("erasure", actor, subject, body)], in_transaction=wipe)[0]

    def _prepare_all(self, records: Sequence[Record]) -> list[_Prepared]:
        if self._signer is None:
            raise StorageError("this ledger was opened without a signing key: it is read-only")
        return [_prepare(record) for record in records]

    def _submit(self, request: _Request) -> None:
        """Queue a request for the writer, building its entries now when the draft allows.

        While the writer commits one batch, callers build the next one (the draft) on top of
        it, in their own thread and under the lock, so that the writer's next transaction has
        little left to do but write. The draft only ever covers the first pending requests,
        and only plain ones (no key rotation, no checkpoint on demand): anything else, and
        anything that fails here, the writer builds itself.
        """
        with self._lock:
            if self._writer is None or self._closed:
                raise StorageError("the ledger is not open for appends")
            pending = self._pending
            if request.records and request.rotate_to is None and not request.force_checkpoint:
                draft = self._draft
                if draft is None:
                    if not pending and self._draft_base is not None:
                        with contextlib.suppress(Exception):
                            draft = self._draft = self._new_build(self._draft_base)
                elif len(draft.results) != len(pending) or draft.records >= self._max_batch:
                    draft = None
                if draft is not None:
                    try:
                        draft.add(request)
                    except Exception:
                        self._draft = None  # the writer builds these requests itself
            pending.append(request)
            if self._idle:
                self._wake()

    def _wait(self, request: _Request) -> list[Appended]:
        waiter = request.thread = _Waiter()
        self._submit(request)
        return waiter.wait()

    def _new_build(self, tail: _Tail) -> _Build:
        return _Build(tail, origin=self._origin, every=self._every, now=self._clock())

    # -- the writer ------------------------------------------------------------------------

    def _run_writer(self) -> None:
        woke = False  # whether the writer had nothing to do before this batch
        while True:
            with self._lock:
                taken = self._take(split=woke) if self._pending else None
            if taken is not None:
                woke = False
                self._commit_or_split(*taken)
                continue
            with self._lock:
                if self._closed and not self._pending:
                    return
            self._wait_for_work()
            woke = True

    def _wake(self) -> None:
        """Wake the idle writer (lock held)."""
        self._idle = False
        self._wakeup.release()

    def _wait_for_work(self) -> None:
        """Sleep until a request comes or the ledger closes; when the checkpoint interval
        passes first, queue a checkpoint request if this ledger holds the signer lease (taking
        it if it is free).

        One that does not hold it signs nothing, but after a failed transaction it still
        queues an empty request: that one commits as soon as the database is back, and so
        clears ``failure`` (or signs, if a checkpoint is due by count)."""
        deadline = None
        with self._lock:
            if self._pending or self._closed:
                return
            self._idle = True
        if self._interval is not None:
            deadline = self._last_checkpoint_at + self._interval
        woken = self._wakeup.acquire(
            timeout=-1 if deadline is None else max(0.0, deadline - time.monotonic())
        )
        if woken:
            return
        with self._lock:
            if not self._idle:  # woken just after the timeout: take the release back
                self._wakeup.acquire()
            self._idle = False
            if self._pending or self._closed:
                return
        self._last_checkpoint_at = time.monotonic()
        # Outside the lock: on PostgreSQL this is a round trip, which callers need not wait on.
        signs = self._lease is not None and self._lease.hold()
        if not signs and self._failure is None:
            return
        with self._lock:
            if not self._pending and not self._closed:
                self._pending.append(_Request([], force_checkpoint=signs))

    def _take(self, *, split: bool) -> tuple[list[_Request], _Build | None]:
        """Take the next batch off the queue (lock held) and finish building it.

        Returns the requests and their build, on top of the tail the last batch leaves, or None
        when that tail is unknown (after a failure, or before the first batch) or the build
        failed: the writer then builds under the append lock, from the database.
        """
        pending = self._pending
        n, count = 1, len(pending[0].records)
        while n < len(pending) and count < self._max_batch:
            count += len(pending[n].records)
            n += 1
        build, self._draft = self._draft, None
        if split and n >= _PIPELINE_FROM:
            # The writer was idle and now everybody waits at once: nothing the callers do
            # would overlap this commit. Commit half of them; the other half is the next
            # batch, ready when this one returns, and the two groups take turns from then on
            # (the draft is not used: the first half is built again here).
            n = (n + 1) // 2
            build = None
        requests = pending[:n]
        del pending[:n]
        base, self._draft_base = self._draft_base, None
        try:
            if build is None and base is not None:
                build = self._new_build(base)
            if build is not None:
                if len(build.results) > n:  # cannot happen: the draft stops at max_batch
                    raise AssertionError("the draft outgrew its batch")
                for request in requests[len(build.results) :]:
                    build.add(request)
                # The next draft starts where this batch ends.
                self._draft_base = build.finish()
        except Exception:
            build = None  # built again under the append lock, where a failure is handled
        return requests, build

    def _commit_or_split(self, batch: list[_Request], build: _Build | None) -> None:
        try:
            with self._turns.turn():
                results = self._commit(batch, build)
        except Exception as exc:
            self._drop_connection()
            if len(batch) > 1:
                # One bad request must not fail the others: retry each on its own.
                for request in batch:
                    self._commit_or_split([request], None)
                return
            cause = exc.cause if isinstance(exc, _CallerFailed) else _as_storage_error(exc)
            # A caller's own failure, or its rows meeting a unique key (a retry that raced its
            # first attempt), says nothing about the database.
            if not isinstance(exc, (_CallerFailed, sa.exc.IntegrityError, sqlite3.IntegrityError)):
                self._failure = str(cause)
            _deliver([(batch[0], cause)])
            return
        self._failure = None
        _deliver(zip(batch, results, strict=True))

    def _commit(self, batch: list[_Request], build: _Build | None) -> list[list[Appended]]:
        """Write one batch in one transaction under the append lock; return once durable."""
        if (
            build is not None
            and 0 < len(build.entries) <= _ONE_STATEMENT_MAX
            and not self._postgres
            and not (build.sealed or build.checkpoints or build.keys)
            and all(r.rows is None and r.in_transaction is None for r in batch)
            and self._commit_in_one_statement(build)
        ):
            assert build.end is not None
            self._tail = build.end
            return build.results
        return self._commit_in_transaction(batch, build)

    def _commit_in_one_statement(self, build: _Build) -> bool:
        """SQLite, entries only: check the tail, insert and commit in one statement.

        An INSERT takes SQLite's write lock when it starts, before it reads anything (its
        program opens a write transaction first, as BEGIN IMMEDIATE does), so the check that
        the log still ends at ``build.base`` and the insert are one atomic step, as a separate
        tail read under BEGIN IMMEDIATE would be. Run as one statement outside any explicit
        transaction, it also commits (and waits for fsync) inside that one call into SQLite,
        which releases the GIL for all of it: callers keep preparing the next batch meanwhile.

        False when nothing was written: another process appended (the tail moved), or SQLite
        refused (busy). The caller then takes the transaction path, which reads the tail under
        BEGIN IMMEDIATE and builds again.
        """
        self._connection()
        cursor = self._cursor
        assert cursor is not None
        driver = cursor.connection
        if driver.isolation_level is not None or driver.in_transaction:
            # Not in autocommit mode (an engine not made by ledger.database.create_engine), or
            # inside a transaction: the statement would not commit by itself.
            return False
        entries = build.entries
        size, prev = build.base
        statement = _one_statement(len(entries))
        params = [*itertools.chain.from_iterable(entries), size - 1, prev, size]
        try:
            cursor.execute(statement, params)
        except sqlite3.Error:
            return False
        return cursor.rowcount == len(entries) and not driver.in_transaction

    def _commit_in_transaction(
        self, batch: list[_Request], build: _Build | None
    ) -> list[list[Appended]]:
        """The general path: one transaction holding the append lock from its first statement."""
        txn = _Transaction(self._connection(), self._cursor)
        try:
            txn.begin(self._lock_key)
            tail = self._catch_up(txn)
            size, prev = txn.tail() if tail is None else (tail.size, tail.prev)
            if build is None or build.base != (size, prev):
                # Another process appended since (or there was no build): build again from
                # the database's tail, and let the next draft start after this batch.
                if tail is None:
                    tail = self._current_tail(txn, size, prev)
                build = self._new_build(tail)
                for request in batch:
                    build.add(request)
                end = build.finish()
                with self._lock:
                    self._draft = None
                    self._draft_base = end
            if build.entries:
                txn.insert_entries(self._insert_entries, build.entries)
            extra: dict[sa.Table, list[Mapping[str, Any]]] = {
                SEALED: build.sealed,
                CHECKPOINTS: build.checkpoints,
                KEYS: build.keys,
            }
            for request, appended in zip(batch, build.results, strict=True):
                if request.rows is not None and appended:
                    for table, row in request.rows(appended):
                        extra.setdefault(table, []).append(row)
            for table, values in extra.items():
                if values:
                    txn.core().execute(sa.insert(table), values)
            for request, appended in zip(batch, build.results, strict=True):
                if request.in_transaction is not None and appended:
                    try:
                        request.in_transaction(txn.core(), appended)
                    except Exception as exc:
                        raise _CallerFailed(exc) from exc
            txn.commit()
        except BaseException:
            txn.abandon()
            raise
        assert build.end is not None
        self._tail = build.end
        self._signer = build.end.signer
        if build.checkpoints:
            self._last_checkpoint_at = time.monotonic()
        return build.results

    def _connection(self) -> Connection:
        """The writer's own connection, kept open between batches (no pool round trip)."""
        if self._conn is None:
            conn = self._engine.connect().execution_options(**{WRITE: True})
            if not self._postgres:
                driver = conn.connection.driver_connection
                assert isinstance(driver, sqlite3.Connection)
                self._cursor = driver.cursor()
            self._conn = conn
        return self._conn

    def _drop_connection(self) -> None:
        """After a failure, forget the tail and the connection: the next batch starts afresh."""
        self._tail = None
        with self._lock:
            self._draft = None
            self._draft_base = None
        self._cursor = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                conn.invalidate()
                conn.close()

    def _current_tail(self, txn: _Transaction, size: int, prev: bytes) -> _Tail:
        """The tail as the database has it; the cached one when no other process appended."""
        cached = self._tail
        if cached is not None and cached.size == size and cached.prev == prev:
            return cached
        conn = txn.core()
        frontier = CompactRange.from_subtrees(
            size, _subtree_hashes(conn, complete_subtrees(0, size))
        )
        signer = self._signer
        assert signer is not None
        return _Tail(size, prev, frontier, _checkpoint_size(conn), _current_key(conn), signer)

    def _catch_up(self, txn: _Transaction) -> _Tail | None:
        """The database's tail, from the cached one and what was appended after it.

        One read, in the place of the tail's: the entries from the cached tail's last one on.
        When that one is still there with the same leaf hash, the entries after it (another
        process's) are appended to a copy of the cached frontier, and the checkpoint size and
        the current key read again only if a ``checkpoint`` or ``key`` entry is among them.
        Returns the cached tail itself when nothing follows it, and None when there is no
        cached tail, the log does not continue it, or too much follows it: the caller then
        reads the tail and rebuilds it from the database (``_current_tail``).
        """
        cached = self._tail
        if cached is None or cached.size == 0:
            return None
        rows = txn.since(self._select_since, cached.size - 1)
        if (
            not rows
            or len(rows) > _CATCH_UP_MAX
            or rows[0][0] != cached.size - 1
            or rows[0][2] != cached.prev
        ):
            return None
        if len(rows) == 1:
            return cached
        frontier = cached.frontier.copy()
        kinds = set()
        for expected, (seq, kind, leaf) in enumerate(rows[1:], cached.size):
            if seq != expected:
                return None
            frontier.append_leaf(leaf)
            kinds.add(kind)
        checkpoint_size, vkey = cached.checkpoint_size, cached.vkey
        if "checkpoint" in kinds:
            checkpoint_size = _checkpoint_size(txn.core())
        if "key" in kinds:
            vkey = _current_key(txn.core())
        signer = self._signer
        assert signer is not None
        seq, _, prev = rows[-1]
        return _Tail(seq + 1, prev, frontier, checkpoint_size, vkey, signer)

    # -- reading ---------------------------------------------------------------------------

    def size(self) -> int:
        """The number of entries in the log."""
        with self._engine.connect() as conn:
            return _size(conn)

    def entry(self, seq: int) -> Entry:
        """The entry at ``seq`` (``KeyError`` if there is none)."""
        with self._engine.connect() as conn:
            data = conn.execute(sa.select(ENTRIES.c.data).where(ENTRIES.c.seq == seq)).scalar()
        if data is None:
            raise KeyError(seq)
        return parse_entry(bytes(data))

    def leaf_hash(self, seq: int) -> bytes:
        """The leaf hash of the entry at ``seq`` (``KeyError`` if there is none)."""
        with self._engine.connect() as conn:
            leaf = conn.execute(sa.select(ENTRIES.c.leaf_hash).where(ENTRIES.c.seq == seq)).scalar()
        if leaf is None:
            raise KeyError(seq)
        return bytes(leaf)

    def entries(self, start: int = 0, end: int | None = None, page: int = 5000) -> Iterator[bytes]:
        """Stream the stored bytes of entries ``start`` ≤ seq < ``end``, a page at a time."""
        while end is None or start < end:
            stop = start + page if end is None else min(end, start + page)
            with self._engine.connect() as conn:
                rows = conn.execute(
                    sa.select(ENTRIES.c.data)
                    .where(ENTRIES.c.seq >= start, ENTRIES.c.seq < stop)
                    .order_by(ENTRIES.c.seq)
                ).all()
            for (data,) in rows:
                yield bytes(data)
            if len(rows) < stop - start:
                return
            start = stop

    def reveal(self, seq: int) -> dict[str, Any]:
        """The body of entry ``seq`` with its sealed values put back where not erased."""
        body = self.entry(seq).body
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(SEALED.c.path, SEALED.c.salt, SEALED.c.value).where(SEALED.c.seq == seq)
            ).all()
        for path, salt, value in rows:
            if value is None or salt is None:
                continue
            parent, key = _parent(body, path)
            mark = parent.get(key)
            expected = _commitment(bytes(salt), bytes(value))
            if not isinstance(mark, dict) or mark.get(SEALED_MARK) != expected.hex():
                raise LedgerError(
                    f"seq {seq}: sealed value at {path} does not match its commitment"
                )
            parent[key] = orjson.loads(bytes(value))
        return body

    def root(self, size: int | None = None) -> bytes:
        """The Merkle root of the first ``size`` entries (default: all)."""
        with self._engine.connect() as conn:
            current = _size(conn)
            size = current if size is None else size
            _check_size(size, current)
            return fold_subtrees(_subtree_hashes(conn, complete_subtrees(0, size)))

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of entry ``index`` in the tree of ``size`` entries."""
        if not 0 <= index < size:
            raise ProofError(f"index {index} is not in a tree of size {size}")
        with self._engine.connect() as conn:
            _check_size(size, _size(conn))
            return _range_hashes(conn, inclusion_proof_ranges(index, size))

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """RFC 9162 consistency proof between the trees of ``size1`` and ``size2`` entries."""
        if not 0 < size1 <= size2:
            raise ProofError(f"need 0 < size1 <= size2, got {size1} and {size2}")
        with self._engine.connect() as conn:
            _check_size(size2, _size(conn))
            return _range_hashes(conn, consistency_proof_ranges(size1, size2))

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        """The most recent signed checkpoint, if any."""
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(CHECKPOINTS).order_by(CHECKPOINTS.c.size.desc()).limit(1)
            ).first()
        return None if row is None else _stored(row)

    def checkpoint_at(self, size: int) -> StoredCheckpoint | None:
        """The checkpoint signed at exactly ``size``, if there is one."""
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(CHECKPOINTS).where(CHECKPOINTS.c.size == size)).first()
        return None if row is None else _stored(row)

    def keys(self) -> list[tuple[int, str]]:
        """Every signing key the log has had, as (first tree size it signs, verifier key)."""
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(KEYS.c.from_size, KEYS.c.vkey).order_by(KEYS.c.from_size))
            return [(int(a), str(b)) for a, b in rows]

    def export_checkpoint(self) -> StoredCheckpoint:
        """The checkpoint an export ends with: the latest, or a new one if entries follow it."""
        latest = self.latest_checkpoint()
        size = self.size()
        if latest is not None and size == latest.size + 1:
            return latest
        return self.checkpoint()


def _prepare(record: Record) -> _Prepared:
    """Validate and encode a record in the caller's thread, before it is queued."""
    kind, actor, subject, body, sensitive = record
    if kind not in _KINDS_SEEN:
        check_kind(kind)
        if len(_KINDS_SEEN) < _KINDS_SEEN_MAX:
            _KINDS_SEEN.add(kind)
    sealed: Sequence[tuple[str, bytes, bytes]] = ()
    if sensitive:
        body = dict(body)
        sealed = [_seal(body, path) for path in sensitive]
    # tuple.__new__: a NamedTuple's own constructor is a Python function, on the hot path.
    prepared: _Prepared = _new_tuple(
        _Prepared,
        (
            kind,
            canonical_json(actor, "actor"),
            canonical_json(subject, "subject"),
            canonical_json(body),
            sealed,
            subject,
        ),
    )
    return prepared


# Kinds that passed check_kind (a few dozen in practice; bounded all the same).
_KINDS_SEEN: set[str] = set()
_KINDS_SEEN_MAX = 1024
_new_tuple: Any = tuple.__new__


def _deliver(settled: Iterable[tuple[_Request, _Outcome]]) -> None:
    """Wake every waiter: threads directly, each event loop once for all its coroutines."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], _Outcome]]] = {}
    for request, outcome in settled:
        if request.thread is not None:
            request.thread.set(outcome)
        elif request.future is not None:
            by_loop.setdefault(request.future.get_loop(), []).append((request.future, outcome))
    for loop, settled_there in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits any more
            loop.call_soon_threadsafe(_settle, settled_there)


def _settle(settled: list[tuple[asyncio.Future[Any], _Outcome]]) -> None:
    for waiter, outcome in settled:
        if waiter.done():
            continue
        if isinstance(outcome, BaseException):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)


def _stored(row: sa.Row[Any]) -> StoredCheckpoint:
    return StoredCheckpoint(int(row.size), bytes(row.root_hash), str(row.note), int(row.seq))


def _size(conn: Connection) -> int:
    last = conn.execute(sa.select(sa.func.max(ENTRIES.c.seq))).scalar()
    return 0 if last is None else int(last) + 1


def _checkpoint_size(conn: Connection) -> int:
    """The size the latest checkpoint signs (0 when there is none)."""
    return int(conn.execute(sa.select(sa.func.max(CHECKPOINTS.c.size))).scalar() or 0)


def _current_key(conn: Connection) -> str | None:
    """The verifier key that signs from the latest size on (None before the first)."""
    vkey = conn.execute(sa.select(KEYS.c.vkey).order_by(KEYS.c.from_size.desc()).limit(1)).scalar()
    return None if vkey is None else str(vkey)


def _check_size(size: int, current: int) -> None:
    if not 0 <= size <= current:
        raise ProofError(f"tree size {size} is beyond the log's {current} entries")


def _subtree_hashes(conn: Connection, subtrees: Sequence[tuple[int, int]]) -> list[bytes]:
    """Hashes of complete subtrees (level, index), read from the rows that completed them."""
    if not subtrees:
        return []
    ends = {(index + 1 << level) - 1 for level, index in subtrees}
    rows = conn.execute(
        sa.select(ENTRIES.c.seq, ENTRIES.c.leaf_hash, ENTRIES.c.nodes).where(
            ENTRIES.c.seq.in_(sorted(ends))
        )
    ).all()
    found = {int(seq): (bytes(leaf), bytes(nodes)) for seq, leaf, nodes in rows}
    hashes = []
    for level, index in subtrees:
        leaf, nodes = found[(index + 1 << level) - 1]
        hashes.append(leaf if level == 0 else nodes[(level - 1) * _HASH : level * _HASH])
    return hashes


def _range_hashes(conn: Connection, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """The Merkle tree hash of each [start, end) range, in one read of the database."""
    parts = [complete_subtrees(start, end) for start, end in ranges]
    flat = _subtree_hashes(conn, [s for part in parts for s in part])
    out, at = [], 0
    for part in parts:
        out.append(fold_subtrees(flat[at : at + len(part)]))
        at += len(part)
    return out


def _parent(body: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    *parents, key = path.split(".")
    node = body
    for name in parents:
        child = node.get(name)
        if not isinstance(child, dict):
            raise EntryError(f"body.{path}", "no such field to seal")
        node = child
    return node, key


def _commitment(salt: bytes, value: bytes) -> bytes:
    return hashlib.sha256(b"\x02" + salt + value).digest()


def _seal(body: dict[str, Any], path: str) -> tuple[str, bytes, bytes]:
    """Replace the value at ``path`` by a salted commitment; return what to keep aside."""
    *parents, key = path.split(".")
    node = body
    for name in parents:
        child = node.get(name)
        if not isinstance(child, dict):
            raise EntryError(f"body.{path}", "no such field to seal")
        node[name] = child = dict(child)  # copy on the way down: the caller's body stays intact
        node = child
    if key not in node:
        raise EntryError(f"body.{path}", "no such field to seal")
    value = canonical_json(node[key], f"body.{path}")
    salt = os.urandom(32)
    node[key] = {SEALED_MARK: _commitment(salt, value).hex()}
    return path, salt, value


class _CallerFailed(Exception):
    """The caller's own ``in_transaction`` raised: it gets its exception back, unwrapped."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _as_storage_error(exc: BaseException) -> LedgerError:
    if isinstance(exc, LedgerError):
        return exc
    # The driver's own message, first line only: SQLAlchemy's text would repeat the statement
    # and its parameters, which hold entry bodies.
    origin = getattr(exc, "orig", None) or exc
    lines = str(origin).strip().splitlines() or [""]
    return StorageError(f"the append was not written: {type(origin).__name__}: {lines[0][:200]}")
