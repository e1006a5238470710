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

Without a kept checkpoint the result says the tail is unanchored: a signer could have cut it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ledger.checkpoint import Checkpoint, parse_checkpoint_body
from ledger.compact import CompactRange
from ledger.entry import GENESIS_PREV, check_canonical
from ledger.errors import EntryError, NoteError, VerificationError
from ledger.note import NoteVerifier, parse_note

__all__ = ["ExportVerifier", "VerifyResult", "load_verifier_keys", "verify_export"]

_ENVELOPE = ("actor", "body", "kind", "prev", "seq", "subject", "time")
_CHECKPOINT_PREFIX = b'{"checkpoint":'


@dataclass(frozen=True)
class VerifyResult:
    """What a successful verification established."""

    size: int
    root: bytes
    checkpoints: int
    keys: tuple[str, ...]
    final_key: str
    anchored_at: int | None  # size of the trusted checkpoint the export was checked against

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
        }


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
    _frontier: CompactRange = field(default_factory=CompactRange)
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

    def __post_init__(self) -> None:
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
        if got != seq:
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

    # -- checkpoints -----------------------------------------------------------------------

    def _inline_checkpoint(self, seq: int, body: Any) -> None:
        note = body.get("note") if isinstance(body, dict) else None
        if not isinstance(note, str):
            raise VerificationError(seq, "checkpoint entry has no note")
        checkpoint = self._open(seq, note)
        if checkpoint.size != seq:
            raise VerificationError(
                seq, f"checkpoint entry signs size {checkpoint.size} but stands at seq {seq}"
            )
        self._check_root(seq, checkpoint, f"seq {self._last_checkpoint}..{seq - 1}")
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
        if checkpoint.size != self._size:
            raise VerificationError(
                seq,
                f"the closing checkpoint signs size {checkpoint.size} but the export holds "
                f"{self._size} entries",
            )
        self._check_root(seq, checkpoint, f"seq {self._last_checkpoint}..{seq - 1}")
        self._tail.append(checkpoint)

    def _open(self, seq: int, note_text: str, *, closing: bool = False) -> Checkpoint:
        """5. Parse a checkpoint note and check its signature against the key for its size."""
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
        if key.trusted:
            # A trusted signature over this tree vouches for every key entry inside it.
            for other in self._keys:
                if other.seq < checkpoint.size:
                    other.trusted = True
        self._checkpoints += 1
        if closing:
            self._tail_keys.append(key)
        return checkpoint

    def _check_root(self, seq: int, checkpoint: Checkpoint, span: str) -> None:
        """4. The root of everything before this point must be the signed one."""
        if self._frontier.root() != checkpoint.root:
            raise VerificationError(
                seq,
                f"the entries do not match the root signed for size {checkpoint.size}: an entry "
                f"in {span} was altered and the chain recomputed",
            )
        for key in self._keys:
            if not key.anchored and key.seq < checkpoint.size and key.from_size > checkpoint.size:
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
        return VerifyResult(
            size=self._size,
            root=self._tail[-1].root,
            checkpoints=self._checkpoints,
            keys=tuple(k.verifier.vkey for k in self._keys),
            final_key=final.verifier.vkey,
            anchored_at=kept.size if kept is not None else None,
        )


def _seq_problem(expected: int, got: object) -> str:
    if type(got) is not int:
        return f"seq must be an integer, got {got!r}"
    if got > expected:
        return f"missing: the next line has seq {got} (entries deleted or swapped?)"
    return f"out of order: expected seq {expected}, got {got} (entries inserted or swapped?)"


def _inserted(seq: int) -> str:
    before = f"seq {seq - 1}" if seq else "the start of the log"
    return f"entry was inserted: the next entry links past it, to {before}"


def load_verifier_keys(path: Path) -> list[NoteVerifier]:
    """Read verifier keys, one signed-note key line each, from a file (``#`` starts a comment)."""
    keys = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            try:
                keys.append(NoteVerifier.from_vkey(line))
            except NoteError as exc:
                raise NoteError(f"{path}:{number}: {exc}") from None
    if not keys:
        raise NoteError(f"{path}: no verifier key in it (expected name+keyid+base64 lines)")
    return keys


def verify_export(
    path: Path,
    keys: Sequence[NoteVerifier],
    *,
    trusted_checkpoint: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> VerifyResult:
    """Verify an export file. Raises VerificationError (tampered) or LedgerError/OSError."""
    verifier = ExportVerifier(keys, trusted_checkpoint)
    with path.open("rb", buffering=1 << 20) as lines:
        verifier.feed_all(lines, progress)
    return verifier.finish()
