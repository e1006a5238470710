"""The ledger's key files, mode 0600: the signing key, the subject key and a witness's key.

The signing key is one Ed25519 private key, unencrypted PKCS#8 PEM. The subject key is 32 random
bytes in hex, the secret that names data subjects by a keyed digest (``ledger.sealing``); it is
kept beside the signing key, outside the database, so that a copy of the database cannot tell
whose data an erasure removed. A witness's cosigning key is one line in Go's
``PRIVATE+KEY+<name>+<key id>+<key>`` form (``ledger.cosignature``).

A new key is written to a temporary file created with O_CREAT|O_EXCL and mode 0600 (so it is
never readable by anyone else, not even for a moment), fsynced, then published under its final
name with a hard link, which fails rather than overwrite. Concurrent starters therefore never
see a half-written key: each either publishes its key or loads the one that won.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.cosignature import Cosigner
from ledger.errors import KeyFileError, NoteError
from ledger.note import NoteSigner

__all__ = [
    "copy_signing_key",
    "generate_signing_key",
    "generate_witness_key",
    "load_or_create_signing_key",
    "load_or_create_subject_key",
    "load_signing_key",
    "load_subject_key",
    "load_witness_key",
    "public_key_line",
]

# A PEM Ed25519 key is about 120 bytes; refuse to read anything far larger.
_MAX_KEY_FILE_BYTES = 64 * 1024
_SUBJECT_KEY_BYTES = 32


def _read_key_file(path: Path, what: str = "signing key") -> bytes:
    """Read the key file, refusing it unless it is a regular file only its owner can access.

    Opens first and checks the open file, so what is checked is what is read. ``what`` names
    the key in messages.
    """
    try:
        # O_NONBLOCK so a FIFO planted at the path is refused below instead of hanging us.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise  # the callers decide: refuse, or create a key
    except PermissionError as exc:
        raise KeyFileError(
            f"cannot read {what} {path}: permission denied; run the service as the "
            f"file's owner or fix its owner with chown"
        ) from exc
    except OSError as exc:
        raise KeyFileError(f"cannot open {what} {path}: {exc.strerror or exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{what} {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"{what} {path} has mode {mode:04o}, open to group or others; "
                f"want 0600: run chmod 600 {path}"
            )
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(_MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{what} {path} is over {_MAX_KEY_FILE_BYTES} bytes; not a key file")
    return data


def _signer_from_pem(path: Path, data: bytes, name: str) -> NoteSigner:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # TypeError: the key is encrypted. ValueError: not PEM, or PEM of something else.
        raise KeyFileError(
            f"signing key {path} is not an unencrypted PEM private key ({exc}); restore the "
            f"key from backup, or move the file away to have a new key generated"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(
            f"signing key {path} is a {type(key).__name__}; want an Ed25519 private key"
        )
    return NoteSigner(name, key)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(path: Path, data: bytes) -> None:
    """Write ``data`` as a new key file at ``path`` (mode 0600); FileExistsError if it exists."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            # The umask can only narrow 0600; make it exactly 0600 so the owner can read it.
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        # link(2) fails with EEXIST instead of replacing: never overwrite a key.
        os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_directory(path.parent)


