"""RFC 9162 Merkle tree hashing and proofs (sections 2.1.1, 2.1.3 and 2.1.4).

Leaves are hashed as SHA-256(0x00 ‖ data), interior nodes as SHA-256(0x01 ‖ left ‖ right), and
the hash of the empty tree is SHA-256 of nothing. Everything here works on leaf *hashes*.

Proof generation is split in two. The ``*_ranges`` functions say which leaf ranges [start, end)
a proof is made of; ``complete_subtrees`` breaks such a range into aligned complete subtrees and
``fold_subtrees`` rebuilds the range's hash from theirs, so a store that keeps only
complete-subtree hashes can answer proofs without reading every leaf. ``inclusion_proof`` and
``consistency_proof`` are the reference route over a full list of leaf hashes.

Verification follows the RFC's bit-walking algorithms. A well-formed proof that does not match
returns False; malformed input (negative or out-of-range numbers, a hash that is not 32 bytes, a
proof of the wrong length) raises ``ProofError`` with what was got and what was wanted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from ledger.errors import ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "complete_subtrees",
    "consistency_proof",
    "consistency_proof_ranges",
    "fold_subtrees",
    "inclusion_proof",
    "inclusion_proof_ranges",
    "leaf_hash",
    "node_hash",
    "root_from_inclusion_proof",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Length in bytes of every hash in the tree (SHA-256)."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256() -- the root of the tree with no leaves."""

# Copying a hasher already seeded with the domain-separation prefix is a little faster (about
# 10% for a node) than building one per hash, which looks the digest up in OpenSSL each time.
# The seeds are never updated, so threads may share them.
_LEAF_SEED = hashlib.sha256(b"\x00")
_NODE_SEED = hashlib.sha256(b"\x01")


def leaf_hash(data: bytes) -> bytes:
    """Return the RFC 9162 leaf hash SHA-256(0x00 ‖ data). Any ``data`` is accepted."""
    h = _LEAF_SEED.copy()
    h.update(data)
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 9162 interior node hash SHA-256(0x01 ‖ left ‖ right).

    Lengths are not checked here (this is the hot path); the proof functions check them.
    """
    h = _NODE_SEED.copy()
    h.update(left + right)
    return h.digest()


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return MTH(D[0:n]) given the n leaf hashes (not the leaf data) in order.

    Requires every element to be 32 bytes (ProofError otherwise). Runs in O(n) hashes with no
    recursion: pairing neighbours level by level and carrying an odd last node up unchanged
    builds exactly the RFC's tree, whose left subtree is always the largest power of two.
    """
    _check_hash_list("leaf_hashes", leaf_hashes)
    if not leaf_hashes:
        return EMPTY_ROOT
    seed_copy = _NODE_SEED.copy
    level = list(leaf_hashes)
    while len(level) > 1:
        nxt: list[bytes] = []
        append = nxt.append
        for left, right in zip(level[0::2], level[1::2], strict=False):
            h = seed_copy()
            h.update(left + right)
            append(h.digest())
        if len(level) & 1:
            append(level[-1])
        level = nxt
    return level[0]


def complete_subtrees(start: int, end: int) -> list[tuple[int, int]]:
    """Split the leaf range [start, end) into maximal aligned complete subtrees, left to right.

    Each subtree is ``(level, index)``, covering leaves [index * 2**level, (index + 1) * 2**level).

    Requires 0 <= start <= end and, for a non-empty range, ``start`` a multiple of the largest
    power of two not exceeding ``end - start``. Those are exactly the ranges whose MTH has the
    first subtree as its left child, so ``fold_subtrees`` of these hashes is MTH(D[start:end]).
    Every range from ``inclusion_proof_ranges``, ``consistency_proof_ranges`` and [0, size)
    qualifies. Other ranges raise ProofError: they decompose too, but fold to another hash.
    """
    if start < 0 or end < start:
        raise ProofError(f"leaf range: got [{start}, {end}), want 0 <= start <= end")
    out: list[tuple[int, int]] = []
    if start == end:
        return out
    top = (end - start).bit_length() - 1
    if start & ((1 << top) - 1):
        raise ProofError(
            f"leaf range [{start}, {end}): got start {start}, "
            f"want a multiple of {1 << top} (the largest power of two <= {end - start})"
        )
    # With start aligned like that, the subtrees follow the set bits of the length, largest
    # first.
    size = end - start
    for level in range(top, -1, -1):
        if size >> level & 1:
            out.append((level, start >> level))
            start += 1 << level
    return out


