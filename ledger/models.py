"""The ledger's tables (SQLModel). The append path writes them through SQLAlchemy Core.

``ledger_entries`` is append-only. The other tables are indexes over it (checkpoints, keys) or
the one mutable place, ``ledger_sealed``, where sensitive values wait until they are erased.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, LargeBinary, Table, Text
from sqlmodel import Field, SQLModel

__all__ = ["LEDGER_TABLES", "CheckpointRow", "EntryRow", "KeyRow", "SealedRow"]


# SQLite stores a table in its rowid B-tree only when the key is declared INTEGER PRIMARY KEY;
# BIGINT there would add a second B-tree (and WAL pages) to every append.
SEQ = BigInteger().with_variant(Integer, "sqlite")


class EntryRow(SQLModel, table=True):
    """One entry: its canonical bytes, its leaf hash and the subtree hashes it completed."""

    __tablename__ = "ledger_entries"

    seq: int = Field(sa_column=Column(SEQ, primary_key=True, autoincrement=False))
    kind: str = Field(max_length=64)
    leaf_hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    # Hashes of the complete subtrees (level 1 and up, lowest first) whose last leaf is this
    # entry: enough to answer any proof or root without reading every leaf.
    nodes: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class CheckpointRow(SQLModel, table=True):
    """A signed tree head; the same note is also an entry of kind ``checkpoint``."""

    __tablename__ = "ledger_checkpoints"

    size: int = Field(sa_column=Column(SEQ, primary_key=True, autoincrement=False))
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    root_hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    note: str = Field(sa_column=Column(Text, nullable=False))
    signed_at: str


class KeyRow(SQLModel, table=True):
    """A signing key and the first tree size it signs; mirrors the ``key`` entries."""

    __tablename__ = "ledger_keys"

    from_size: int = Field(sa_column=Column(SEQ, primary_key=True, autoincrement=False))
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    vkey: str = Field(sa_column=Column(Text, nullable=False))


class SealedRow(SQLModel, table=True):
    """A sealed value kept out of its entry, which holds only a salted commitment to it.

    The data subject is named by its keyed digest only (``ledger.sealing``), and the key by its
    id, so that a ledger given another subject key refuses to open. Erasure sets ``salt`` and
    ``value`` to NULL and ``erased_by`` to the erasure entry's seq.
    """

    __tablename__ = "ledger_sealed"

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    path: str = Field(primary_key=True, max_length=256)
    subject_digest: bytes = Field(sa_column=Column(LargeBinary, nullable=False, index=True))
    subject_key_id: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    salt: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    value: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    erased_by: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


def _table(model: type[SQLModel]) -> Table:
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, Table)
    return table


ENTRIES = _table(EntryRow)
CHECKPOINTS = _table(CheckpointRow)
KEYS = _table(KeyRow)
SEALED = _table(SealedRow)
LEDGER_TABLES = (ENTRIES, CHECKPOINTS, KEYS, SEALED)
