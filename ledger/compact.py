"""A compact range: the right edge of an RFC 9162 Merkle tree, enough to append and get roots.

A tree of ``size`` leaves is held as the hashes of the complete subtrees that make up
[0, size) -- one per set bit of ``size``, largest first -- so appending costs one hash per
subtree it completes (one on average) and memory stays O(log size).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from ledger.errors import ProofError
from ledger.merkle import HASH_SIZE, fold_subtrees

# append hashes inline, as merkle.node_hash does (a copy of a hasher seeded with the RFC 9162
# node prefix 0x01), to save a function call per node: a verifier appends once per entry. The
# seed is never updated, so threads may share it.
_new_node_hasher = hashlib.sha256(b"\x01").copy

__all__ = ["CompactRange"]


class CompactRange:
    """The complete-subtree hashes covering leaves [0, size), largest subtree first."""

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        """Start with the empty tree."""
        self._size = 0
        self._hashes: list[bytes] = []

    @classmethod
    def from_subtrees(cls, size: int, hashes: Sequence[bytes]) -> CompactRange:
        """Rebuild the range for ``size`` leaves from its subtree hashes.

        ``hashes`` are those of ``complete_subtrees(0, size)``, left to right. Requires
        size >= 0, one 32-byte hash per set bit of ``size`` (ProofError otherwise).
        """
        if size < 0:
            raise ProofError(f"tree size: got {size}, want >= 0")
        want = size.bit_count()
        if len(hashes) != want:
            raise ProofError(f"compact range of size {size}: got {len(hashes)} hashes, want {want}")
        for i, h in enumerate(hashes):
            if len(h) != HASH_SIZE:
                raise ProofError(f"hashes[{i}]: got {len(h)} bytes, want {HASH_SIZE}")
        rng = cls()
        rng._size = size
        rng._hashes = list(hashes)
        return rng

    @property
    def size(self) -> int:
        """The number of leaves appended so far."""
        return self._size

    @property
    def hashes(self) -> list[bytes]:
        """A copy of the subtree hashes, left to right (``complete_subtrees(0, size)``)."""
        return list(self._hashes)

    def append(self, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        """Add one leaf hash; return the subtrees it completed at level >= 1.

        Each is ``(level, index, hash)``, lowest level first, so a store can persist them and
        answer proofs later. Requires a 32-byte hash (ProofError otherwise).
        """
        if len(leaf_hash) != HASH_SIZE:
            raise ProofError(f"leaf hash: got {len(leaf_hash)} bytes, want {HASH_SIZE}")
        completed: list[tuple[int, int, bytes]] = []
        hashes = self._hashes
        n = self._size
        self._size = n + 1
        h = leaf_hash
        level = 0
        # Each trailing one bit of the old size is a subtree of that level waiting for a right
        # sibling of the same size; the new leaf supplies it, level by level.
        while n & 1:
            node = _new_node_hasher()
            node.update(hashes.pop() + h)
            h = node.digest()
            n >>= 1
            level += 1
            completed.append((level, n, h))
        hashes.append(h)
        return completed

    def append_nodes(self, leaf_hash: bytes) -> bytes:
        """Like ``append``, returning the completed subtree hashes already joined.

        The hashes are those ``append`` returns, lowest level first, concatenated (32 bytes
        each; empty when the leaf completes no subtree, as for every other leaf): the form a
        store persists, without a tuple per subtree. Requires a 32-byte hash (ProofError
        otherwise).
        """
        if len(leaf_hash) != HASH_SIZE:
            raise ProofError(f"leaf hash: got {len(leaf_hash)} bytes, want {HASH_SIZE}")
        hashes = self._hashes
        n = self._size
        self._size = n + 1
        if not n & 1:
            hashes.append(leaf_hash)
            return b""
        h = leaf_hash
        nodes = []
        while n & 1:
            node = _new_node_hasher()
            node.update(hashes.pop())
            node.update(h)
            h = node.digest()
            nodes.append(h)
            n >>= 1
        hashes.append(h)
        return b"".join(nodes)

    def copy(self) -> CompactRange:
        """An independent copy: appending to one leaves the other as it was."""
        rng = CompactRange()
        rng._size = self._size
        rng._hashes = self._hashes.copy()
        return rng

    def append_leaf(self, leaf_hash: bytes) -> None:
        """Like ``append``, without building the list of completed subtrees."""
        if len(leaf_hash) != HASH_SIZE:
            raise ProofError(f"leaf hash: got {len(leaf_hash)} bytes, want {HASH_SIZE}")
        hashes = self._hashes
        n = self._size
        self._size = n + 1
        h = leaf_hash
        while n & 1:
            node = _new_node_hasher()
            node.update(hashes.pop() + h)
            h = node.digest()
            n >>= 1
        hashes.append(h)

    def root(self) -> bytes:
        """MTH(D[0:size]); EMPTY_ROOT when no leaf has been appended."""
        return fold_subtrees(self._hashes)
