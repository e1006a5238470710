"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys.

The format is the one of ``golang.org/x/mod/sumdb/note``, so notes signed here open with Go's
``note.Open`` and the reverse::

    <text ending in a newline>
    <blank line>
    — <key name> <base64(4-byte key id || Ed25519 signature over the text)>

A key is identified by its name and a 4-byte key id, the first four bytes of
SHA-256(name || 0x0A || 0x01 || public key). Verifier keys are published as
``<name>+<key id in hex>+<base64(0x01 || public key)>``. The byte 0x01 is the signature type
(Ed25519); other types put another byte in both places (witness cosignatures use 0x04, see
``ledger.cosignature``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ledger.errors import NoteError, SignatureError

__all__ = [
    "SIGNATURE_TYPE_ED25519",
    "Note",
    "NoteSigner",
    "NoteVerifier",
    "Signature",
    "key_id",
    "open_note",
    "parse_note",
    "parse_vkey",
    "vkey_from_public_key",
]

SIGNATURE_TYPE_ED25519 = 0x01
_PUBLIC_KEY_SIZE = 32
_KEY_ID_SIZE = 4
_SIG_PREFIX = "— "  # U+2014 EM DASH, then a space
# Bounds on work done for an untrusted note. The spec asks verifiers to accept at least 16
# signatures; 100 is the limit Go's note.Open applies.
_MAX_NOTE_BYTES = 1 << 20
_MAX_SIGNATURES = 100
# The spec's "ASCII control characters (those below U+0020) other than newline".
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_HEX_KEY_ID = re.compile(r"[0-9a-f]{8}")


def _check_name(name: str) -> None:
    """Raise NoteError unless ``name`` is a valid key name."""
    if not name:
        raise NoteError("key name is empty; want a non-empty name such as example.com/log")
    if "+" in name or any(ch.isspace() for ch in name) or _CONTROL.search(name):
        raise NoteError(
            f"key name {name!r} is malformed; want no '+', whitespace or control characters"
        )
    _utf8(name, "key name")


def _utf8(text: str, what: str) -> bytes:
    """Encode ``text`` as UTF-8, refusing lone surrogates (they are not valid UTF-8)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NoteError(f"{what} is not valid UTF-8: {exc.reason} at {exc.start}") from exc


def _check_text(text: str) -> None:
    """Raise NoteError unless ``text`` may be the text of a note."""
    if not text.endswith("\n"):
        raise NoteError("note text does not end in a newline; want text ending in '\\n'")
    bad = _CONTROL.search(text)
    if bad:
        raise NoteError(
            f"note text contains control character {bad.group()!r} at {bad.start()}; "
            "want none other than '\\n'"
        )


def _b64decode(data: str, what: str) -> bytes:
    """Decode standard, padded base64, accepting only the canonical encoding.

    Canonical only, so one byte string has exactly one spelling in a note: a flipped bit in the
    text always changes the bytes.
    """
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NoteError(f"{what} is not valid base64: {exc}") from exc
    if base64.b64encode(raw).decode("ascii") != data:
        raise NoteError(f"{what} is not canonical padded base64")
    return raw


def key_id(
    name: str, public_key_bytes: bytes, signature_type: int = SIGNATURE_TYPE_ED25519
) -> bytes:
    """Return the 4-byte key id of the Ed25519 ``public_key_bytes`` (32 bytes) named ``name``.

    key id = SHA-256(name || 0x0A || signature type || public key)[:4]
    """
    _check_name(name)
    if len(public_key_bytes) != _PUBLIC_KEY_SIZE:
        raise NoteError(
            f"Ed25519 public key is {len(public_key_bytes)} bytes; want {_PUBLIC_KEY_SIZE}"
        )
    digest = hashlib.sha256(
        name.encode("utf-8") + b"\n" + bytes([signature_type]) + public_key_bytes
    ).digest()
    return digest[:_KEY_ID_SIZE]


def vkey_from_public_key(
    name: str, public_key_bytes: bytes, signature_type: int = SIGNATURE_TYPE_ED25519
) -> str:
    """Return the verifier key ``<name>+<key id hex>+<base64(signature type || public key)>``."""
    kid = key_id(name, public_key_bytes, signature_type)
    encoded = base64.b64encode(bytes([signature_type]) + public_key_bytes).decode("ascii")
    return f"{name}+{kid.hex()}+{encoded}"


def parse_vkey(vkey: str, signature_type: int = SIGNATURE_TYPE_ED25519) -> tuple[str, bytes]:
    """Split a verifier key ``<name>+<8 lowercase hex key id>+<base64(type || key)>``.

    Returns the name and the 32-byte Ed25519 public key. Raises NoteError if any part is
    malformed, the signature type is not ``signature_type``, or the key id does not match the
    name, type and key (without that check a vkey could pair a trusted name and id with an
    attacker's key).
    """
    parts = vkey.split("+", 2)  # base64 may itself contain '+'
    if len(parts) != 3:
        raise NoteError(
            f"verifier key has {len(parts)} '+'-separated parts; want 3 (name+keyid+key)"
        )
    name, hex_id, encoded = parts
    _check_name(name)
    if not _HEX_KEY_ID.fullmatch(hex_id):
        raise NoteError(f"verifier key id {hex_id!r} is not 8 lowercase hex digits")
    key = _b64decode(encoded, "verifier key")
    if not key or key[0] != signature_type:
        got = f"0x{key[0]:02x}" if key else "nothing"
        raise NoteError(f"verifier key algorithm is {got}; want 0x{signature_type:02x}")
    if len(key) != 1 + _PUBLIC_KEY_SIZE:
        raise NoteError(f"verifier key is {len(key)} bytes; want {1 + _PUBLIC_KEY_SIZE}")
    public = key[1:]
    want = key_id(name, public, signature_type).hex()
    if want != hex_id:
        raise NoteError(
            f"verifier key id is {hex_id}; want {want} (computed from the name and key)"
        )
    return name, public


def _raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class NoteSigner:
    """Signs note texts with one named Ed25519 key."""

    __slots__ = ("_private_key", "key_id", "name", "vkey")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        """Bind ``private_key`` to the key name ``name`` (NoteError if the name is invalid)."""
        public = _raw_public_key(private_key.public_key())
        self.name: str = name
        self.key_id: bytes = key_id(name, public)
        self.vkey: str = vkey_from_public_key(name, public)
        self._private_key = private_key

    def __repr__(self) -> str:
        return f"NoteSigner({self.vkey!r})"

    def sign(self, text: str) -> str:
        """Return the signed note: ``text``, a blank line, then this key's signature line.

        ``text`` must end in a newline and contain no control characters other than newline.
        """
        _check_text(text)
        message = _utf8(text, "note text")
        blob = self.key_id + self._private_key.sign(message)
        note = f"{text}\n{_SIG_PREFIX}{self.name} {base64.b64encode(blob).decode('ascii')}\n"
        # Never produce a note that parse_note would refuse.
        if len(note.encode("utf-8")) > _MAX_NOTE_BYTES:
            raise NoteError(f"signed note would exceed {_MAX_NOTE_BYTES} bytes")
        return note


class NoteVerifier:
    """Verifies signatures by one named Ed25519 public key."""

    __slots__ = ("_public_key", "key_id", "name", "vkey")

    def __init__(self, name: str, public_key: Ed25519PublicKey) -> None:
        """Bind ``public_key`` to the key name ``name`` (NoteError if the name is invalid)."""
        public = _raw_public_key(public_key)
        self.name: str = name
        self.key_id: bytes = key_id(name, public)
        self.vkey: str = vkey_from_public_key(name, public)
        self._public_key = public_key

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parse a verifier key ``<name>+<8 lowercase hex key id>+<base64(0x01 || key)>``.

        Raises NoteError if any part is malformed, the algorithm is not Ed25519, or the key id
        does not match the name and key (``parse_vkey``).
        """
        name, public = parse_vkey(vkey)
        return cls(name, Ed25519PublicKey.from_public_bytes(public))

    def __repr__(self) -> str:
        return f"NoteVerifier.from_vkey({self.vkey!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NoteVerifier) and other.vkey == self.vkey

    def __hash__(self) -> int:
        return hash(self.vkey)

    def verify(self, text: bytes, signature: bytes) -> bool:
        """Report whether ``signature`` (without the key id) is this key's signature of ``text``."""
        try:
            self._public_key.verify(signature, text)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class Signature:
    """One signature line of a note, verified or not; ``signature`` excludes the key id."""

    name: str
    key_id: bytes
    signature: bytes


@dataclass(frozen=True)
class Note:
    """A parsed note: its text (with the final newline) and its signatures in order."""

    text: str
    signatures: tuple[Signature, ...]


def _parse_signature_line(line: str) -> Signature:
    if not line.startswith(_SIG_PREFIX):
        raise NoteError(f"signature line {line[:40]!r} does not start with '{_SIG_PREFIX}'")
    name, sep, encoded = line[len(_SIG_PREFIX) :].partition(" ")
    if not sep or not encoded:
        raise NoteError(f"signature line {line[:40]!r} has no signature; want '— <name> <b64>'")
    _check_name(name)
    blob = _b64decode(encoded, f"signature by {name}")
    # A key id and at least one byte of signature, as Go requires.
    if len(blob) <= _KEY_ID_SIZE:
        raise NoteError(
            f"signature by {name} is {len(blob)} bytes; want a {_KEY_ID_SIZE}-byte key id "
            "and a signature"
        )
    return Signature(name=name, key_id=blob[:_KEY_ID_SIZE], signature=blob[_KEY_ID_SIZE:])


def parse_note(note: str) -> Note:
    """Parse a signed note without verifying it. Raises NoteError if it is malformed.

    Never act on the text of a note returned by this function: use ``open_note``.
    """
    # Length in characters bounds the UTF-8 length from below, so huge input is cheap to refuse.
    if len(note) > _MAX_NOTE_BYTES or len(_utf8(note, "note")) > _MAX_NOTE_BYTES:
        raise NoteError(f"note is over {_MAX_NOTE_BYTES} bytes")
    bad = _CONTROL.search(note)
    if bad:
        raise NoteError(
            f"note contains control character {bad.group()!r} at {bad.start()}; "
            "want none other than '\\n'"
        )
    # The text is separated from the signatures by the last blank line.
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block:
        raise NoteError("note has no signatures after its blank line")
    if not block.endswith("\n"):
        raise NoteError("note's last signature line does not end in a newline")
    lines = block[:-1].split("\n")
    if len(lines) > _MAX_SIGNATURES:
        raise NoteError(f"note has {len(lines)} signatures; want at most {_MAX_SIGNATURES}")
    return Note(text=text, signatures=tuple(_parse_signature_line(line) for line in lines))


def _key_label(name: str, kid: bytes) -> str:
    return f"{name}+{kid.hex()}"


def open_note(note: str, verifiers: Iterable[NoteVerifier]) -> tuple[Note, list[NoteVerifier]]:
    """Parse ``note`` and verify its signatures against the trusted ``verifiers``.

    1. Parse the note (NoteError if malformed).
    2. Match each signature to a trusted key by name and key id; signatures by other keys are
       ignored, as the spec requires.
    3. Verify every matched signature; any that fails raises SignatureError (a forgery).
    4. Require at least one verified signature, else SignatureError naming the keys that did
       sign.

    Returns the note and the verifiers whose signatures verified, in signature order, each once.
    Two different trusted keys sharing a name and key id are refused (NoteError): a signature
    could not say which of them made it.
    """
    known: dict[tuple[str, bytes], NoteVerifier] = {}
    for verifier in verifiers:
        slot = (verifier.name, verifier.key_id)
        if known.setdefault(slot, verifier) != verifier:
            raise NoteError(
                f"ambiguous verifier keys: {known[slot].vkey} and {verifier.vkey} share "
                f"{_key_label(*slot)}"
            )

    # 1. Parse.
    parsed = parse_note(note)
    message = parsed.text.encode("utf-8")
    verified: list[NoteVerifier] = []
    unknown: list[str] = []
    for sig in parsed.signatures:
        # 2. Match on name and key id together.
        match = known.get((sig.name, sig.key_id))
        if match is None:
            unknown.append(_key_label(sig.name, sig.key_id))
            continue
        # 3. Verify every signature by a trusted key, repeated ones too.
        if not match.verify(message, sig.signature):
            raise SignatureError(
                f"invalid signature for key {_key_label(sig.name, sig.key_id)}: "
                "the note was altered or the signature forged"
            )
        if match not in verified:
            verified.append(match)
    # 4. At least one trusted signature.
    if not verified:
        signed_by = ", ".join(dict.fromkeys(unknown))
        trusted = ", ".join(_key_label(*slot) for slot in known) or "none"
        raise SignatureError(
            f"note is not signed by any trusted key; signed by unknown key(s): {signed_by} "
            f"(trusted: {trusted})"
        )
    return parsed, verified
