"""The offline verifier: one streaming pass over an export, trusting nothing but given keys.

Steps, numbered as in the code:

1. Every line is an entry in RFC 8785 canonical form, or, at the end, a checkpoint line.
2. ``seq`` runs 0, 1, 2, … with no gap, repeat or swap.
3. Every ``prev`` is the leaf hash of the entry before it (64 zeros for the first).
4. The Merkle root of the entries before each checkpoint equals the root it signs.
5. Every checkpoint is signed by the key the ledger names for its size (``key`` entries give
   each key a range); a new key counts only once the previous key has signed a tree holding
   its ``key`` entry; the export's last checkpoint is signed by a trusted key.
6. Given a checkpoint the auditor kept from earlier, the export holds that tree: same root at
   that size (so nothing before it was rewritten), and no fewer entries (so the tail was not cut).
7. Given witness keys and a quorum N, N of those witnesses cosigned the closing checkpoint, or
   the kept one (which the export extends): the log showed them this history, so it cannot show
   another one to someone else unnoticed. A cosignature by a given witness that does not verify
   is a forgery.

Without a kept checkpoint the result says the tail is unanchored: a signer could have cut it.

Speed. ``ExportVerifier.feed`` is the reference: it checks one line at a time, exactly as above.
``verify_export`` gets the same answers faster by splitting the file into chunks of whole lines
(``CHUNK_BYTES``) and scanning each chunk for *runs*: consecutive ordinary entries (not a
checkpoint or key entry, not at the kept checkpoint's size) that are canonical, numbered one after
the other and linked by ``prev``. A scan returns, per run, its first seq and prev, its last prev and
leaf hash, and the Merkle subtree hashes covering it; every other line comes back as it is. The
verifier then takes a run whole only where feeding its lines one by one could not have failed or
done anything else: no break pending, no closing checkpoint yet, and the run starting at the seq
and prev the verifier expects. Everything else -- checkpoint and key entries, the closing
checkpoint, the kept checkpoint's entry, and any line a scan found wrong, up to the end of its
chunk -- goes through ``feed``, so the first bad seq and its message are the reference's. Chunks
are scanned in the calling process or, for large files, by worker processes (``workers``); the
verifier consumes the results in file order either way.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import stat
import sys
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, TypeVar

import orjson

from ledger.checkpoint import Checkpoint, parse_checkpoint_body
from ledger.cosignature import Cosignature, CosignatureVerifier, verify_cosignatures
from ledger.entry import GENESIS_PREV, check_canonical
from ledger.errors import EntryError, NoteError, SignatureError, VerificationError
from ledger.merkle import fold_subtrees
from ledger.note import NoteVerifier, parse_note

__all__ = [
    "ExportVerifier",
    "VerifyResult",
    "load_verifier_keys",
    "load_witness_keys",
    "verify_export",
]

_K = TypeVar("_K")
_ENVELOPE = ("actor", "body", "kind", "prev", "seq", "subject", "time")
_CHECKPOINT_PREFIX = b'{"checkpoint":'
# RFC 9162 leaf and node prefixes, as hashers to copy: a copy costs less than hashing
# ``b"\x00" + data``, which would copy the entry first. Never updated, so safe to share.
_LEAF_SEED = hashlib.sha256(b"\x00")
_NODE_SEED = hashlib.sha256(b"\x01")

# Bytes of the export per chunk (whole lines: a chunk holds the lines that start inside it).
CHUNK_BYTES = 4 << 20
# Reads stay this small: a large buffer comes fresh from the OS page by page at every read, and
# those page faults cost more than splitting lines across reads.
_BLOCK = 1 << 16
# From this size on, ``verify_export`` uses worker processes unless told how many to use.
PARALLEL_MIN_BYTES = 32 << 20
MAX_AUTO_WORKERS = 4


@dataclass(frozen=True)
class VerifyResult:
    """What a successful verification established."""

    size: int
    root: bytes
    checkpoints: int
    keys: tuple[str, ...]
    final_key: str
    anchored_at: int | None  # size of the trusted checkpoint the export was checked against
    witnesses: tuple[str, ...] = ()  # the witness keys whose cosignatures were counted
    witnessed_at: int | None = None  # size of the checkpoint they cosigned

    @property
    def anchored(self) -> bool:
        """True when a kept checkpoint anchored the export (so a cut tail would have shown)."""
        return self.anchored_at is not None

    def to_json(self) -> dict[str, Any]:
        """The result as JSON for ``--json``."""
        return {
            "valid": True,
            "size": self.size,
            "root": self.root.hex(),
            "checkpoints": self.checkpoints,
            "keys": list(self.keys),
            "final_key": self.final_key,
            "anchored_at": self.anchored_at,
            "tail_unanchored": self.anchored_at is None,
            "witnesses": list(self.witnesses),
            "witnessed_at": self.witnessed_at,
        }


class _Frontier:
    """The right edge of the Merkle tree over the entries so far: its complete subtrees' hashes,
    largest first (one per set bit of ``size``), enough to append and to compute the root."""

    __slots__ = ("hashes", "size")

    def __init__(self) -> None:
        self.hashes: list[bytes] = []
        self.size = 0

    def append_leaf(self, leaf: bytes) -> None:
        self.append_subtree(0, leaf)

    def append_subtree(self, level: int, subtree: bytes) -> None:
        """Append the hash of the complete subtree of ``2**level`` leaves starting at ``size``.

        ``size`` must be a multiple of ``2**level`` (an aligned subtree). Each set bit of
        ``size >> level``, from the lowest up, is a subtree of that size waiting for a right
        sibling of the same size: merge until the carry stops, as binary addition does.
        """
        hashes = self.hashes
        carry = self.size >> level
        while carry & 1:
            node = _NODE_SEED.copy()
            node.update(hashes.pop() + subtree)
            subtree = node.digest()
            carry >>= 1
        hashes.append(subtree)
        self.size += 1 << level

    def root(self) -> bytes:
        return fold_subtrees(self.hashes)


@dataclass
class _Key:
    verifier: NoteVerifier
    seq: int
    from_size: int
    trusted: bool
    anchored: bool  # signed into a tree by the key before it (always true for the first key)


@dataclass
class _Pending:
    """A broken link whose culprit the next entry tells: the entry before, or the one after."""

    seq: int  # the entry whose prev did not match
    leaf: str  # that entry's leaf hash, to compare with the next entry's prev


@dataclass
class ExportVerifier:
    """Feed an export's lines in order, then call ``finish``; failures raise VerificationError."""

    trusted_keys: Sequence[NoteVerifier]
    trusted_checkpoint: str | None = None
    origin: str | None = None
    witnesses: Sequence[CosignatureVerifier] = ()
    min_witnesses: int = 0
    _frontier: _Frontier = field(default_factory=_Frontier)
    _size: int = 0
    _prev: str = GENESIS_PREV
    _before: str = GENESIS_PREV  # the prev of the last entry: tells an inserted entry apart
    _keys: list[_Key] = field(default_factory=list)
    _checkpoints: int = 0
    _last_checkpoint: int = 0
    _tail: list[Checkpoint] = field(default_factory=list)
    _tail_keys: list[_Key] = field(default_factory=list)
    _pending: _Pending | None = None
    _kept: Checkpoint | None = None
    _kept_note: str | None = None
    _kept_ok: bool = False
    _closing_note: str = ""

    def __post_init__(self) -> None:
        distinct = len(set(self.witnesses))
        if self.min_witnesses > distinct:
            raise ValueError(
                f"{self.min_witnesses} witness cosignatures wanted but {distinct} distinct "
                "witness keys given"
            )
        if self.trusted_checkpoint is not None:
            note = parse_note(self.trusted_checkpoint)
            self._kept = parse_checkpoint_body(note.text)
            self._kept_note = self.trusted_checkpoint
            self._check_origin(self._kept.origin, None)

    # -- feeding ---------------------------------------------------------------------------

    def feed(self, line: bytes) -> None:
        """Check one line of the export."""
        data = line[:-1] if line.endswith(b"\n") else line
        if data.startswith(_CHECKPOINT_PREFIX):
            self._feed_checkpoint_line(data)
            return
        seq = self._size
        if self._tail:
            raise VerificationError(seq, "an entry follows the export's closing checkpoint")
        # 1. canonical form and the entry's fields.
        try:
            obj = check_canonical(data)
        except EntryError as exc:
            raise VerificationError(seq, f"not a canonical entry: {exc.problem}") from None
        if type(obj) is not dict or tuple(obj) != _ENVELOPE:
            raise VerificationError(seq, f"not an entry: fields must be {list(_ENVELOPE)}")
        # 2. contiguous seq.
        got = obj["seq"]
        leaf = hashlib.sha256(b"\x00" + data).digest()
        prev = obj["prev"]
        if type(got) is not int or got != seq:  # not just ==: true == 1 in Python
            # A second seq N-1 that links where the first one did: the first was slipped in.
            inserted = got == seq - 1 and prev == self._before and leaf.hex() != self._prev
            if inserted and self._pending is None:
                raise VerificationError(seq - 1, _inserted(seq - 1))
            raise VerificationError(seq, _seq_problem(seq, got))
        # 3. the chain, deciding with one entry of hindsight which side of a break was altered.
        pending = self._pending
        if pending is not None:
            if prev == pending.leaf:
                raise VerificationError(
                    pending.seq - 1,
                    f"entry was altered: its hash no longer matches the prev of seq {pending.seq}",
                )
            raise VerificationError(
                pending.seq,
                f"prev does not link to seq {pending.seq - 1}: an entry was removed, inserted "
                "or rewritten here",
            )
        if prev != self._prev:
            if seq == 0:
                raise VerificationError(0, "the first entry's prev must be 64 zeros")
            if prev == self._before:
                # It links to the entry before the previous one, past it: that one was inserted.
                raise VerificationError(seq - 1, _inserted(seq - 1))
            # Verification fails at the next line whatever it holds; it only says where.
            self._pending = _Pending(seq, leaf.hex())
            self._size = seq + 1
            return
        kind = obj["kind"]
        if kind == "checkpoint":
            self._inline_checkpoint(seq, obj["body"])
        elif kind == "key":
            self._key_entry(seq, obj["body"])
        if self._kept is not None and self._kept.size == seq:
            self._check_kept()
        self._frontier.append_leaf(leaf)
        self._size = seq + 1
        self._before, self._prev = self._prev, leaf.hex()

    def feed_all(self, lines: Iterable[bytes], progress: Callable[[int], None] | None) -> None:
        """Feed many lines, telling ``progress(bytes_done)`` every 16,384 lines."""
        done = 0
        for count, line in enumerate(lines, 1):
            self.feed(line)
            done += len(line)
            if progress is not None and count & 0x3FFF == 0:
                progress(done)
        if progress is not None:
            progress(done)

    def feed_file(
        self,
        path: Path,
        progress: Callable[[int], None] | None = None,
        *,
        workers: int | None = None,
    ) -> None:
        """Feed a whole export file, as ``feed`` would line by line, in chunks (see the module).

        ``workers``: processes scanning chunks; 1 scans in this process, None decides by the
        file's size. ``progress(bytes_done)`` is told after every chunk.
        """
        kept = self._kept.size if self._kept is not None else -1
        with open(path, "rb", buffering=0) as file:
            status = os.fstat(file.fileno())
            if not stat.S_ISREG(status.st_mode):  # a pipe, say: no chunks, one line at a time
                self.feed_all(io.BufferedReader(file, 1 << 20), progress)
                return
            size = status.st_size
            count = _auto_workers(size) if workers is None else workers
            if count < 1:
                raise ValueError(f"workers: got {count}, want at least 1")
            step = max(1, CHUNK_BYTES)
            tasks = [
                (os.fsdecode(path), s, min(s + step, size), kept) for s in range(0, size, step)
            ]
            done = 0
            scans = _scanned(tasks, count)
            try:
                for start, end, items in scans:
                    if start != done:
                        raise OSError(f"{path} changed while it was being verified")
                    self._take(items, file, end)
                    done = end
                    if progress is not None:
                        progress(done)
            finally:
                scans.close()  # stops the workers at once when verification fails
        if progress is not None:
            progress(done)

    def _take(self, items: list[_Item], file: BinaryIO, end: int) -> None:
        """Apply one chunk's scan; from the first thing a run cannot cover, feed its lines."""
        for item in items:
            if isinstance(item, _Line):
                self.feed(item.data)
                continue
            if isinstance(item, _Run) and self._take_run(item):
                continue
            start = item.start
            for line in _read_lines(file, start, end):
                self.feed(line)
            return

    def _take_run(self, run: _Run) -> bool:
        """Append a run as ``feed`` would have, line by line, if that is certain; else False."""
        frontier = self._frontier
        seq = run.first_seq
        if (
            self._pending is not None
            or self._tail
            or type(seq) is not int
            or seq != self._size
            or frontier.size != seq
            or run.first_prev != self._prev
        ):
            return False
        levels = _subtree_levels(seq, seq + run.length)
        if len(levels) != len(run.hashes):  # cannot happen; if it did, feed would still be right
            return False
        for level, subtree in zip(levels, run.hashes, strict=True):
            frontier.append_subtree(level, subtree)
        self._size = seq + run.length
        self._before, self._prev = run.last_prev, run.last_leaf
        return True

    # -- checkpoints -----------------------------------------------------------------------

    def _inline_checkpoint(self, seq: int, body: Any) -> None:
        note = body.get("note") if isinstance(body, dict) else None
        if not isinstance(note, str):
            raise VerificationError(seq, "checkpoint entry has no note")
        checkpoint = self._open(seq, note)
        self._check_root(seq, checkpoint)
        self._last_checkpoint = checkpoint.size

    def _feed_checkpoint_line(self, data: bytes) -> None:
        seq = self._size
        self._settle_pending()
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise VerificationError(seq, "the closing checkpoint line is not JSON") from None
        note = obj.get("checkpoint") if isinstance(obj, dict) else None
        if not isinstance(note, str) or len(obj) != 1:
            raise VerificationError(seq, 'a checkpoint line is {"checkpoint": "<signed note>"}')
        checkpoint = self._open(seq, note, closing=True)
        self._check_root(seq, checkpoint, closing=True)
        self._tail.append(checkpoint)
        self._closing_note = note

    def _open(self, seq: int, note_text: str, *, closing: bool = False) -> Checkpoint:
        """5. Parse a checkpoint note, check its signature against the key for its size, and
        that it signs the tree of the entries before ``seq``."""
        where = "closing checkpoint" if closing else "checkpoint"
        try:
            note = parse_note(note_text)
            checkpoint = parse_checkpoint_body(note.text)
        except NoteError as exc:
            raise VerificationError(seq, f"malformed {where}: {exc}") from None
        self._check_origin(checkpoint.origin, seq)
        key = self._key_for(checkpoint.size)
        if key is None:
            raise VerificationError(seq, f"no key entry precedes this {where}")
        text = note.text.encode()
        for sig in note.signatures:
            if sig.name == key.verifier.name and sig.key_id == key.verifier.key_id:
                if not key.verifier.verify(text, sig.signature):
                    raise VerificationError(
                        seq, f"{where} signature by {key.verifier.vkey} does not verify (forged)"
                    )
                break
        else:
            known = {(k.verifier.name, k.verifier.key_id) for k in self._keys}
            known |= {(v.name, v.key_id) for v in self.trusted_keys}
            names = [f"{s.name}+{s.key_id.hex()}" for s in note.signatures]
            if any((s.name, s.key_id) in known for s in note.signatures):
                raise VerificationError(
                    seq,
                    f"{where} of size {checkpoint.size} is signed by {', '.join(names)}, outside "
                    f"that key's range; the ledger's key for this size is {key.verifier.vkey}",
                )
            raise VerificationError(seq, f"{where} is signed by unknown key {', '.join(names)}")
        if not key.anchored:
            raise VerificationError(
                key.seq,
                "key entry was never signed into a tree by the key before it; a key counts only "
                "after its predecessor vouches for it",
            )
        if checkpoint.size != seq:
            raise VerificationError(
                seq,
                f"the closing checkpoint signs size {checkpoint.size} but the export holds "
                f"{seq} entries"
                if closing
                else f"checkpoint entry signs size {checkpoint.size} but stands at seq {seq}",
            )
        if key.trusted:
            # A trusted signature over this tree vouches for every key entry inside it: every
            # one read so far, as the tree holds all the entries before seq.
            for other in self._keys:
                other.trusted = True
        self._checkpoints += 1
        if closing:
            self._tail_keys.append(key)
        return checkpoint

    def _check_root(self, seq: int, checkpoint: Checkpoint, *, closing: bool = False) -> None:
        """4. The root of everything before this point must be the signed one."""
        if self._frontier.root() != checkpoint.root:
            last = checkpoint.size - 1
            span = f"seq {self._last_checkpoint}..{last}"
            if closing:
                # Nothing follows the last entry to break the chain, and every link held: the
                # last entry is the one certain to differ from what was signed. The closing line
                # stands after it, where no entry is.
                raise VerificationError(
                    last,
                    f"entry was altered: the entries do not match the root the closing "
                    f"checkpoint signs for size {checkpoint.size}; this entry differs from the "
                    f"one signed (and if the chain was recomputed, so do those before it, back "
                    f"to one in {span})",
                )
            raise VerificationError(
                seq,
                f"the entries do not match the root signed for size {checkpoint.size}: an entry "
                f"in {span} was altered and the chain recomputed",
            )
        # Every key entry read so far is in this tree; one whose key signs only larger trees
        # has been vouched for by the key that signed this one.
        for key in self._keys:
            if not key.anchored and key.from_size > checkpoint.size:
                key.anchored = True

    def _check_origin(self, origin: str, seq: int | None) -> None:
        if self.origin is None:
            self.origin = origin
        elif origin != self.origin:
            raise VerificationError(seq, f"checkpoint origin {origin!r}, expected {self.origin!r}")

    # -- keys ------------------------------------------------------------------------------

    def _key_entry(self, seq: int, body: Any) -> None:
        if not isinstance(body, dict):
            raise VerificationError(seq, "key entry body must be an object")
        vkey, from_size = body.get("vkey"), body.get("from_size")
        if not isinstance(vkey, str) or type(from_size) is not int:
            raise VerificationError(seq, "key entry needs vkey (string) and from_size (integer)")
        try:
            verifier = NoteVerifier.from_vkey(vkey)
        except NoteError as exc:
            raise VerificationError(seq, f"key entry holds a bad verifier key: {exc}") from None
        trusted = any(v.vkey == verifier.vkey for v in self.trusted_keys)
        if not self._keys:
            if seq != 0 or from_size != 1:
                raise VerificationError(seq, "the first key entry must be seq 0, from size 1")
            self._keys.append(_Key(verifier, seq, from_size, trusted, anchored=True))
            return
        current = self._keys[-1]
        if body.get("previous") != current.verifier.vkey:
            raise VerificationError(seq, "key entry does not name the current key as previous")
        if from_size < seq + 2:
            raise VerificationError(
                seq, f"a new key may sign from size {seq + 2} at the earliest, not {from_size}"
            )
        self._keys.append(_Key(verifier, seq, from_size, trusted, anchored=False))

    def _key_for(self, size: int) -> _Key | None:
        found = None
        for key in self._keys:
            if key.from_size <= size:
                found = key
        return found

    # -- the kept checkpoint ---------------------------------------------------------------

    def _check_kept(self) -> None:
        """6. The export must hold the tree the auditor kept, unchanged."""
        kept, note = self._kept, self._kept_note
        assert kept is not None
        assert note is not None
        seq = kept.size
        self._verify_kept_signature(seq)
        if self._frontier.root() != kept.root:
            raise VerificationError(
                seq,
                f"the export is not consistent with the trusted checkpoint of size {kept.size}: "
                f"the entries before seq {seq} were rewritten",
            )
        self._kept_ok = True

    def _verify_kept_signature(self, seq: int) -> None:
        assert self._kept_note is not None
        assert self._kept is not None
        note = parse_note(self._kept_note)
        candidates = list(self.trusted_keys)
        key = self._key_for(self._kept.size)
        if key is not None:
            candidates.append(key.verifier)
        for sig in note.signatures:
            for verifier in candidates:
                same = sig.name == verifier.name and sig.key_id == verifier.key_id
                if same and verifier.verify(note.text.encode(), sig.signature):
                    return
        raise VerificationError(seq, "the trusted checkpoint's signature does not verify")

    # -- the end ---------------------------------------------------------------------------

    def _settle_pending(self) -> None:
        pending = self._pending
        if pending is not None:
            raise VerificationError(
                pending.seq - 1,
                f"entry was altered, or the prev of seq {pending.seq} was: their hashes differ",
            )

    def finish(self) -> VerifyResult:
        """Check what only the end can show and return the result."""
        self._settle_pending()
        if not self._tail:
            raise VerificationError(
                self._last_checkpoint,
                f"the export does not end with a checkpoint covering its {self._size} entries: "
                f"seq {self._last_checkpoint} onwards are unsigned (was it cut?)",
            )
        kept = self._kept
        if kept is not None and not self._kept_ok:
            if kept.size == self._size:
                self._check_kept()
            else:
                raise VerificationError(
                    self._size,
                    f"missing: the export ends after {self._size} entries but the trusted "
                    f"checkpoint covers {kept.size}: the tail was cut",
                )
        final = self._tail_keys[-1]
        if not final.trusted:
            raise VerificationError(
                self._size,
                f"the closing checkpoint is signed by {final.verifier.vkey}, which is neither a "
                "key you trust nor one a trusted key vouched for",
            )
        witnesses, witnessed_at = self._check_witnesses()
        return VerifyResult(
            size=self._size,
            root=self._tail[-1].root,
            checkpoints=self._checkpoints,
            keys=tuple(k.verifier.vkey for k in self._keys),
            final_key=final.verifier.vkey,
            anchored_at=kept.size if kept is not None else None,
            witnesses=witnesses,
            witnessed_at=witnessed_at,
        )

    def _check_witnesses(self) -> tuple[tuple[str, ...], int | None]:
        """7. ``min_witnesses`` of the witnesses cosigned the closing or the kept checkpoint."""
        want = self.min_witnesses
        if want < 1:
            return (), None
        closing, others = self._cosignatures(self._closing_note, self._size, "closing")
        if len(closing) >= want:
            return tuple(c.witness.vkey for c in closing), self._size
        kept = self._kept
        found = f"the closing checkpoint has {_count(closing)}"
        if kept is not None and self._kept_note is not None:
            at_kept, more = self._cosignatures(self._kept_note, kept.size, "trusted")
            if len(at_kept) >= want:
                return tuple(c.witness.vkey for c in at_kept), kept.size
            found += f", the trusted checkpoint {_count(at_kept)}"
            others += more
        # The log's own signatures are not worth naming among the ignored ones.
        logs = [*(k.verifier for k in self._keys), *self.trusted_keys]
        own = {f"{v.name}+{v.key_id.hex()}" for v in logs}
        unknown = [label for label in dict.fromkeys(others) if label not in own]
        ignored = (
            f"; ignored cosignatures by keys not given: {', '.join(unknown)}" if unknown else ""
        )
        raise VerificationError(
            self._size, f"not witnessed: want {want} witness cosignatures, {found}{ignored}"
        )

    def _cosignatures(self, note: str, seq: int, which: str) -> tuple[list[Cosignature], list[str]]:
        try:
            return verify_cosignatures(note, self.witnesses)
        except SignatureError as exc:
            raise VerificationError(seq, f"{which} checkpoint: {exc}") from None


