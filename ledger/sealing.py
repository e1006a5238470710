"""Sealed fields: a value kept out of its entry, which holds only a salted commitment to it.

A caller names body fields (dotted paths) to seal. Each value is replaced in the entry by
``{"$sealed": hex(SHA-256(0x02 ‖ salt ‖ value))}``, with a fresh 32-byte salt and the value's
canonical JSON, and the salt and value wait in ``ledger_sealed``. While they are there,
``reveal`` puts the value back and checks it against its commitment; erasing deletes both, and
the commitment alone says nothing of what it committed to (the salt is gone), while the entry's
bytes, and so every hash and signature over them, stay as they were.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.entry import canonical_json
from ledger.errors import EntryError, LedgerError
from ledger.models import SEALED

__all__ = ["SEALED_MARK", "erase_sealed", "find_sealed", "reveal_sealed", "seal"]

SEALED_MARK = "$sealed"


def seal(body: dict[str, Any], path: str) -> tuple[str, bytes, bytes]:
    """Replace the value at ``path`` by a salted commitment; return what to keep aside.

    The dicts on the way down are copied, so the caller's body stays intact (``body`` itself
    must be the caller's copy).
    """
    *parents, key = path.split(".")
    node = body
    for name in parents:
        child = node.get(name)
        if not isinstance(child, dict):
            raise EntryError(f"body.{path}", "no such field to seal")
        node[name] = child = dict(child)
        node = child
    if key not in node:
        raise EntryError(f"body.{path}", "no such field to seal")
    value = canonical_json(node[key], f"body.{path}")
    salt = os.urandom(32)
    node[key] = {SEALED_MARK: _commitment(salt, value).hex()}
    return path, salt, value


def reveal_sealed(conn: Connection, seq: int, body: dict[str, Any]) -> dict[str, Any]:
    """Put the sealed values of entry ``seq`` that are not erased back into its ``body``."""
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
            raise LedgerError(f"seq {seq}: sealed value at {path} does not match its commitment")
        parent[key] = orjson.loads(bytes(value))
    return body


def find_sealed(conn: Connection, subject: str) -> list[tuple[int, str]]:
    """(seq, path) of every sealed value of ``subject`` not yet erased, in order."""
    rows = conn.execute(
        sa.select(SEALED.c.seq, SEALED.c.path)
        .where(SEALED.c.subject == subject, SEALED.c.value.is_not(None))
        .order_by(SEALED.c.seq, SEALED.c.path)
    ).all()
    return [(int(seq), str(path)) for seq, path in rows]


def erase_sealed(conn: Connection, sealed: Sequence[tuple[int, str]], by: int) -> None:
    """Delete the salts and values of ``sealed`` (seq, path), naming the erasure entry ``by``."""
    for seq, path in sealed:
        conn.execute(
            sa.update(SEALED)
            .where(SEALED.c.seq == seq, SEALED.c.path == path)
            .values(salt=None, value=None, erased_by=by)
        )


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
