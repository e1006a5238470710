"""The ledger's writer: durable, serialised, group-committed appends, one thread per ``Ledger``.

Appends are pipelined, so that what the callers do and what the database does overlap:

- A caller (a thread, or an asyncio task on its event loop) validates and encodes its records,
  then queues them under the writer's lock. While the writer commits one batch, what is queued
  meanwhile is built right there into the next one (the draft): each entry gets its ``seq``, its
  ``prev`` link, its leaf hash and the subtree hashes it completes, on top of the tail that the
  committing batch leaves (``ledger.batch``).
- The writer takes what is queued as the next batch (building what the draft did not, and
  adding a checkpoint when one is due) and writes it under the cross-process append lock. On
  SQLite a batch of entries alone is one statement that checks that the log still ends where
  the batch starts, inserts and commits, with the GIL released for all of it, fsync included.
  Any other batch, and every batch on PostgreSQL, is a transaction: ``BEGIN IMMEDIATE`` or the
  advisory lock, the tail, the entries, the other rows, the callers' rows and hooks, commit
  (``ledger.transaction``). When the log does not end where a batch was built to start
  (another process appended, or the batch before failed), the batch is built again from the
  database's tail under the lock: contiguous ``seq``, one chain, never a fork. That tail is
  caught up from the one this writer last saw, with the same read that checks it: the leaf
  hashes appended since, added to its frontier (see ``Writer._catch_up``).
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
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ledger.batch import Appended, Build, Prepared, Tail
from ledger.compact import CompactRange
from ledger.database import WRITE, AppendTurns, advisory_lock_key
from ledger.errors import LedgerError, StorageError
from ledger.lease import SignerLease
from ledger.merkle import complete_subtrees
from ledger.models import CHECKPOINTS, KEYS, SEALED
from ledger.note import NoteSigner
from ledger.transaction import (
    ONE_STATEMENT_MAX,
    Transaction,
    append_in_one_statement,
    driver_statements,
)
from ledger.tree import read_checkpoint_size, read_current_key, read_subtree_hashes

__all__ = ["InTransaction", "Keyring", "Late", "Request", "RowsFor", "Writer"]

# The most entries other processes may have appended since this writer's last batch for it to
# catch up on them leaf by leaf (see Writer._catch_up); past that it rebuilds the tail whole.
_CATCH_UP_MAX = 4096
# When the writer wakes to find more than this many requests waiting, it commits only half of
# them: the other half becomes the next batch, and from then on one group of callers prepares
# its next appends while the other's batch commits (see Writer._take). A burst of up to this
# many (16 connections' decisions, handed over in one turn of their event loop) is one batch.
_PIPELINE_ABOVE = 16

InTransaction = Callable[[Connection, list[Appended]], None]
Keyring = Callable[[str], NoteSigner | None]
RowsFor = Callable[[list[Appended]], Sequence[tuple[sa.Table, Mapping[str, Any]]]]
Late = Callable[[Connection], list[Prepared]]
_Outcome = list[Appended] | BaseException


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
class Request:
    """Work for the writer and who waits for it: a thread (``thread``) or a coroutine.

    ``late``: records made under the append lock, from the database as it is then (an erasure
    lists what it erases there, so nothing sealed meanwhile escapes the list). A request with
    ``late`` records is always built by the writer, in its transaction, and commits alone.
    """

    records: list[Prepared]
    rows: RowsFor | None = None
    in_transaction: InTransaction | None = None
    force_checkpoint: bool = False
    rotate_to: NoteSigner | None = None
    thread: _Waiter | None = None
    future: asyncio.Future[list[Appended]] | None = None
    late: Late | None = None


class Writer:
    """The one thread that writes a ``Ledger``'s appends, and the queue its callers fill.

    ``signer`` signs checkpoints: ``every`` entries, or ``interval`` seconds after the last one
    while this writer holds the signer lease. ``max_batch``: the most records in one batch.
    ``keyring(vkey)`` gives the signer of a key that another process rotated to (None if it
    has none): the writer takes it up when it finds that key current in the log.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        origin: str,
        signer: NoteSigner,
        every: int,
        interval: float | None,
        clock: Callable[[], dt.datetime],
        max_batch: int,
        keyring: Keyring | None = None,
        commit_delay: float = 0.0,
    ) -> None:
        self._engine = engine
        self._commit_delay = commit_delay
        self._origin = origin
        self._signer = signer
        self._keyring = keyring
        self._every = every
        self._interval = interval
        self._clock = clock
        self._max_batch = max_batch
        self._postgres = engine.dialect.name == "postgresql"
        self._insert_entries, self._select_since = driver_statements(engine)
        self._lock_key: int | None = None
        self._turns = AppendTurns(engine)  # SQLite: the processes' writers take turns
        self._thread: threading.Thread | None = None
        self._closed = False
        # What callers and the writer share, under _lock: the requests not yet taken, in order;
        # the draft (those requests, or the first of them, built on _draft_base); whether the
        # writer sleeps, waiting to acquire _wakeup, which whoever sees it idle releases.
        self._lock = threading.Lock()
        self._wakeup = threading.Lock()
        self._wakeup.acquire()
        self._pending: list[Request] = []
        self._draft: Build | None = None
        self._draft_base: Tail | None = None
        self._idle = False
        # The writer's own: its connection, and the tail it last committed.
        self._conn: Connection | None = None
        self._cursor: sqlite3.Cursor | None = None
        self._tail: Tail | None = None
        self._last_checkpoint_at = time.monotonic()
        # The duty of signing the periodic checkpoints: made and first tried by start(), then
        # checked by the writer alone at each tick of the interval, released by close().
        self._lease: SignerLease | None = None
        # Why the writer's last transaction failed for the database's sake (not a caller's),
        # until one commits: what readiness reports while the disk is full or the server gone.
        self._failure: str | None = None

    @property
    def signer(self) -> NoteSigner:
        """The key this writer signs checkpoints with (the new one after a rotation)."""
        return self._signer

    @property
    def failure(self) -> str | None:
        """Why the most recent transaction did not commit, if it did not (see ``Ledger``)."""
        return self._failure

    @property
    def signer_problem(self) -> str | None:
        """Why the signer lease could not be checked at the last try, for another reason than
        another holder (the server unreachable, the lock file not writable), or None."""
        return None if self._lease is None else self._lease.problem

    @property
    def signs_periodically(self) -> bool:
        """Whether this writer holds the signer lease, as its last check found; never once
        closed."""
        lease = self._lease
        return lease is not None and lease.held and not self._closed

    @property
    def running(self) -> bool:
        """Whether the writer's thread is running (appends can be made)."""
        return self._thread is not None and self._thread.is_alive() and not self._closed

    def start(self) -> None:
        """Take the lock key and, with an interval, try the signer lease; start the thread."""
        if self._postgres:
            with self._engine.connect() as conn:
                self._lock_key = advisory_lock_key(conn)
        if self._interval is not None:
            self._lease = SignerLease(self._engine)
            self._lease.hold()  # before the thread starts: from then on, the thread's
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread after it has committed everything queued; release the lease."""
        with self._lock:
            if self._thread is None or self._closed:
                return
            # Nothing can be queued after this: submit checks it under the same lock.
            self._closed = True
            # Only an idle writer needs waking (a busy one sees _closed before it idles), and
            # only once: a second release of a wake-up not yet taken would raise.
            if self._idle:
                self._wake()
        self._thread.join()
        self._drop_connection()
        self._turns.close()
        if self._lease is not None:
            self._lease.release()

    def submit(self, request: Request) -> None:
        """Queue a request for the writer, building its entries now when the draft allows.

        While the writer commits one batch, callers build the next one (the draft) on top of
        it, in their own thread and under the lock, so that the writer's next transaction has
        little left to do but write. The draft only ever covers the first pending requests,
        and only plain ones (no key rotation, no checkpoint on demand): anything else, and
        anything that fails here, the writer builds itself.
        """
        self.submit_all((request,))

    def submit_all(self, requests: Sequence[Request]) -> None:
        """``submit`` each of ``requests``, in order, taking the lock and waking the writer
        once for all of them."""
        with self._lock:
            if self._thread is None or self._closed:
                raise StorageError("the ledger is not open for appends")
            for request in requests:
                self._queue(request)
            if self._idle:
                self._wake()

    def _queue(self, request: Request) -> None:
        """Add a request to the pending ones and, when it may, to the draft (lock held)."""
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
                    draft.add(request.records, None, False)
                except Exception:
                    self._draft = None  # the writer builds these requests itself
        pending.append(request)

    def wait(self, request: Request) -> list[Appended]:
        """Submit ``request`` and block this thread until it is committed (or failed)."""
        waiter = request.thread = _Waiter()
        self.submit(request)
        return waiter.wait()

    def _new_build(self, tail: Tail) -> Build:
        return Build(tail, origin=self._origin, every=self._every, now=self._clock())

    def _run(self) -> None:
        woke = False  # whether the writer had nothing to do before this batch
        busy = False  # whether the last batch had several callers: appends come concurrently
        while True:
            if busy and self._commit_delay:
                # PostgreSQL's commit_delay: under concurrent appends, a moment's wait lets
                # more of them join this commit, and each commit's pages and fsync are shared
                # by more appends. Alone (the last batch had one caller), none commits later.
                time.sleep(self._commit_delay)
            with self._lock:
                taken = self._take(split=woke) if self._pending else None
            if taken is not None:
                woke = False
                busy = len(taken[0]) > 1
                self._commit_or_split(*taken)
                continue
            busy = False
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
        passes first, queue a checkpoint request if this writer holds the signer lease (taking
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
                self._pending.append(Request([], force_checkpoint=signs))

    def _take(self, *, split: bool) -> tuple[list[Request], Build | None]:
        """Take the next batch off the queue (lock held) and finish building it.

        Returns the requests and their build, on top of the tail the last batch leaves, or None
        when that tail is unknown (after a failure, or before the first batch) or the build
        failed: the writer then builds under the append lock, from the database.
        """
        pending = self._pending
        n, count = 1, len(pending[0].records)
        # A request with late records commits alone: they must see every row committed before
        # them, and no row of theirs may come after them in their own batch.
        if pending[0].late is None:
            while n < len(pending) and count < self._max_batch and pending[n].late is None:
                count += len(pending[n].records)
                n += 1
        build, self._draft = self._draft, None
        if split and n > _PIPELINE_ABOVE:
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
                    if request.late is not None:
                        # Records made under the append lock: the batch is built there.
                        return requests, None
                    build.add(request.records, request.rotate_to, request.force_checkpoint)
                # The next draft starts where this batch ends.
                self._draft_base = build.finish()
        except Exception:
            build = None  # built again under the append lock, where a failure is handled
        return requests, build

    def _commit_or_split(self, batch: list[Request], build: Build | None) -> None:
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

    def _commit(self, batch: list[Request], build: Build | None) -> list[list[Appended]]:
        """Write one batch in one transaction under the append lock; return once durable."""
        if (
            build is not None
            and 0 < len(build.entries) <= ONE_STATEMENT_MAX
            and not self._postgres
            and not (build.sealed or build.checkpoints or build.keys)
            and all(r.rows is None and r.in_transaction is None for r in batch)
            and self._commit_in_one_statement(build)
        ):
            assert build.end is not None
            self._tail = build.end
            return build.results
        return self._commit_in_transaction(batch, build)

    def _commit_in_one_statement(self, build: Build) -> bool:
        """SQLite, entries only: see ``append_in_one_statement``; False when nothing was
        written, and the caller takes the transaction path."""
        self._connection()
        cursor = self._cursor
        assert cursor is not None
        return append_in_one_statement(cursor, build.entries, build.base)

    def _commit_in_transaction(
        self, batch: list[Request], build: Build | None
    ) -> list[list[Appended]]:
        """The general path: one transaction holding the append lock from its first statement."""
        txn = Transaction(self._connection(), self._cursor)
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
                    records = request.records
                    if request.late is not None:
                        records = [*records, *_late_records(request.late, txn)]
                    build.add(records, request.rotate_to, request.force_checkpoint)
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

    def _current_tail(self, txn: Transaction, size: int, prev: bytes) -> Tail:
        """The tail as the database has it; the cached one when no other process appended."""
        cached = self._tail
        if cached is not None and cached.size == size and cached.prev == prev:
            return cached
        conn = txn.core()
        frontier = CompactRange.from_subtrees(
            size, read_subtree_hashes(conn, complete_subtrees(0, size))
        )
        return Tail(
            size,
            prev,
            frontier,
            read_checkpoint_size(conn),
            vkey := read_current_key(conn),
            self._signer_for(vkey),
        )

    def _signer_for(self, vkey: str | None) -> NoteSigner:
        """The signer of the log's current key: this writer's, or the one the keyring gives
        for a key another process rotated to (else this writer's, refused when it signs)."""
        if vkey is not None and vkey != self._signer.vkey and self._keyring is not None:
            signer = self._keyring(vkey)
            if signer is not None and signer.vkey == vkey:
                self._signer = signer
        return self._signer

    def _catch_up(self, txn: Transaction) -> Tail | None:
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
        rows = txn.since(self._select_since, cached.size - 1, _CATCH_UP_MAX + 1)
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
            checkpoint_size = read_checkpoint_size(txn.core())
        if "key" in kinds:
            vkey = read_current_key(txn.core())
        seq, _, prev = rows[-1]
        return Tail(seq + 1, prev, frontier, checkpoint_size, vkey, self._signer_for(vkey))


def _deliver(settled: Iterable[tuple[Request, _Outcome]]) -> None:
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


def _late_records(late: Late, txn: Transaction) -> list[Prepared]:
    try:
        return late(txn.core())
    except Exception as exc:
        raise _CallerFailed(exc) from exc


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