def _seq_problem(expected: int, got: object) -> str:
    if type(got) is not int:
        return f"seq must be an integer, got {got!r}"
    if got > expected:
        return f"missing: the next line has seq {got} (entries deleted or swapped?)"
    return f"out of order: expected seq {expected}, got {got} (entries inserted or swapped?)"


def _inserted(seq: int) -> str:
    before = f"seq {seq - 1}" if seq else "the start of the log"
    return f"entry was inserted: the next entry links past it, to {before}"


def _count(found: list[Cosignature]) -> str:
    names = f" ({', '.join(c.witness.name for c in found)})" if found else ""
    return f"{len(found)}{names}"


def _read_keys(path: Path, parse: Callable[[str], _K]) -> list[_K]:
    """Parse each key line of a file (``#`` starts a comment); NoteError naming the line."""
    keys = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            try:
                keys.append(parse(line))
            except NoteError as exc:
                raise NoteError(f"{path}:{number}: {exc}") from None
    if not keys:
        raise NoteError(f"{path}: no verifier key in it (expected name+keyid+base64 lines)")
    return keys


def load_verifier_keys(path: Path) -> list[NoteVerifier]:
    """Read the log's verifier keys, one signed-note key line each, from a file."""
    return _read_keys(path, NoteVerifier.from_vkey)


