"""The ledger store: durable, serialised, group-committed appends; proofs; checkpoints; erasure.

One writer thread per ``Ledger`` owns the append path. Callers (threads or asyncio tasks) hand it
records and wait; it takes everything queued, opens one transaction, takes the cross-process
append lock (SQLite ``BEGIN IMMEDIATE``, PostgreSQL advisory lock), reads the tail, assigns
contiguous ``seq`` numbers, chains and hashes the entries, stores them with the subtree hashes
they complete, signs a checkpoint when one is due, and commits. Only then do the callers return:
an append is durable when ``append`` returns. The more callers wait together, the more entries
share one fsync, so throughput grows with concurrency.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.compact import CompactRange
from ledger.database import WRITE, advisory_lock_key, create_tables
from ledger.entry import (
    Entry,
    assemble_entry,
    canonical_json,
    check_kind,
    format_time,
    parse_entry,
)
from ledger.errors import EntryError, LedgerError, ProofError, SignatureError, StorageError
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
_INSERT_ENTRIES = "INSERT INTO ledger_entries (seq, kind, leaf_hash, data, nodes) VALUES ({})"
_HASH = 32


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
    sealed: list[tuple[str, bytes, bytes]]  # (path, salt, canonical value)
    subject_text: str


InTransaction = Callable[[Connection, list[Appended]], None]
RowsFor = Callable[[list[Appended]], Sequence[tuple[sa.Table, Mapping[str, Any]]]]


@dataclass(slots=True)
class _Request:
    """Work for the writer and who waits for it: a thread (``future``) or a coroutine."""

    records: list[_Prepared]
    rows: RowsFor | None = None
    in_transaction: InTransaction | None = None
    force_checkpoint: bool = False
    rotate_to: NoteSigner | None = None
    future: concurrent.futures.Future[list[Appended]] | None = None
    waiter: asyncio.Future[list[Appended]] | None = None


@dataclass(slots=True)
class _Tail:
    """What the writer knows of the end of the log; checked against the database each time."""

    size: int
    prev: bytes
    frontier: CompactRange
    checkpoint_size: int
    vkey: str | None


@dataclass(slots=True)
class _Batch:
    """Rows of one transaction, built before anything is written."""

    entries: list[tuple[int, str, bytes, bytes, bytes]] = field(default_factory=list)
    sealed: list[Mapping[str, Any]] = field(default_factory=list)
    checkpoints: list[Mapping[str, Any]] = field(default_factory=list)
    keys: list[Mapping[str, Any]] = field(default_factory=list)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Ledger:
    """An append-only, hash-chained, Merkle-tree ledger in a SQL database.

    ``signer`` signs checkpoints; without one the ledger is read-only. ``checkpoint_every``
    entries or ``checkpoint_interval`` seconds (whichever comes first) trigger a checkpoint;
    ``clock`` is injected so tests and replays control time.
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
        self._lock_key: int | None = None
        self._tail: _Tail | None = None
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._opened = False
        self._closed = False
        self._submitting = threading.Lock()
        self._conn: Connection | None = None
        self._last_checkpoint_at = time.monotonic()

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
        with self._submitting:
            if self._writer is None or self._closed:
                return
            self._closed = True
            self._queue.put(None)  # nothing can be queued behind this: _submit holds the lock
        self._writer.join()
        self._drop_connection()

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
        waiter: asyncio.Future[list[Appended]] = asyncio.get_running_loop().create_future()
        request = _Request(self._prepare_all(records), rows=rows, in_transaction=in_transaction)
        request.waiter = waiter
        self._submit(request)
        return await waiter

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
        with self._submitting:
            if self._writer is None or self._closed:
                raise StorageError("the ledger is not open for appends")
            self._queue.put(request)

    def _wait(self, request: _Request) -> list[Appended]:
        request.future = concurrent.futures.Future()
        self._submit(request)
        return request.future.result()

    # -- the writer ------------------------------------------------------------------------

    def _run_writer(self) -> None:
        stopping = False
        while not stopping:
            request = self._next_request()
            if request is None:
                break
            batch, count = [request], len(request.records)
            while count < self._max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
                count += len(more.records)
            self._commit_or_split(batch)

    def _next_request(self) -> _Request | None:
        """Wait for work; when the checkpoint interval passes, make a checkpoint request."""
        while True:
            timeout = None
            if self._interval is not None:
                timeout = max(0.0, self._last_checkpoint_at + self._interval - time.monotonic())
            try:
                return self._queue.get(timeout=timeout)
            except queue.Empty:
                self._last_checkpoint_at = time.monotonic()
                self._commit_or_split([_Request([])], timed=True)

    def _commit_or_split(self, batch: list[_Request], *, timed: bool = False) -> None:
        try:
            results: Sequence[list[Appended] | BaseException] = self._commit(batch, timed=timed)
        except Exception as exc:
            self._drop_connection()
            if len(batch) > 1:
                # One bad request must not fail the others: retry each on its own.
                for request in batch:
                    self._commit_or_split([request])
                return
            results = [exc.cause if isinstance(exc, _CallerFailed) else _as_storage_error(exc)]
        _deliver(batch, results)

    def _commit(self, batch: list[_Request], *, timed: bool) -> list[list[Appended]]:
        signer = self._signer
        assert signer is not None
        conn = self._connection()
        with conn.begin():
            if self._lock_key is not None:
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(self._lock_key)))
            tail = self._current_tail(conn)
            frontier = CompactRange.from_subtrees(tail.size, tail.frontier.hashes)
            size, prev = tail.size, tail.prev
            checkpoint_size, vkey = tail.checkpoint_size, tail.vkey
            now = format_time(self._clock())
            now_json = canonical_json(now, "time")
            rows = _Batch()
            results: list[list[Appended]] = []

            def add(item: _Prepared) -> Appended:
                nonlocal size, prev
                data = assemble_entry(
                    size, now_json, item.kind, item.actor, item.subject, item.body, prev.hex()
                )
                leaf = hashlib.sha256(b"\x00" + data).digest()
                completed = frontier.append(leaf)
                rows.entries.append(
                    (size, item.kind, leaf, data, b"".join(h for _, _, h in completed))
                )
                for path, salt, value in item.sealed:
                    rows.sealed.append(
                        {
                            "seq": size,
                            "path": path,
                            "subject": item.subject_text,
                            "salt": salt,
                            "value": value,
                            "erased_by": None,
                        }
                    )
                appended = Appended(size, leaf, now, data)
                size, prev = size + 1, leaf
                return appended

            def add_checkpoint(by: NoteSigner) -> None:
                nonlocal checkpoint_size
                if by.vkey != vkey:
                    raise SignatureError(
                        f"this process signs with {by.vkey} but the ledger's current key is "
                        f"{vkey}; restart it with the current signing key"
                    )
                root = frontier.root()
                note = sign_checkpoint(Checkpoint(self._origin, size, root), by)
                rows.checkpoints.append(
                    {"size": size, "seq": size, "root_hash": root, "note": note, "signed_at": now}
                )
                checkpoint_size = size
                add(self._internal("checkpoint", {"note": note}))

            def add_key(new: str, previous: str | None) -> None:
                # A new key signs from the size after the checkpoint its predecessor signs next.
                from_size = size + 1 if previous is None else size + 2
                rows.keys.append({"from_size": from_size, "seq": size, "vkey": new})
                body: dict[str, Any] = {"vkey": new, "from_size": from_size}
                if previous is not None:
                    body["previous"] = previous
                add(self._internal("key", body))

            if size == 0:
                add_key(signer.vkey, None)
                vkey = signer.vkey
            for request in batch:
                results.append([add(item) for item in request.records])
                if request.rotate_to is not None:
                    add_key(request.rotate_to.vkey, vkey)
                    add_checkpoint(signer)
                    signer, vkey = request.rotate_to, request.rotate_to.vkey
            forced = any(r.force_checkpoint for r in batch) or timed
            uncovered = size - checkpoint_size - (1 if checkpoint_size else 0)
            if uncovered >= self._every or (forced and uncovered > 0):
                add_checkpoint(signer)
            if rows.entries:
                conn.exec_driver_sql(self._insert_entries, rows.entries)
            extra: dict[sa.Table, list[Mapping[str, Any]]] = {
                SEALED: rows.sealed,
                CHECKPOINTS: rows.checkpoints,
                KEYS: rows.keys,
            }
            for request, appended in zip(batch, results, strict=True):
                if request.rows is not None and appended:
                    for table, row in request.rows(appended):
                        extra.setdefault(table, []).append(row)
            for table, values in extra.items():
                if values:
                    conn.execute(sa.insert(table), values)
            for request, appended in zip(batch, results, strict=True):
                if request.in_transaction is not None and appended:
                    try:
                        request.in_transaction(conn, appended)
                    except Exception as exc:
                        raise _CallerFailed(exc) from exc
        self._tail = _Tail(size, prev, frontier, checkpoint_size, vkey)
        self._signer = signer
        if rows.checkpoints:
            self._last_checkpoint_at = time.monotonic()
        return results

    def _internal(self, kind: str, body: Mapping[str, Any]) -> _Prepared:
        """An entry the ledger writes about itself (keys, checkpoints)."""
        return _prepare(Record(kind, "ledger", self._origin, body))

    def _connection(self) -> Connection:
        """The writer's own connection, kept open between batches (no pool round trip)."""
        if self._conn is None:
            self._conn = self._engine.connect().execution_options(**{WRITE: True})
        return self._conn

    def _drop_connection(self) -> None:
        """After a failure, forget the tail and the connection: the next batch starts afresh."""
        self._tail = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                conn.invalidate()
                conn.close()

    def _current_tail(self, conn: Connection) -> _Tail:
        """The tail as the database has it; the cached one when no other process appended."""
        last = conn.exec_driver_sql(_SELECT_TAIL).first()
        size, prev = (0, bytes(_HASH)) if last is None else (last[0] + 1, bytes(last[1]))
        cached = self._tail
        if cached is not None and cached.size == size and cached.prev == prev:
            return cached
        frontier = CompactRange.from_subtrees(
            size, _subtree_hashes(conn, complete_subtrees(0, size))
        )
        checkpoint_size = conn.execute(sa.select(sa.func.max(CHECKPOINTS.c.size))).scalar() or 0
        vkey = conn.execute(
            sa.select(KEYS.c.vkey).order_by(KEYS.c.from_size.desc()).limit(1)
        ).scalar()
        self._tail = _Tail(size, prev, frontier, checkpoint_size, vkey)
        return self._tail

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
    check_kind(kind)
    sealed = []
    if sensitive:
        body = dict(body)
        sealed = [_seal(body, path) for path in sensitive]
    return _Prepared(
        kind,
        canonical_json(actor, "actor"),
        canonical_json(subject, "subject"),
        canonical_json(body),
        sealed,
        subject,
    )


_Outcome = list[Appended] | BaseException


def _deliver(batch: Sequence[_Request], outcomes: Sequence[_Outcome]) -> None:
    """Wake every waiter: threads directly, each event loop once for all its coroutines."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], _Outcome]]] = {}
    for request, outcome in zip(batch, outcomes, strict=True):
        if request.future is not None:
            if isinstance(outcome, BaseException):
                request.future.set_exception(outcome)
            else:
                request.future.set_result(outcome)
        elif request.waiter is not None:
            by_loop.setdefault(request.waiter.get_loop(), []).append((request.waiter, outcome))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits any more
            loop.call_soon_threadsafe(_settle, settled)


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
