"""What callers append, and the rows of a batch built from it on top of a known tail.

A caller's ``Record`` is validated and encoded in the caller's own thread (``prepare``), before
it is queued. The writer then builds the rows of a whole batch at once (``Build``): each entry
gets its ``seq``, its ``prev`` link, its leaf hash and the subtree hashes it completes, and the
checkpoint and key entries come in where they are due. Nothing here touches the database: a
build is only valid on top of the tail it started from, which the writer checks under the
append lock (``ledger.writer``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.compact import CompactRange
from ledger.entry import assemble_entry, canonical_json, check_kind, format_time
from ledger.errors import EntryError, SignatureError, StorageError
from ledger.note import NoteSigner
from ledger.sealing import SubjectKey, refuse_clear_subject, seal_fields

__all__ = ["Appended", "Build", "Prepared", "Record", "Row", "Tail", "prepare"]


class Record(NamedTuple):
    """What a caller asks to append.

    ``sealed`` names body fields (dotted paths, such as ``params.customer_email``) whose values
    are personal data of ``data_subject`` (an id, such as a customer number): the entry holds
    salted commitments to them and the values wait aside until ``Ledger.erase(data_subject)``
    (see ``ledger.sealing``). Sealing needs a data subject, and a record that names one must
    seal every field that holds its id.
    """

    kind: str
    actor: str
    subject: str
    body: Mapping[str, Any]
    sealed: Collection[str] = ()
    data_subject: str | None = None


class Appended(NamedTuple):
    """A durable entry: where it landed and what it hashes to."""

    seq: int
    leaf_hash: bytes
    time: str
    data: bytes


class Prepared(NamedTuple):
    """A record validated and encoded in the caller's thread, ready to be enveloped."""

    kind: str
    actor: bytes  # canonical JSON
    subject: bytes  # canonical JSON
    body: bytes  # canonical JSON
    sealed: Sequence[tuple[str, bytes, bytes]]  # (path, salt, canonical value)
    subject_digest: bytes | None  # the data subject's, under the subject key
    subject_key_id: bytes | None


Row = tuple[int, str, bytes, bytes, bytes]  # seq, kind, leaf_hash, data, nodes

# RFC 9162 leaf hashes start from a copy of a hasher seeded with the prefix 0x00 (no copy of
# the entry's bytes behind a prefix). The seed is never updated, so threads may share it.
_new_leaf_hasher = hashlib.sha256(b"\x00").copy
# tuple.__new__: a NamedTuple's own constructor is a Python function, on the hot path.
_new_tuple: Any = tuple.__new__
# Kinds that passed check_kind (a few dozen in practice; bounded all the same).
_KINDS_SEEN: set[str] = set()
_KINDS_SEEN_MAX = 1024


def prepare(record: Record, subject_key: SubjectKey | None = None) -> Prepared:
    """Validate and encode a record in the caller's thread, before it is queued; seal its
    sealed fields (``subject_key`` names their data subject)."""
    kind, actor, subject, body, paths, data_subject = record
    if kind not in _KINDS_SEEN:
        check_kind(kind)
        if len(_KINDS_SEEN) < _KINDS_SEEN_MAX:
            _KINDS_SEEN.add(kind)
    sealed: Sequence[tuple[str, bytes, bytes]] = ()
    digest = key_id = None
    if paths or data_subject is not None:
        if subject_key is None:
            raise StorageError(
                "this ledger was opened without a subject key: it cannot seal personal data"
            )
        if not isinstance(data_subject, str) or not data_subject:
            raise EntryError("data_subject", "sealed fields need the data subject they belong to")
        digest, key_id = subject_key.digest(data_subject), subject_key.id
        if paths:
            body, sealed = seal_fields(body, paths)
    prepared: Prepared = _new_tuple(
        Prepared,
        (
            kind,
            canonical_json(actor, "actor"),
            canonical_json(subject, "subject"),
            canonical_json(body),
            sealed,
            digest,
            key_id,
        ),
    )
    if data_subject is not None:
        refuse_clear_subject(data_subject, prepared.actor, prepared.subject, prepared.body)
    return prepared


@dataclass(frozen=True, slots=True)
class Tail:
    """The end of the log as a writer sees it: committed, or past a batch not yet committed.

    ``frontier`` is never appended to once it is a tail's: a ``Build`` works on a copy.
    """

    size: int
    prev: bytes
    frontier: CompactRange
    checkpoint_size: int
    vkey: str | None
    signer: NoteSigner


class Build:
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

    def __init__(self, tail: Tail, *, origin: str, every: int, now: dt.datetime) -> None:
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
        self.entries: list[Row] = []
        self.sealed: list[Mapping[str, Any]] = []
        self.checkpoints: list[Mapping[str, Any]] = []
        self.keys: list[Mapping[str, Any]] = []
        self.results: list[list[Appended]] = []  # one list per request added
        self.records = 0  # the callers' records among the entries
        self.forced = False
        self.end: Tail | None = None  # set by finish()
        if self.size == 0:
            self._add_key(self.signer.vkey, None)
            self.vkey = self.signer.vkey

    def add(
        self, records: Sequence[Prepared], rotate_to: NoteSigner | None, force_checkpoint: bool
    ) -> None:
        """Add one request's records (and the key handover it asks for) after those so far."""
        appended = list(map(self._add, records))
        if rotate_to is not None:
            self._add_key(rotate_to.vkey, self.vkey)
            self._add_checkpoint(self.signer)
            self.signer, self.vkey = rotate_to, rotate_to.vkey
        self.forced = self.forced or force_checkpoint
        self.results.append(appended)
        self.records += len(appended)

    def finish(self, *, forced: bool = False) -> Tail:
        """Sign a checkpoint if one is due; return (and keep as ``end``) the tail after it."""
        uncovered = self.size - self.checkpoint_size - (1 if self.checkpoint_size else 0)
        if uncovered >= self.every or ((forced or self.forced) and uncovered > 0):
            self._add_checkpoint(self.signer)
        self.end = Tail(
            self.size, self.prev, self.frontier, self.checkpoint_size, self.vkey, self.signer
        )
        return self.end

    def _add(self, item: Prepared) -> Appended:
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
                    "subject_digest": item.subject_digest,
                    "subject_key_id": item.subject_key_id,
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

    def _internal(self, kind: str, body: Mapping[str, Any]) -> Prepared:
        """An entry the ledger writes about itself (keys, checkpoints)."""
        return prepare(Record(kind, "ledger", self.origin, body))