def load_witness_keys(path: Path) -> list[CosignatureVerifier]:
    """Read witness verifier keys (type 0x04), one line each, from a file."""
    return _read_keys(path, CosignatureVerifier.from_vkey)


def verify_export(
    path: Path,
    keys: Sequence[NoteVerifier],
    *,
    trusted_checkpoint: str | None = None,
    witnesses: Sequence[CosignatureVerifier] = (),
    min_witnesses: int = 0,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> VerifyResult:
    """Verify an export file. Raises VerificationError (tampered) or LedgerError/OSError.

    ``min_witnesses`` of ``witnesses`` must have cosigned the closing checkpoint or the trusted
    one (ValueError if there are fewer distinct witnesses than that). ``workers`` processes scan
    the file's chunks (1: all in this process); by default files of ``PARALLEL_MIN_BYTES`` and
    more use up to ``MAX_AUTO_WORKERS``, one per CPU. The outcome, and on failure the seq and
    message, are the same whatever the number.
    """
    verifier = ExportVerifier(
        keys, trusted_checkpoint, witnesses=witnesses, min_witnesses=min_witnesses
    )
    verifier.feed_file(path, progress, workers=workers)
    return verifier.finish()


def _auto_workers(size: int) -> int:
    if size < PARALLEL_MIN_BYTES:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_AUTO_WORKERS))