def _create(path: Path, data: bytes, what: str) -> None:
    """Create the parent directory (mode 0700) if needed and publish a new key at ``path``.

    FileExistsError if ``path`` exists; any other failure is a KeyFileError.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        # Apart, since mkdir raises FileExistsError too when the parent is a file.
        raise KeyFileError(
            f"cannot create directory {path.parent} for the {what}: {exc.strerror or exc}"
        ) from exc
    try:
        _publish(path, data)
    except FileExistsError:
        raise
    except OSError as exc:
        raise KeyFileError(f"cannot write {what} {path}: {exc.strerror or exc}") from exc


def _create_signing_key(path: Path, name: str) -> NoteSigner:
    """Generate a signing key and publish it at ``path``; FileExistsError if ``path`` exists."""
    key = Ed25519PrivateKey.generate()
    # Validate the name before anything touches the disk.
    signer = NoteSigner(name, key)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _create(path, pem, "signing key")
    return signer


def load_signing_key(path: Path, name: str) -> NoteSigner:
    """Load the Ed25519 signing key at ``path`` as a signer named ``name``; never creates one.

    Raises KeyFileError if the file is missing, unreadable, accessible to group or others, or
    not an unencrypted Ed25519 private key in PEM; NoteError if ``name`` is not a valid key name.
    """
    try:
        data = _read_key_file(path)
    except FileNotFoundError as exc:
        raise KeyFileError(
            f"no signing key file at {path.absolute()} (looked for it there); generate one "
            f"first, or point the configuration at the existing key"
        ) from exc
    return _signer_from_pem(path, data, name)


def load_or_create_signing_key(path: Path, name: str) -> NoteSigner:
    """Load the signing key at ``path``, or generate and write one (mode 0600) if there is none.

    The parent directory is created (mode 0700) if needed. An existing file is refused
    (KeyFileError) as ``load_signing_key`` refuses it; it is never replaced.
    """
    try:
        data = _read_key_file(path)
    except FileNotFoundError:
        try:
            return _create_signing_key(path, name)
        except FileExistsError:
            # Another process published its key between our read and our write: use that one.
            return load_signing_key(path, name)
    return _signer_from_pem(path, data, name)


def generate_signing_key(path: Path, name: str) -> NoteSigner:
    """Generate a new signing key (for rotation) and write it to ``path`` with mode 0600.

    Raises KeyFileError if ``path`` already exists: a signing key is never overwritten.
    """
    try:
        return _create_signing_key(path, name)
    except FileExistsError as exc:
        raise KeyFileError(
            f"{path} already exists; refusing to overwrite a signing key: choose a new path, "
            f"or move the old key away once nothing needs it"
        ) from exc


def copy_signing_key(source: Path, path: Path, name: str) -> NoteSigner:
    """Check the signing key at ``source`` (as ``load_signing_key`` does) and write it anew at
    ``path``, mode 0600, for a rotation to a key made elsewhere.

    Raises KeyFileError if ``source`` is not a usable key or ``path`` already exists.
    """
    try:
        data = _read_key_file(source)
    except FileNotFoundError as exc:
        raise KeyFileError(f"no signing key file at {source.absolute()}") from exc
    signer = _signer_from_pem(source, data, name)
    try:
        _create(path, data, "signing key")
    except FileExistsError as exc:
        raise KeyFileError(
            f"{path} already exists; refusing to overwrite a signing key: move it away first"
        ) from exc
    return signer


def load_subject_key(path: Path) -> bytes:
    """Load the subject key at ``path``; never creates one.

    Raises KeyFileError if the file is missing, unreadable, accessible to group or others, or
    not 64 hex digits.
    """
    try:
        data = _read_key_file(path, "subject key")
    except FileNotFoundError as exc:
        raise KeyFileError(
            f"no subject key file at {path.absolute()} (looked for it there); without it the "
            f"data subjects of this ledger's sealed values cannot be found to erase them: "
            f"restore it from backup"
        ) from exc
    return _subject_key_from(path, data)


def load_or_create_subject_key(path: Path) -> bytes:
    """Load the subject key at ``path``, or generate and write one (mode 0600) if there is none.

    An existing file is refused as ``load_subject_key`` refuses it; it is never replaced. Keep
    it with the signing key, and back it up with it: a ledger refuses to open with a subject key
    other than the one its sealed values were sealed under.
    """
    try:
        data = _read_key_file(path, "subject key")
    except FileNotFoundError:
        secret = secrets.token_bytes(_SUBJECT_KEY_BYTES)
        try:
            _create(path, secret.hex().encode() + b"\n", "subject key")
        except FileExistsError:
            # Another process published its key between our read and our write: use that one.
            return load_subject_key(path)
        return secret
    return _subject_key_from(path, data)


def _subject_key_from(path: Path, data: bytes) -> bytes:
    text = data.strip()
    try:
        secret = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        secret = b""
    if len(secret) != _SUBJECT_KEY_BYTES:
        raise KeyFileError(
            f"subject key {path} is not {2 * _SUBJECT_KEY_BYTES} hex digits; restore the key "
            f"from backup (a new one would not find the data subjects sealed under the old)"
        )
    return secret


def public_key_line(signer: NoteSigner) -> str:
    """Return the verifier key to publish for ``signer`` (``name+keyid+base64 key``)."""
    return signer.vkey


def generate_witness_key(path: Path, name: str) -> Cosigner:
    """Generate a witness's cosigning key named ``name`` and write it to ``path``, mode 0600.

    The file holds one line, ``PRIVATE+KEY+<name>+<key id>+<key>`` (``Cosigner.skey``). Raises
    KeyFileError if ``path`` exists (a key is never overwritten), NoteError if ``name`` is not
    a valid key name.
    """
    cosigner = Cosigner(name, Ed25519PrivateKey.generate())
    try:
        _create(path, f"{cosigner.skey()}\n".encode(), "witness key")
    except FileExistsError as exc:
        raise KeyFileError(
            f"{path} already exists; refusing to overwrite a witness key: choose a new path"
        ) from exc
    return cosigner


def load_witness_key(path: Path) -> Cosigner:
    """Load the witness key at ``path``; KeyFileError if it is missing, open to group or
    others, or not a witness key."""
    try:
        data = _read_key_file(path, "witness key")
    except FileNotFoundError as exc:
        raise KeyFileError(
            f"no witness key file at {path.absolute()}; make one with "
            f"`python -m ledger witness keygen NAME --out {path}`"
        ) from exc
    try:
        return Cosigner.from_skey(data.decode("ascii").strip())
    except (UnicodeDecodeError, NoteError) as exc:
        problem = exc.reason if isinstance(exc, UnicodeDecodeError) else str(exc)
        raise KeyFileError(f"{path} is not a witness key: {problem}") from None
