"""Witness cosignatures (C2SP tlog-cosignature, https://c2sp.org/tlog-cosignature), Ed25519.

A witness that has checked a checkpoint against the last one it saw (a consistency proof: the
log was only appended to) adds its own signature line to the checkpoint note. Anyone who trusts
the witness then knows the log showed that witness this tree, so the log cannot show a different
history to someone else without one of the two catching it. The line is an ordinary signed-note
signature, so verifiers that do not know the witness ignore it::

    — <witness name> <base64(key id (4) || timestamp (8, big-endian) || Ed25519 signature (64))>

The key id is SHA-256(name || 0x0A || 0x04 || public key)[:4], the 0x04 marking a cosignature
key, and the witness's verifier key is ``<name>+<key id hex>+<base64(0x04 || public key)>``. The
signed message is two lines, then the checkpoint's note text (its body, without signatures)::

    cosignature/v1
    time <timestamp in decimal, seconds since the epoch>
    <origin>
    <size>
    <root>

Private keys are written as Go's ``PRIVATE+KEY+<name>+<key id hex>+<base64(0x04 || seed)>``, the
form ``NewSignerForCosignatureV1`` of golang.org/x/mod and transparency-dev/formats reads.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ledger.errors import NoteError, SignatureError
from ledger.note import Note, key_id, parse_note, parse_vkey, vkey_from_public_key

__all__ = [
    "SIGNATURE_TYPE_COSIGNATURE_V1",
    "Cosignature",
    "CosignatureVerifier",
    "Cosigner",
    "add_cosignature",
    "cosigned_message",
    "open_cosignature",
    "verify_cosignatures",
]

SIGNATURE_TYPE_COSIGNATURE_V1 = 0x04
_SIG_PREFIX = "— "  # as in a signed note: U+2014 EM DASH, then a space
_TIMESTAMP = struct.Struct(">Q")
_SIGNATURE_SIZE = 64
# The spec: a timestamp "MUST NOT exceed 2^63 - 1".
_MAX_TIMESTAMP = (1 << 63) - 1
_SEED_SIZE = 32
_SKEY_PREFIX = "PRIVATE+KEY+"


def cosigned_message(text: str, timestamp: int) -> bytes:
    """The bytes a witness signs: the cosignature/v1 header, the time, then the note text."""
    if not 0 <= timestamp <= _MAX_TIMESTAMP:
        raise NoteError(f"cosignature time is {timestamp}; want 0 to {_MAX_TIMESTAMP}")
    return f"cosignature/v1\ntime {timestamp}\n{text}".encode()


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class Cosigner:
    """A witness's signing key: cosigns checkpoint notes it has checked."""

    __slots__ = ("_private_key", "key_id", "name", "vkey")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        """Bind ``private_key`` to the witness name ``name`` (NoteError if the name is invalid)."""
        public = _raw(private_key.public_key())
        self.name: str = name
        self.key_id: bytes = key_id(name, public, SIGNATURE_TYPE_COSIGNATURE_V1)
        self.vkey: str = vkey_from_public_key(name, public, SIGNATURE_TYPE_COSIGNATURE_V1)
        self._private_key = private_key

    @classmethod
    def from_skey(cls, skey: str) -> Cosigner:
        """Parse ``PRIVATE+KEY+<name>+<key id hex>+<base64(0x04 || 32-byte seed)>``.

        Raises NoteError if it is malformed or its key id does not match its name and key. The
        message never repeats the key.
        """
        if not skey.startswith(_SKEY_PREFIX):
            raise NoteError("witness key does not start with PRIVATE+KEY+")
        parts = skey[len(_SKEY_PREFIX) :].split("+", 2)
        if len(parts) != 3:
            raise NoteError("witness key has no PRIVATE+KEY+<name>+<key id>+<key> parts")
        name, hex_id, encoded = parts
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise NoteError("witness key is not valid base64") from None
        if len(raw) != 1 + _SEED_SIZE or raw[0] != SIGNATURE_TYPE_COSIGNATURE_V1:
            raise NoteError(
                f"witness key is not a 0x{SIGNATURE_TYPE_COSIGNATURE_V1:02x} (Ed25519 "
                f"cosignature/v1) key of {_SEED_SIZE} bytes"
            )
        cosigner = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if cosigner.key_id.hex() != hex_id:
            raise NoteError(f"witness key id is {hex_id!r}; want {cosigner.key_id.hex()}")
        return cosigner

    def __repr__(self) -> str:
        return f"Cosigner({self.vkey!r})"

    def skey(self) -> str:
        """The private key as one line, for the witness's key file (keep it secret)."""
        seed = self._private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        encoded = base64.b64encode(bytes([SIGNATURE_TYPE_COSIGNATURE_V1]) + seed).decode()
        return f"{_SKEY_PREFIX}{self.name}+{self.key_id.hex()}+{encoded}"

    def cosign(self, text: str, timestamp: int) -> str:
        """Return the signature line (without newline) cosigning the note text ``text`` at
        ``timestamp`` (seconds since the epoch). Check the checkpoint before calling this."""
        signature = self._private_key.sign(cosigned_message(text, timestamp))
        blob = self.key_id + _TIMESTAMP.pack(timestamp) + signature
        return f"{_SIG_PREFIX}{self.name} {base64.b64encode(blob).decode('ascii')}"