def fold_subtrees(hashes: Sequence[bytes]) -> bytes:
    """Return the MTH of a range given its ``complete_subtrees`` hashes, left to right.

    Folds right to left with ``node_hash``: the RFC tree's left child is always the largest
    complete subtree. Returns EMPTY_ROOT for no hashes. Requires 32-byte hashes (ProofError).
    """
    _check_hash_list("hashes", hashes)
    if not hashes:
        return EMPTY_ROOT
    seed_copy = _NODE_SEED.copy
    acc = hashes[-1]
    for i in range(len(hashes) - 2, -1, -1):
        h = seed_copy()
        h.update(hashes[i] + acc)
        acc = h.digest()
    return acc


def inclusion_proof_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Return the leaf ranges [start, end) whose MTHs form PATH(index, D[0:size]).

    The order is the RFC 9162 section 2.1.3.1 proof order: the leaf's sibling first, the
    root's child last. Requires 0 <= index < size (ProofError otherwise).
    """
    _check_index(index, size)
    out: list[tuple[int, int]] = []
    lo, hi = 0, size
    # Walk down from the root; each split contributes the half not holding the leaf.
    while hi - lo > 1:
        mid = lo + _split(hi - lo)
        if index < mid:
            out.append((mid, hi))
            hi = mid
        else:
            out.append((lo, mid))
            lo = mid
    out.reverse()
    return out


def consistency_proof_ranges(size1: int, size2: int) -> list[tuple[int, int]]:
    """Return the leaf ranges [start, end) whose MTHs form PROOF(size1, D[0:size2]).

    The order is that of SUBPROOF in RFC 9162 section 2.1.4.1. Requires 0 <= size1 <= size2
    (ProofError otherwise). ``size1 == size2`` gives an empty proof, and so does ``size1 == 0``:
    the RFC defines no proof from the empty tree, which is a prefix of every tree, and
    ``verify_consistency`` accepts exactly the empty proof there.
    """
    _check_sizes(size1, size2)
    if size1 in (0, size2):
        return []
    out: list[tuple[int, int]] = []
    lo, hi, m, whole = 0, size2, size1, True
    # SUBPROOF(m, D[lo:hi], whole) from the top; each step contributes one sibling range.
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
            m -= k
            whole = False
    # SUBPROOF(m, D[m], false) = {MTH(D[m])}; with b true the old root is already known.
    if not whole:
        out.append((lo, hi))
    out.reverse()
    return out


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Return PATH(index, D[0:n]) computed from all n leaf hashes.

    Requires 0 <= index < len(leaf_hashes) and 32-byte leaf hashes (ProofError otherwise).
    """
    return [root_hash(leaf_hashes[s:e]) for s, e in inclusion_proof_ranges(index, len(leaf_hashes))]