# -- scanning chunks -------------------------------------------------------------------------


class _Run(NamedTuple):
    """Consecutive ordinary entries, each canonical, seq one more and prev the leaf of the one
    before; the first entry's seq and prev are for the verifier to check."""

    start: int  # file offset of the first entry's line
    first_seq: Any
    first_prev: Any
    last_prev: str
    last_leaf: str  # hex
    length: int
    hashes: list[bytes]  # the complete subtrees over [first_seq, first_seq + count), left to right


class _Line(NamedTuple):
    """A line for ``feed``: a checkpoint or key entry, the kept checkpoint's, a checkpoint line."""

    data: bytes


class _Stop(NamedTuple):
    """A line the scan found wrong: from it to the end of the chunk, ``feed`` decides."""

    start: int


_Item = _Run | _Line | _Stop


def _scan(lines: Iterable[bytes], offset: int, kept: int) -> list[_Item]:
    """Scan lines (without newlines; the first at file ``offset``) into runs, lines for ``feed``
    and at most one stop, which ends the scan. ``kept``: the kept checkpoint's size, or -1.

    Every check here is one ``feed`` makes on an ordinary entry with nothing pending; a run's
    hashes are built as in a compact range starting at its first seq.
    """
    items: list[_Item] = []
    leaf_seed, node_seed = _LEAF_SEED, _NODE_SEED
    envelope, prefix = _ENVELOPE, _CHECKPOINT_PREFIX
    pos = offset
    # The open run: its start, first seq and prev, hashes, next seq, last prev and leaf.
    start = -1
    first_seq: Any = None
    first_prev: Any = None
    hashes: list[bytes] = []
    seq = 0
    last_prev = last_leaf = ""
    for data in lines:
        here = pos
        pos += len(data) + 1
        if data.startswith(prefix):
            obj = None
        else:
            try:
                obj = check_canonical(data)
            except EntryError:
                break
            if type(obj) is not dict or tuple(obj) != envelope:
                break
            kind = obj["kind"]
            if kind == "checkpoint" or kind == "key" or obj["seq"] == kept:
                obj = None
        if obj is None:  # a line for feed
            if start >= 0:
                length = seq - first_seq
                items.append(
                    _Run(start, first_seq, first_prev, last_prev, last_leaf, length, hashes)
                )
                start = -1
            items.append(_Line(data))
            continue
        got, prev = obj["seq"], obj["prev"]
        if start < 0:
            if type(got) is not int or got < 0:
                break
            start, first_seq, first_prev, hashes, seq = here, got, prev, [], got
        elif type(got) is not int or got != seq or prev != last_leaf:
            break
        leaf = leaf_seed.copy()
        leaf.update(data)
        subtree = leaf.digest()
        last_prev, last_leaf = prev, subtree.hex()
        # Append to the compact range [first_seq, seq): merge with the left sibling while the
        # node is a right child whose sibling lies inside the range.
        index, level = seq, 0
        while index & 1 and (index - 1) << level >= first_seq:
            node = node_seed.copy()
            node.update(hashes.pop() + subtree)
            subtree = node.digest()
            index >>= 1
            level += 1
        hashes.append(subtree)
        seq += 1
    else:
        here = -1
    if start >= 0:
        length = seq - first_seq
        items.append(_Run(start, first_seq, first_prev, last_prev, last_leaf, length, hashes))
    if here >= 0:
        items.append(_Stop(here))
    return items