class CosignatureVerifier:
    """Verifies cosignatures by one witness key."""

    __slots__ = ("_public_key", "key_id", "name", "vkey")

    def __init__(self, name: str, public_key: Ed25519PublicKey) -> None:
        """Bind ``public_key`` to the witness name ``name`` (NoteError if the name is invalid)."""
        public = _raw(public_key)
        self.name: str = name
        self.key_id: bytes = key_id(name, public, SIGNATURE_TYPE_COSIGNATURE_V1)
        self.vkey: str = vkey_from_public_key(name, public, SIGNATURE_TYPE_COSIGNATURE_V1)
        self._public_key = public_key

    @classmethod
    def from_vkey(cls, vkey: str) -> CosignatureVerifier:
        """Parse a witness verifier key ``<name>+<key id hex>+<base64(0x04 || key)>``.

        Raises NoteError if it is malformed, not of type 0x04, or its key id does not match.
        """
        name, public = parse_vkey(vkey, SIGNATURE_TYPE_COSIGNATURE_V1)
        return cls(name, Ed25519PublicKey.from_public_bytes(public))

    def __repr__(self) -> str:
        return f"CosignatureVerifier.from_vkey({self.vkey!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CosignatureVerifier) and other.vkey == self.vkey

    def __hash__(self) -> int:
        return hash(self.vkey)

    def verify(self, text: str, signature: bytes) -> int | None:
        """The timestamp of ``signature`` (without the key id) if it is this witness's
        cosignature of the note text ``text``; None if it is not."""
        if len(signature) != _TIMESTAMP.size + _SIGNATURE_SIZE:
            return None
        (timestamp,) = _TIMESTAMP.unpack_from(signature)
        if timestamp > _MAX_TIMESTAMP:
            return None
        try:
            self._public_key.verify(signature[_TIMESTAMP.size :], cosigned_message(text, timestamp))
        except InvalidSignature:
            return None
        return int(timestamp)


@dataclass(frozen=True)
class Cosignature:
    """A verified cosignature: which witness, and when it says it cosigned."""

    witness: CosignatureVerifier
    timestamp: int


def _cosignatures(
    note: Note, witnesses: Iterable[CosignatureVerifier]
) -> tuple[list[Cosignature], list[str]]:
    """The valid cosignatures in ``note`` by ``witnesses`` (each witness once, in signature
    order) and the labels of the signature lines by other keys.

    A line with a given witness's name and key id that does not verify raises SignatureError:
    someone forged it, or altered the checkpoint after the witness signed it.
    """
    known = {(w.name, w.key_id): w for w in witnesses}
    found: dict[CosignatureVerifier, Cosignature] = {}
    others: list[str] = []
    for sig in note.signatures:
        witness = known.get((sig.name, sig.key_id))
        if witness is None:
            others.append(f"{sig.name}+{sig.key_id.hex()}")
            continue
        timestamp = witness.verify(note.text, sig.signature)
        if timestamp is None:
            raise SignatureError(
                f"cosignature by {witness.vkey} does not verify: forged, or the checkpoint was "
                "altered after the witness signed it"
            )
        found.setdefault(witness, Cosignature(witness, timestamp))
    return list(found.values()), others


def verify_cosignatures(
    note: str, witnesses: Iterable[CosignatureVerifier]
) -> tuple[list[Cosignature], list[str]]:
    """Check the cosignatures on a checkpoint note against the ``witnesses`` one trusts.

    Returns the valid cosignatures, one per witness in signature order, and the labels
    (``name+keyid``) of signature lines by keys not among ``witnesses`` (the log's own among
    them), which are ignored as the signed-note spec requires. Raises NoteError if the note is
    malformed and SignatureError if a line by one of ``witnesses`` does not verify. Verify the
    log's signature separately (``ledger.checkpoint.open_checkpoint``).
    """
    return _cosignatures(parse_note(note), witnesses)


def open_cosignature(note: str, line: str, witnesses: Iterable[CosignatureVerifier]) -> Cosignature:
    """Verify one cosignature ``line`` (``— <name> <base64>``) over the text of ``note``.

    For a log taking cosignatures from its witnesses: raises NoteError if the line is
    malformed, SignatureError if it is by none of ``witnesses`` or does not verify.
    """
    if "\n" in line:
        raise NoteError("a cosignature is one line; want '— <name> <base64>' without newlines")
    text = parse_note(note).text
    found, others = _cosignatures(parse_note(f"{text}\n{line}\n"), witnesses)
    if not found:
        raise SignatureError(f"cosignature by {', '.join(others)}, which is not a known witness")
    return found[0]


def add_cosignature(note: str, line: str) -> str:
    """Return ``note`` with the signature ``line`` added, replacing an earlier line by the same
    key (same name and key id), so a note holds one cosignature per witness, the latest.

    Verify the line first (``open_cosignature``). Raises NoteError if the note is malformed or
    the result would be (over 100 signatures or 1 MiB).
    """
    parsed = parse_note(note)
    new = parse_note(f"{parsed.text}\n{line}\n").signatures[0]
    lines = note[len(parsed.text) + 1 : -1].split("\n")
    kept = [
        old
        for old, sig in zip(lines, parsed.signatures, strict=True)
        if (sig.name, sig.key_id) != (new.name, new.key_id)
    ]
    result = parsed.text + "\n" + "".join(f"{x}\n" for x in (*kept, line))
    parse_note(result)
    return result
