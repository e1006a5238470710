"""C2SP transparency-log checkpoints (https://c2sp.org/tlog-checkpoint) as signed notes.

A checkpoint body is three lines, then optional extension lines::

    <origin>
    <tree size in decimal>
    <base64 of the 32-byte RFC 6962 root hash>

Extension lines are accepted and exposed when parsing but never signed here: the spec does not
recommend them, as monitors cannot audit them.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ledger.errors import NoteError
from ledger.note import NoteSigner, NoteVerifier, open_note

__all__ = [
    "Checkpoint",
    "open_checkpoint",
    "parse_checkpoint_body",
    "sign_checkpoint",
]

_ROOT_SIZE = 32
# Tree sizes are uint64 in every tlog implementation (Go's checkpoint parser included).
_MAX_SIZE = (1 << 64) - 1
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_CONTROL = re.compile(r"[\x00-\x1f]")


def _check_line(line: str, what: str) -> None:
    if not line:
        raise NoteError(f"checkpoint {what} is empty; want a non-empty line")
    bad = _CONTROL.search(line)
    if bad:
        raise NoteError(f"checkpoint {what} contains control character {bad.group()!r}; want none")


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: who issued it (``origin``), its ``size`` and its Merkle ``root``.

    Construction validates every field (NoteError), so a Checkpoint always has a valid body.
    """

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "origin")
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise NoteError(f"checkpoint size is {type(self.size).__name__}; want int")
        if not 0 <= self.size <= _MAX_SIZE:
            raise NoteError(f"checkpoint size is {self.size}; want 0 to {_MAX_SIZE}")
        if len(self.root) != _ROOT_SIZE:
            raise NoteError(f"checkpoint root is {len(self.root)} bytes; want {_ROOT_SIZE}")
        for line in self.extensions:
            _check_line(line, "extension line")

    def body(self) -> str:
        """Return the note text of this checkpoint, extension lines included."""
        root = base64.b64encode(self.root).decode("ascii")
        return "".join(
            f"{line}\n" for line in (self.origin, str(self.size), root, *self.extensions)
        )


def parse_checkpoint_body(text: str) -> Checkpoint:
    """Parse the text of a checkpoint note. Raises NoteError (got/want) if it is malformed."""
    if not text.endswith("\n"):
        raise NoteError("checkpoint does not end in a newline; want '\\n' after the last line")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError(f"checkpoint has {len(lines)} lines; want at least 3")
    origin, size_text, root_text, *extensions = lines
    if not _DECIMAL.fullmatch(size_text):
        raise NoteError(
            f"checkpoint size is {size_text!r}; want decimal digits without leading zeros"
        )
    try:
        root = base64.b64decode(root_text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NoteError(f"checkpoint root {root_text!r} is not valid base64: {exc}") from exc
    # Canonical only, so one root has exactly one spelling.
    if base64.b64encode(root).decode("ascii") != root_text:
        raise NoteError(f"checkpoint root {root_text!r} is not canonical padded base64")
    return Checkpoint(origin=origin, size=int(size_text), root=root, extensions=tuple(extensions))


def sign_checkpoint(cp: Checkpoint, signer: NoteSigner) -> str:
    """Return ``cp`` as a note signed by ``signer``. Refuses (NoteError) extension lines."""
    if cp.extensions:
        raise NoteError(
            f"checkpoint has {len(cp.extensions)} extension lines; want none (never signed here)"
        )
    return signer.sign(cp.body())


def open_checkpoint(
    note: str, verifiers: Iterable[NoteVerifier], origin: str | None = None
) -> tuple[Checkpoint, NoteVerifier]:
    """Verify a checkpoint note and return its checkpoint and the first verifier that signed it.

    1. Verify the note against ``verifiers`` (``open_note``: NoteError if malformed,
       SignatureError if forged or signed by no trusted key).
    2. Parse its text as a checkpoint body (NoteError).
    3. If ``origin`` is given, require the body's origin to equal it (NoteError).
    """
    # 1. Verify.
    parsed, verified = open_note(note, verifiers)
    # 2. Parse.
    cp = parse_checkpoint_body(parsed.text)
    # 3. Origin.
    if origin is not None and cp.origin != origin:
        raise NoteError(f"checkpoint origin is {cp.origin!r}; want {origin!r}")
    return cp, verified[0]