def _subtree_levels(begin: int, end: int) -> list[int]:
    """Levels of the maximal aligned complete subtrees covering leaves [begin, end), in order:
    at each point the largest subtree that starts there (aligned) and fits."""
    levels = []
    while begin < end:
        level = (end - begin).bit_length() - 1
        if begin:
            level = min(level, (begin & -begin).bit_length() - 1)
        levels.append(level)
        begin += 1 << level
    return levels


def _scan_chunk(task: tuple[str, int, int, int]) -> tuple[int, int, list[_Item]]:
    """Scan the lines that start in [start, stop) of the file (in a worker, or here).

    Returns where those lines start and end in the file, and the scan.
    """
    path, start, stop, kept = task
    with open(path, "rb", buffering=0) as file:
        first = _line_start(file, start)
        end = _line_start(file, stop) if first < stop else first
        return first, end, _scan(_read_lines(file, first, end), first, kept)


def _line_start(file: BinaryIO, offset: int) -> int:
    """The first offset at or after ``offset`` where a line starts (or the end of the file).

    A line starts at 0 and after every newline, so chunks cut where lines start share no line
    and miss none, however long the lines are.
    """
    if offset == 0:
        return 0
    offset -= 1
    file.seek(offset)
    while block := file.read(_BLOCK):
        found = block.find(b"\n")
        if found >= 0:
            return offset + found + 1
        offset += len(block)
    return offset


