"""The ledger: an append-only, hash-chained, Merkle-tree log in a SQL database.

``Ledger`` is what callers hold. Appends go to its writer (``ledger.writer``: one thread,
group-committed batches built by ``ledger.batch``), which returns once they are durable; reads,
roots and proofs are answered here from the stored tree (``ledger.tree``); sealed values are
revealed and erased through ``ledger.sealing``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ledger.batch import Appended, Prepared, Record, prepare
from ledger.cosignature import (
    Cosignature,
    CosignatureVerifier,
    add_cosignature,
    open_cosignature,
)
from ledger.database import create_tables
from ledger.entry import Entry, parse_entry
from ledger.errors import EntryError, ProofError, SignatureError, StorageError
from ledger.merkle import (
    complete_subtrees,
    consistency_proof_ranges,
    fold_subtrees,
    inclusion_proof_ranges,
)
from ledger.models import CHECKPOINTS, ENTRIES, KEYS
from ledger.note import NoteSigner
from ledger.sealing import (
    SubjectKey,
    check_subject_key,
    erase_sealed,
    find_sealed,
    forget_erased,
    reveal_sealed,
)
from ledger.tree import check_size, read_range_hashes, read_size, read_subtree_hashes
from ledger.writer import InTransaction, Keyring, Request, RowsFor, Writer

__all__ = ["Appended", "InTransaction", "Ledger", "Record", "RowsFor", "StoredCheckpoint"]


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A signed tree head as stored: the note, and the size and root it signs."""

    size: int
    root_hash: bytes
    note: str
    seq: int


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

    ``keyring(vkey)`` gives the signer for a key the log rotated to in another process (see
    ``rotate_key``), so that every process writing to one database signs with the current key
    without a restart; without it, a process left with the old key fails its checkpoints.

    ``commit_delay`` (seconds, default none): while appends come concurrently (the last batch
    had several callers), how long the writer waits before taking the next batch, as
    PostgreSQL's ``commit_delay``: fewer, larger commits, at the cost of that much latency.

    ``subject_key`` (32 bytes or more, kept outside the database: see
    ``ledger.keys.load_or_create_subject_key``) names data subjects by a keyed digest; without
    one the ledger seals and erases nothing. Personal data is sealed per record and erased per
    data subject::

        ledger.append("decision", actor="agent-7", subject="act_123", body=body,
                      sealed={"params.customer", "params.customer_email"},
                      data_subject="C-1001")
        ledger.erase("C-1001", actor="dpo@example.org", reason="art. 17 request 88")
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
        subject_key: bytes | None = None,
        keyring: Keyring | None = None,
        commit_delay: float = 0.0,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        self._engine = engine
        self._origin = origin
        self._subject_key = None if subject_key is None else SubjectKey(subject_key)
        self._opened = False
        self._halted: str | None = None
        self._writer: Writer | None = None
        # Appends made by an event loop's tasks during its current turn, not yet handed to
        # the writer (see append_many_async).
        self._handing_over: dict[asyncio.AbstractEventLoop, list[Request]] = {}
        if signer is not None:
            self._writer = Writer(
                engine,
                origin=origin,
                signer=signer,
                every=checkpoint_every,
                interval=checkpoint_interval,
                clock=clock,
                max_batch=max_batch,
                keyring=keyring,
                commit_delay=commit_delay,
            )

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        """The checkpoint origin line that names this log."""
        return self._origin

    @property
    def signer(self) -> NoteSigner | None:
        """The key this process signs checkpoints with, if any."""
        return None if self._writer is None else self._writer.signer

    @property
    def failure(self) -> str | None:
        """Why the writer's most recent transaction did not commit, if it did not: the
        database's failure (unreachable, disk full), never a caller's. None once one commits,
        be it only the periodic checkpoint's, so a ledger that recovers says so by itself."""
        return None if self._writer is None else self._writer.failure

    @property
    def signs_periodically(self) -> bool:
        """Whether this ledger signs the periodic (interval) checkpoints: it holds the signer
        lease, as its last check found (one per tick; no I/O here). False without a signer
        or an interval, or once closed."""
        return self._writer is not None and self._writer.signs_periodically

    @property
    def signer_problem(self) -> str | None:
        """Why this ledger could not check the signer lease at its last try, for another reason
        than another holder (the server unreachable, the lock file not writable), or None."""
        return None if self._writer is None else self._writer.signer_problem

    @property
    def writing(self) -> bool:
        """Whether this ledger's writer is running (appends can be made)."""
        return self._writer is not None and self._writer.running

    def open(self) -> Ledger:
        """Create the tables if needed, start the writer and, on an empty log, write its key.

        Opening an open ledger does nothing.
        """
        if self._opened:
            return self
        self._opened = True
        create_tables(self._engine)
        if self._writer is not None and self._halted is None:
            self._writer.start()
            try:
                self._writer.wait(Request([]))
                self._check_signer()
                self._check_subject_key()
            except BaseException:
                self.close()
                raise
        return self

    def _check_signer(self) -> None:
        """Refuse to open with a key that is not the log's current one (fail closed now, not
        at the next checkpoint)."""
        current = self.keys()[-1][1] if self.keys() else None
        signer = self.signer
        if signer is not None and current is not None and current != signer.vkey:
            raise SignatureError(
                f"this process signs with {signer.vkey} but the ledger's current key is "
                f"{current}; start it with the current signing key"
            )

    def _check_subject_key(self) -> None:
        if self._subject_key is not None:
            with self._engine.connect() as conn:
                check_subject_key(conn, self._subject_key)

    @property
    def halted(self) -> str | None:
        """Why this ledger takes no appends (``halt``), or None."""
        return self._halted

    def halt(self, reason: str) -> None:
        """Take no append from now on, each refused with ``reason`` (StorageError); the writer
        stops once what is queued is committed. Before ``open``, the writer never starts, so
        nothing is written, not even the key entry of an empty log. For an owner that finds
        the database is not the log it kept (``reason`` says how it knows)."""
        self._halted = reason
        if self._writer is not None and self._opened:
            self._writer.close()

    def close(self) -> None:
        """Stop the writer after it has committed everything queued."""
        if self._writer is not None:
            self._writer.close()

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
        sealed: Collection[str] = (),
        data_subject: str | None = None,
    ) -> Appended:
        """Append one entry and return once it is durable (``sealed``: see ``Record``)."""
        return self.append_many([Record(kind, actor, subject, body, sealed, data_subject)])[0]

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
        request = Request(self._prepare_all(records), rows=rows, in_transaction=in_transaction)
        return self._writable().wait(request)

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
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Appended]] = loop.create_future()
        request = Request(self._prepare_all(records), rows, in_transaction, future=future)
        writer = self._writable()
        queued = self._handing_over.get(loop)
        if queued is None:
            # The first append of this turn of the event loop: those that its other ready tasks
            # make join it, and all go to the writer together when the turn ends, with one
            # wake-up: a burst of decisions is one batch (one transaction, one fsync) instead
            # of a first one alone and the rest behind it.
            queued = self._handing_over[loop] = []
            loop.call_soon(self._hand_over, loop, writer)
        queued.append(request)
        return await future

    def _hand_over(self, loop: asyncio.AbstractEventLoop, writer: Writer) -> None:
        requests = self._handing_over.pop(loop)
        try:
            writer.submit_all(requests)
        except Exception as exc:  # closed meanwhile: nothing of theirs was queued
            for request in requests:
                if request.future is not None and not request.future.done():
                    request.future.set_exception(exc)

    def checkpoint(self) -> StoredCheckpoint:
        """Sign a checkpoint of the whole log now, unless the latest one already covers it."""
        self._writable().wait(Request([], force_checkpoint=True))
        latest = self.latest_checkpoint()
        assert latest is not None
        return latest

    def rotate_key(self, new_signer: NoteSigner) -> StoredCheckpoint:
        """Hand signing over to ``new_signer``.

        Writes a ``key`` entry naming the new key and the first tree size it signs, then a
        checkpoint signed by the old key that covers that entry, so a verifier who trusts the
        old key learns the new one from a signed tree.
        """
        self._writable().wait(Request([], rotate_to=new_signer))
        latest = self.latest_checkpoint()
        assert latest is not None
        return latest

    def erase(self, data_subject: str, *, actor: str, reason: str) -> Appended | None:
        """Erase every sealed value of ``data_subject``; the ledger still verifies.

        Appends an ``erasure`` entry whose subject is the data subject's keyed digest
        (``subject_digest``) and whose body lists the erased fields, ``{"erased": [{"seq",
        "path"}, ...], "reason": reason}``, in the transaction that deletes their values and
        salts. ``reason`` must not name the data subject. On SQLite the WAL is then emptied, so
        that no older copy of an erased value stays in a file. Returns None when the subject
        has nothing left to erase.
        """
        key = self._subject_key
        if key is None:
            raise StorageError("this ledger was opened without a subject key: it cannot erase")
        if data_subject and data_subject in reason:
            raise EntryError("reason", "names the data subject; the erasure entry must not")
        self._check_subject_key()
        digest = key.digest(data_subject)

        def listed(conn: Connection) -> list[Prepared]:
            # Under the append lock: nothing is sealed for this subject between this list and
            # the erasure entry that holds it.
            sealed = find_sealed(conn, digest)
            if not sealed:
                return []
            erased = [{"seq": seq, "path": path} for seq, path in sealed]
            body = {"erased": erased, "reason": reason}
            return [prepare(Record("erasure", actor, digest.hex(), body))]

        def wipe(conn: Connection, appended: list[Appended]) -> None:
            erase_sealed(conn, digest, appended[0].seq)

        request = Request([], in_transaction=wipe, late=listed)
        appended = self._writable().wait(request)
        forget_erased(self._engine)
        return appended[0] if appended else None

    def subject_digest(self, data_subject: str) -> str:
        """How the ledger names ``data_subject``: its keyed digest, in hex (the subject of its
        ``erasure`` entries)."""
        if self._subject_key is None:
            raise StorageError("this ledger was opened without a subject key")
        return self._subject_key.digest(data_subject).hex()

    def _prepare_all(self, records: Sequence[Record]) -> list[Prepared]:
        if self._writer is None:
            raise StorageError("this ledger was opened without a signing key: it is read-only")
        key = self._subject_key
        return [prepare(record, key) for record in records]

    def _writable(self) -> Writer:
        if self._halted is not None:
            raise StorageError(f"the ledger takes no appends: {self._halted}")
        if self._writer is None:
            raise StorageError("the ledger is not open for appends")
        return self._writer

    # -- reading ---------------------------------------------------------------------------

    def size(self) -> int:
        """The number of entries in the log."""
        with self._engine.connect() as conn:
            return read_size(conn)

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

    def entries_at(self, seqs: Iterable[int]) -> list[bytes]:
        """The stored bytes of the entries with these seqs, in seq order (a seq the log does
        not hold is left out)."""
        wanted = sorted(set(seqs))
        if not wanted:
            return []
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(ENTRIES.c.data).where(ENTRIES.c.seq.in_(wanted)).order_by(ENTRIES.c.seq)
            ).all()
        return [bytes(data) for (data,) in rows]

    def reveal(self, seq: int) -> dict[str, Any]:
        """The body of entry ``seq`` with its sealed values put back where not erased."""
        body = self.entry(seq).body
        with self._engine.connect() as conn:
            return reveal_sealed(conn, seq, body)

    def root(self, size: int | None = None) -> bytes:
        """The Merkle root of the first ``size`` entries (default: all)."""
        with self._engine.connect() as conn:
            current = read_size(conn)
            size = current if size is None else size
            check_size(size, current)
            return fold_subtrees(read_subtree_hashes(conn, complete_subtrees(0, size)))

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of entry ``index`` in the tree of ``size`` entries."""
        if not 0 <= index < size:
            raise ProofError(f"index {index} is not in a tree of size {size}")
        with self._engine.connect() as conn:
            check_size(size, read_size(conn))
            return read_range_hashes(conn, inclusion_proof_ranges(index, size))

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """RFC 9162 consistency proof between the trees of ``size1`` and ``size2`` entries."""
        if not 0 < size1 <= size2:
            raise ProofError(f"need 0 < size1 <= size2, got {size1} and {size2}")
        with self._engine.connect() as conn:
            check_size(size2, read_size(conn))
            return read_range_hashes(conn, consistency_proof_ranges(size1, size2))

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

    def add_cosignature(
        self, size: int, line: str, witnesses: Iterable[CosignatureVerifier]
    ) -> tuple[Cosignature, StoredCheckpoint]:
        """Keep a witness's cosignature ``line`` with the checkpoint this log signed at ``size``.

        The line must verify, by one of ``witnesses``, over the text of that very checkpoint:
        a witness that was shown another tree of that size (a fork) cannot have its
        cosignature attached here. The stored note then carries it (one line per witness, the
        latest), so the checkpoint, its proofs and an export that closes with it show it; the
        ``checkpoint`` entry keeps the note as signed. Raises KeyError if the log signed no
        checkpoint of ``size``, NoteError if the line is malformed, SignatureError if it is
        by none of ``witnesses`` or does not verify.
        """
        known = list(witnesses)
        while True:
            stored = self.checkpoint_at(size)
            if stored is None:
                raise KeyError(size)
            cosignature = open_cosignature(stored.note, line, known)
            note = add_cosignature(stored.note, line)
            with self._engine.begin() as conn:
                # Compare and set: another witness's line added meanwhile is kept, not lost.
                changed = conn.execute(
                    CHECKPOINTS.update()
                    .where(CHECKPOINTS.c.size == size, CHECKPOINTS.c.note == stored.note)
                    .values(note=note)
                ).rowcount
            if changed:
                return cosignature, StoredCheckpoint(size, stored.root_hash, note, stored.seq)

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


def _stored(row: sa.Row[Any]) -> StoredCheckpoint:
    return StoredCheckpoint(int(row.size), bytes(row.root_hash), str(row.note), int(row.seq))
