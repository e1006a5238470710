"""Sealed personal data: values kept out of their entries, erasable by data subject.

A caller names body fields (dotted paths) to seal, and the data subject whose data they are.
Each value is replaced in the entry by ``{"$sealed": hex(SHA-256(0x02 ‖ salt ‖ value))}``, with
a fresh 32-byte salt and the value's canonical JSON; the salt and value wait in
``ledger_sealed``. While they are there, ``reveal`` puts the value back and checks it against its
commitment. Erasing deletes both: the commitment alone says nothing of what it committed to (the
salt is gone), and the entry's bytes, and so every hash and signature over them, stay as they
were.

The data subject is never written in clear. ``ledger_sealed`` and the ``erasure`` entry name it
by HMAC-SHA256 under the ledger's subject key (``SubjectKey``): a customer id such as "C-1001" is
guessable, so a plain hash of it would be no pseudonym at all (anyone can hash every id there
could be and look the digest up); under a secret key only its holder can compute a digest, and
so try a guess. The key lives outside the database, beside the signing key
(``ledger.keys.load_or_create_subject_key``): a copy of the database, a backup or an export
alone cannot tell whose data an erasure removed. Whoever holds both the key and the database can
test a guess; nobody can get an erased value back.

A record that names a data subject must seal every field that holds its id: the ledger refuses
one whose actor, subject or body still holds the id as a whole string, since the subject could
then be found again after erasure.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Collection, Mapping
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ledger.database import sqlite_file
from ledger.entry import canonical_json
from ledger.errors import EntryError, KeyFileError, LedgerError, StorageError
from ledger.models import SEALED

__all__ = [
    "ERASED_MARK",
    "SEALED_MARK",
    "SubjectKey",
    "check_subject_key",
    "erase_sealed",
    "find_sealed",
    "forget_erased",
    "refuse_clear_subject",
    "reveal_sealed",
    "seal_fields",
]

SEALED_MARK = "$sealed"
# Added by ``reveal`` beside the commitment of an erased value: the seq of the erasure entry.
ERASED_MARK = "$erased"
_KEY_BYTES = 32
_SALT_BYTES = 32


class SubjectKey:
    """The secret that names data subjects: ``digest(id)`` is HMAC-SHA256(secret, "subject:" ‖
    id), and ``id`` (8 bytes, HMAC of "key-id") tells keys apart without revealing either."""

    __slots__ = ("_secret", "id")

    def __init__(self, secret: bytes) -> None:
        if len(secret) < _KEY_BYTES:
            raise ValueError(f"a subject key needs at least {_KEY_BYTES} bytes of secret")
        self._secret = secret
        self.id = hmac.digest(secret, b"key-id", "sha256")[:8]

    def digest(self, data_subject: str) -> bytes:
        """The keyed digest that stands for ``data_subject`` in the ledger."""
        return hmac.digest(self._secret, b"subject:" + data_subject.encode(), "sha256")


def seal_fields(
    body: Mapping[str, Any], paths: Collection[str]
) -> tuple[dict[str, Any], list[tuple[str, bytes, bytes]]]:
    """A copy of ``body`` with the value at each path replaced by a salted commitment, and
    what to keep aside: (path, salt, canonical value) per path. The caller's body is left
    intact (the dicts on the way down are copied)."""
    sealed = dict(body)
    ordered = sorted(set(paths))
    salts = os.urandom(_SALT_BYTES * len(ordered))  # one system call for them all
    kept = [
        _seal(sealed, path, salts[i * _SALT_BYTES : (i + 1) * _SALT_BYTES])
        for i, path in enumerate(ordered)
    ]
    return sealed, kept


def refuse_clear_subject(data_subject: str, *encoded: bytes) -> None:
    """Refuse an entry whose encoded parts (canonical JSON) hold the data subject's id as a
    whole string: it would outlive the erasure. The message names no value."""
    needle = canonical_json(data_subject, "data_subject")
    if any(needle in part for part in encoded):
        raise EntryError(
            "data_subject",
            "the data subject's id is in the entry in clear; seal the field that holds it, "
            "and keep it out of the actor and the subject",
        )


def _seal(body: dict[str, Any], path: str, salt: bytes) -> tuple[str, bytes, bytes]:
    """Replace the value at ``path`` by its commitment under ``salt``; return what to keep
    aside."""
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
    node[key] = {SEALED_MARK: _commitment(salt, value).hex()}
    return path, salt, value


def reveal_sealed(conn: Connection, seq: int, body: dict[str, Any]) -> dict[str, Any]:
    """Put the sealed values of entry ``seq`` back into its ``body``; mark erased ones with
    ``ERASED_MARK`` (the seq of the erasure entry) beside their commitment."""
    rows = conn.execute(
        sa.select(SEALED.c.path, SEALED.c.salt, SEALED.c.value, SEALED.c.erased_by).where(
            SEALED.c.seq == seq
        )
    ).all()
    for path, salt, value, erased_by in rows:
        parent, key = _parent(body, path)
        mark = parent.get(key)
        if not isinstance(mark, dict) or not isinstance(mark.get(SEALED_MARK), str):
            raise LedgerError(f"seq {seq}: {path} is not sealed in the entry")
        if value is None or salt is None:
            if erased_by is not None:
                parent[key] = {**mark, ERASED_MARK: int(erased_by)}
            continue
        if mark[SEALED_MARK] != _commitment(bytes(salt), bytes(value)).hex():
            raise LedgerError(f"seq {seq}: sealed value at {path} does not match its commitment")
        parent[key] = orjson.loads(bytes(value))
    return body


def find_sealed(conn: Connection, digest: bytes) -> list[tuple[int, str]]:
    """(seq, path) of every sealed value of the subject ``digest`` not yet erased, in order."""
    rows = conn.execute(
        sa.select(SEALED.c.seq, SEALED.c.path)
        .where(SEALED.c.subject_digest == digest, SEALED.c.value.is_not(None))
        .order_by(SEALED.c.seq, SEALED.c.path)
    ).all()
    return [(int(seq), str(path)) for seq, path in rows]


def erase_sealed(conn: Connection, digest: bytes, by: int) -> None:
    """Delete the salts and values of the subject ``digest`` sealed before the erasure entry
    ``by`` (its seq), naming it as what erased them."""
    conn.execute(
        sa.update(SEALED)
        .where(
            SEALED.c.subject_digest == digest,
            SEALED.c.value.is_not(None),
            SEALED.c.seq < by,
        )
        .values(salt=None, value=None, erased_by=by)
    )


def check_subject_key(conn: Connection, key: SubjectKey) -> None:
    """Refuse a subject key other than the one the latest sealed value was sealed under: its
    digests would match none of the sealed rows, and erasures would silently find nothing."""
    found = conn.execute(
        sa.select(SEALED.c.subject_key_id)
        .order_by(SEALED.c.seq.desc(), SEALED.c.path.desc())
        .limit(1)
    ).scalar()
    if found is not None and bytes(found) != key.id:
        raise KeyFileError(
            f"the ledger's sealed values were sealed under subject key {bytes(found).hex()}, "
            f"but this process has subject key {key.id.hex()}: restore the subject key file "
            "they were sealed with (a new one would never find their data subjects to erase)"
        )


def forget_erased(engine: Engine) -> None:
    """SQLite: move everything from the WAL into the database file and empty the WAL.

    An erasure overwrites the values in their pages (``secure_delete``, see
    ``ledger.database``), but older copies of those pages stay in the WAL until it is
    checkpointed and truncated. The checkpoint waits (the busy timeout) for readers of older
    snapshots; if one still holds on, StorageError, and erasing again finishes the job.
    """
    if sqlite_file(engine) is None:
        return
    raw = engine.raw_connection()
    try:
        driver = raw.driver_connection
        assert driver is not None
        busy, _, _ = driver.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        raw.close()
    if busy:
        raise StorageError(
            "the erasure is recorded, but a reader kept SQLite from emptying its WAL, which "
            "still holds copies of the erased values: erase again to finish"
        )


def _parent(body: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    *parents, key = path.split(".")
    node = body
    for name in parents:
        child = node.get(name)
        if not isinstance(child, dict):
            raise LedgerError(f"no field {path} in the entry")
        node = child
    return node, key


def _commitment(salt: bytes, value: bytes) -> bytes:
    return hashlib.sha256(b"\x02" + salt + value).digest()