def consistency_proof(size1: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Return PROOF(size1, D[0:n]) computed from all n leaf hashes.

    Requires 0 <= size1 <= len(leaf_hashes) and 32-byte leaf hashes (ProofError otherwise).
    """
    ranges = consistency_proof_ranges(size1, len(leaf_hashes))
    return [root_hash(leaf_hashes[s:e]) for s, e in ranges]


def root_from_inclusion_proof(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes]
) -> bytes:
    """Return the root that ``proof`` implies for ``leaf_hash`` at ``index`` in ``tree_size``.

    RFC 9162 section 2.1.3.2 without the final comparison. Requires 0 <= index < tree_size,
    32-byte hashes, and exactly as many proof hashes as PATH(index, D[0:tree_size]) has
    (ProofError otherwise).
    """
    # 1. leaf_index must be below tree_size; here that is malformed input, not a mismatch.
    _check_index(index, tree_size)
    _check_hash("leaf hash", leaf_hash)
    _check_hash_list("proof", proof)
    want = _inclusion_proof_length(index, tree_size)
    if len(proof) != want:
        raise ProofError(
            f"inclusion proof length: got {len(proof)} hashes, "
            f"want {want} for index {index} in a tree of size {tree_size}"
        )
    seed_copy = _NODE_SEED.copy
    # 2. Set fn to leaf_index and sn to tree_size - 1.
    fn, sn = index, tree_size - 1
    # 3. Set r to hash.
    r = leaf_hash
    # 4. For each value p in the inclusion_path array:
    for p in proof:
        # a. "If sn is 0, fail": cannot happen, the length was checked against the same walk.
        h = seed_copy()
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            # i. Set r to HASH(0x01 || p || r).
            h.update(p + r)
            # ii. If LSB(fn) is not set, then right-shift both fn and sn equally until either
            #     LSB(fn) is set or fn is 0.
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        # Otherwise:
        else:
            # i. Set r to HASH(0x01 || r || p).
            h.update(r + p)
        r = h.digest()
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 5. sn is 0 here (the length check again); the caller compares r against the root.
    return r


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Return whether ``proof`` shows ``leaf_hash`` at ``index`` in the tree with ``root``.

    RFC 9162 section 2.1.3.2. Requires 0 <= index < tree_size, 32-byte hashes and a proof of
    the right length for (index, tree_size); ProofError otherwise. A well-formed proof that
    does not lead to ``root`` returns False.
    """
    _check_hash("root", root)
    # 5. Compare r against the root_hash.
    return root_from_inclusion_proof(leaf_hash, index, tree_size, proof) == root


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> bool:
    """Return whether ``proof`` shows the tree (size1, root1) is a prefix of (size2, root2).

    RFC 9162 section 2.1.4.2. Requires 0 <= size1 <= size2, 32-byte hashes and a proof of the
    right length (ProofError otherwise); a well-formed proof that does not match returns False.

    Edge cases the RFC leaves to the caller (it assumes 0 < size1 < size2):

    - ``size1 == size2``: the proof must be empty; the result is ``root1 == root2``.
    - ``size1 == 0``: the proof must be empty; the empty tree is a prefix of every tree, and its
      root is fixed, so the result is ``root1 == EMPTY_ROOT`` (and ``root2 == EMPTY_ROOT`` too
      when ``size2 == 0``).
    """
    _check_sizes(size1, size2)
    _check_hash("root1", root1)
    _check_hash("root2", root2)
    _check_hash_list("proof", proof)
    want = _consistency_proof_length(size1, size2)
    if len(proof) != want:
        raise ProofError(
            f"consistency proof length: got {len(proof)} hashes, "
            f"want {want} from size {size1} to size {size2}"
        )
    if size1 == 0:
        return root1 == EMPTY_ROOT and (size2 > 0 or root2 == EMPTY_ROOT)
    if size1 == size2:
        return root1 == root2

    seed_copy = _NODE_SEED.copy
    # 1. "If consistency_path is empty, fail": the length check above wants at least one hash.
    # 2. If first is an exact power of 2, then prepend first_hash to the consistency_path array.
    path = [root1, *proof] if size1 & (size1 - 1) == 0 else proof
    # 3. Set fn to first - 1 and sn to second - 1.
    fn, sn = size1 - 1, size2 - 1
    # 4. If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn) is not set.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. Set both fr and sr to the first value in the consistency_path array.
    fr = sr = path[0]
    # 6. For each subsequent value c in the consistency_path array:
    for i in range(1, len(path)):
        c = path[i]
        # a. "If sn is 0, fail": cannot happen, the length was checked against the same walk.
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            # i. Set fr to HASH(0x01 || c || fr).
            h = seed_copy()
            h.update(c + fr)
            fr = h.digest()
            # ii. Set sr to HASH(0x01 || c || sr).
            h = seed_copy()
            h.update(c + sr)
            sr = h.digest()
            # iii. If LSB(fn) is not set, then right-shift both fn and sn equally until either
            #      LSB(fn) is set or fn is 0.
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        # Otherwise:
        else:
            # i. Set sr to HASH(0x01 || sr || c).
            h = seed_copy()
            h.update(sr + c)
            sr = h.digest()
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 7. fr must equal first_hash and sr second_hash; sn is 0 (the length check again).
    return fr == root1 and sr == root2


def _split(n: int) -> int:
    """The largest power of two smaller than n (RFC 9162's k); requires n > 1."""
    return 1 << ((n - 1).bit_length() - 1)


def _inclusion_proof_length(index: int, size: int) -> int:
    # Below the level where the paths to ``index`` and ``size - 1`` meet, every level has a
    # sibling; above it, only the levels where ``index`` is a right child do (the right border
    # has no right siblings). Requires 0 <= index < size.
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def _consistency_proof_length(size1: int, size2: int) -> int:
    # The proof is the inclusion proof of leaf size1 - 1 from the level of size1's lowest set
    # bit up, plus that subtree's own hash unless it is the whole old tree (size1 a power of
    # two). Requires 0 <= size1 <= size2.
    if size1 in (0, size2):
        return 0
    shift = (size1 & -size1).bit_length() - 1
    length = _inclusion_proof_length(size1 - 1, size2) - shift
    return length if size1 & (size1 - 1) == 0 else length + 1


def _check_index(index: int, size: int) -> None:
    if not 0 <= index < size:
        raise ProofError(f"leaf index: got {index}, want 0 <= index < tree size {size}")


def _check_sizes(size1: int, size2: int) -> None:
    if not 0 <= size1 <= size2:
        raise ProofError(f"tree sizes: got size1={size1}, size2={size2}, want 0 <= size1 <= size2")


def _check_hash(what: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what}: got {len(value)} bytes, want {HASH_SIZE}")


def _check_hash_list(what: str, values: Sequence[bytes]) -> None:
    # One pass in C over the lengths; find the culprit only when there is one.
    if not values or set(map(len, values)) == {HASH_SIZE}:
        return
    for i, value in enumerate(values):
        _check_hash(f"{what}[{i}]", value)
