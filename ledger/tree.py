"""The Merkle tree as the database holds it: sizes, the current key, and stored subtree hashes.

Each entry's row keeps the hashes of the complete subtrees that end with it (``nodes``), so any
root, proof or frontier is a few point reads, never a walk over every leaf. The writer reads the
tail it appends on from here, and the store its roots and proofs.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.errors import ProofError
from ledger.merkle import HASH_SIZE, complete_subtrees, fold_subtrees
from ledger.models import CHECKPOINTS, ENTRIES, KEYS

__all__ = [
    "check_size",
    "read_checkpoint_size",
    "read_current_key",
    "read_range_hashes",
    "read_size",
    "read_subtree_hashes",
]


def read_size(conn: Connection) -> int:
    """The number of entries in the log."""
    last = conn.execute(sa.select(sa.func.max(ENTRIES.c.seq))).scalar()
    return 0 if last is None else int(last) + 1


def read_checkpoint_size(conn: Connection) -> int:
    """The size the latest checkpoint signs (0 when there is none)."""
    return int(conn.execute(sa.select(sa.func.max(CHECKPOINTS.c.size))).scalar() or 0)


def read_current_key(conn: Connection) -> str | None:
    """The verifier key that signs from the latest size on (None before the first)."""
    vkey = conn.execute(sa.select(KEYS.c.vkey).order_by(KEYS.c.from_size.desc()).limit(1)).scalar()
    return None if vkey is None else str(vkey)


def check_size(size: int, current: int) -> None:
    """Refuse a tree size the log has not reached (``ProofError``)."""
    if not 0 <= size <= current:
        raise ProofError(f"tree size {size} is beyond the log's {current} entries")


def read_subtree_hashes(conn: Connection, subtrees: Sequence[tuple[int, int]]) -> list[bytes]:
    """Hashes of complete subtrees (level, index), read from the rows that completed them."""
    if not subtrees:
        return []
    ends = {(index + 1 << level) - 1 for level, index in subtrees}
    rows = conn.execute(
        sa.select(ENTRIES.c.seq, ENTRIES.c.leaf_hash, ENTRIES.c.nodes).where(
            ENTRIES.c.seq.in_(sorted(ends))
        )
    ).all()
    found = {int(seq): (bytes(leaf), bytes(nodes)) for seq, leaf, nodes in rows}
    hashes = []
    for level, index in subtrees:
        leaf, nodes = found[(index + 1 << level) - 1]
        hashes.append(leaf if level == 0 else nodes[(level - 1) * HASH_SIZE : level * HASH_SIZE])
    return hashes


def read_range_hashes(conn: Connection, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """The Merkle tree hash of each [start, end) range, in one read of the database."""
    parts = [complete_subtrees(start, end) for start, end in ranges]
    flat = read_subtree_hashes(conn, [s for part in parts for s in part])
    out, at = [], 0
    for part in parts:
        out.append(fold_subtrees(flat[at : at + len(part)]))
        at += len(part)
    return out