def _read_lines(file: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    """The lines in bytes [start, end) of the file (cut where lines start), without newlines,
    as iterating over the file in binary mode would give them."""
    file.seek(start)
    left = end - start
    unfinished: list[bytes] = []  # the pieces of a line read so far (kept apart: lines may be long)
    while left > 0:
        block = file.read(min(_BLOCK, left))
        if not block:
            raise OSError(f"{file.name} changed while it was being verified")
        left -= len(block)
        cut = block.rfind(b"\n")
        if cut < 0:
            unfinished.append(block)
            continue
        if unfinished:
            unfinished.append(block[:cut])
            yield from b"".join(unfinished).split(b"\n")
        else:
            yield from block[:cut].split(b"\n")
        unfinished = [block[cut + 1 :]]
    last = b"".join(unfinished)
    if last:
        yield last


def _start_method() -> str:
    """fork where it is safe and cheap: on Linux, in a process with no other thread (a forked
    child gets copies of locks other threads may hold). Otherwise a fresh interpreter."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and sys.platform.startswith("linux") and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def _scanned(
    tasks: list[tuple[str, int, int, int]], workers: int
) -> Generator[tuple[int, int, list[_Item]], None, None]:
    """Scan the chunks in file order, here or in ``workers`` processes a few chunks ahead.

    Closing the generator (verification failed) cancels the chunks not started and waits only
    for those being scanned. Should a worker die, the remaining chunks are scanned here.
    """
    if workers <= 1 or len(tasks) <= 1 or multiprocessing.current_process().daemon:
        # (A daemonic process, such as a pool's worker, may not start processes.)
        for task in tasks:
            yield _scan_chunk(task)
        return
    context = multiprocessing.get_context(_start_method())
    pool = ProcessPoolExecutor(workers, mp_context=context)
    try:
        ahead: deque[Future[tuple[int, int, list[_Item]]]] = deque()
        done = submitted = 0
        while done < len(tasks):
            try:
                while submitted < len(tasks) and len(ahead) < 2 * workers + 2:
                    ahead.append(pool.submit(_scan_chunk, tasks[submitted]))
                    submitted += 1
                result = ahead.popleft().result()
            except BrokenProcessPool:
                break
            done += 1
            yield result
        # Only after a worker died (killed, out of memory): scan what is left here.
        for task in tasks[done:]:
            yield _scan_chunk(task)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
