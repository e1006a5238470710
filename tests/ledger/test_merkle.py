"""RFC 9162 Merkle hashing and proofs: published vectors, broken proofs, and properties.

Expected values come from two places only: the published vectors in testdata (transcribed from
transparency-dev/merkle and google/certificate-transparency), and a literal, recursive,
hashlib-only transcription of the RFC's definitions below. Neither uses the code under test.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import ProofError
from ledger.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    complete_subtrees,
    consistency_proof,
    consistency_proof_ranges,
    fold_subtrees,
    inclusion_proof,
    inclusion_proof_ranges,
    leaf_hash,
    node_hash,
    root_from_inclusion_proof,
    root_hash,
    verify_consistency,
    verify_inclusion,
)

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "testdata" / "rfc6962_vectors.json").read_text()
)
LEAVES = [bytes.fromhex(x) for x in VECTORS["leaves"]]
ROOTS = {r["size"]: bytes.fromhex(r["root"]) for r in VECTORS["roots"]}
NODES = [[bytes.fromhex(x) for x in row] for row in VECTORS["node_hashes_by_level"]]
INCLUSION = [
    (p["index"], p["size"], [bytes.fromhex(x) for x in p["proof"]])
    for p in VECTORS["inclusion_proofs"]
]
CONSISTENCY = [
    (p["size1"], p["size2"], [bytes.fromhex(x) for x in p["proof"]])
    for p in VECTORS["consistency_proofs"]
]
# A 32-byte hash that is no node of the test tree (transparency-dev's sha256SomeHash).
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


# -- the RFC's definitions, transcribed literally (recursive, hashlib only) ------------------


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(hashes: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes (RFC 9162 2.1.1, with the leaves already hashed)."""
    if not hashes:
        return _sha(b"")
    if len(hashes) == 1:
        return hashes[0]
    k = _k(len(hashes))
    return _sha(b"\x01" + ref_mth(hashes[:k]) + ref_mth(hashes[k:]))


def ref_path(m: int, hashes: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) (RFC 9162 2.1.3.1)."""
    n = len(hashes)
    if n <= 1:
        return []
    k = _k(n)
    if m < k:
        return [*ref_path(m, hashes[:k]), ref_mth(hashes[k:])]
    return [*ref_path(m - k, hashes[k:]), ref_mth(hashes[:k])]


def ref_subproof(m: int, hashes: Sequence[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) (RFC 9162 2.1.4.1)."""
    n = len(hashes)
    if m == n:
        return [] if b else [ref_mth(hashes)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, hashes[:k], b), ref_mth(hashes[k:])]
    return [*ref_subproof(m - k, hashes[k:], False), ref_mth(hashes[:k])]


def ref_path_length_fast(m: int, n: int) -> int:
    """len(PATH(m, D[n])) by the RFC's recursion on sizes alone."""
    length = 0
    while n > 1:
        k = _k(n)
        m, n = (m, k) if m < k else (m - k, n - k)
        length += 1
    return length


def ref_path_sides(m: int, n: int) -> list[str]:
    """Where each PATH(m, D[n]) element sits: the recursion above, on sizes alone."""
    if n <= 1:
        return []
    k = _k(n)
    if m < k:
        return [*ref_path_sides(m, k), "right"]
    return [*ref_path_sides(m - k, n - k), "left"]


def ref_proof_shape(m: int, n: int, b: bool = True) -> list[str]:
    """The same for SUBPROOF(m, D[n], b); "old root" is the element the proof leaves out."""
    if m == n:
        return ["old root"] if b else ["seed"]
    k = _k(n)
    if m <= k:
        return [*ref_proof_shape(m, k, b), "right"]
    return [*ref_proof_shape(m - k, n - k, False), "left"]


def hashed(data: Sequence[bytes]) -> list[bytes]:
    return [_sha(b"\x00" + d) for d in data]


LEAF_HASHES = hashed(LEAVES)


Outcome = type[ProofError] | bool


def expect(outcome: Outcome, call: Callable[[], bool]) -> None:
    """Assert the named outcome: ProofError (malformed), False (no match) or True."""
    if outcome is ProofError:
        with pytest.raises(ProofError, match=r"got .*want"):
            call()
    else:
        assert call() is outcome


def flipped(proof: Sequence[bytes], i: int, bit: int) -> list[bytes]:
    out = list(proof)
    out[i] = bytes(b ^ (1 << (bit % 8)) if j == bit // 8 else b for j, b in enumerate(out[i]))
    return out


# -- published vectors --------------------------------------------------------------------


def test_hasher_vectors() -> None:
    assert bytes.fromhex(VECTORS["empty_root"]) == EMPTY_ROOT
    assert len(EMPTY_ROOT) == HASH_SIZE
    for case in VECTORS["hasher"]["leaves"]:
        assert leaf_hash(bytes.fromhex(case["data"])).hex() == case["hash"]
    for case in VECTORS["hasher"]["nodes"]:
        left, right = bytes.fromhex(case["left"]), bytes.fromhex(case["right"])
        assert node_hash(left, right).hex() == case["hash"]


def test_the_empty_tree_root_differs_from_the_empty_leaf() -> None:
    assert leaf_hash(b"") != EMPTY_ROOT
    assert leaf_hash(b"") == bytes.fromhex(VECTORS["hasher"]["leaves"][0]["hash"])


@pytest.mark.parametrize("size", range(9))
def test_root_vectors(size: int) -> None:
    assert root_hash([leaf_hash(d) for d in LEAVES[:size]]) == ROOTS[size]


def test_the_listed_roots_are_the_published_ones() -> None:
    # The roots quoted in the brief, kept here so a bad edit of the data file shows up.
    assert ROOTS[0].hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert ROOTS[1].hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    assert ROOTS[8].hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    assert NODES[0] == LEAF_HASHES


def test_node_hash_vectors_through_subtrees() -> None:
    for level, row in enumerate(NODES):
        for index, want in enumerate(row):
            start, end = index << level, (index + 1) << level
            assert complete_subtrees(start, end) == [(level, index)]
            assert root_hash(LEAF_HASHES[start:end]) == want


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_vectors(index: int, size: int, proof: list[bytes]) -> None:
    assert inclusion_proof(index, LEAF_HASHES[:size]) == proof
    assert root_from_inclusion_proof(LEAF_HASHES[index], index, size, proof) == ROOTS[size]
    assert verify_inclusion(LEAF_HASHES[index], index, size, proof, ROOTS[size]) is True


@pytest.mark.parametrize(("size1", "size2", "proof"), CONSISTENCY)
def test_consistency_vectors(size1: int, size2: int, proof: list[bytes]) -> None:
    assert consistency_proof(size1, LEAF_HASHES[:size2]) == proof
    assert verify_consistency(size1, size2, proof, ROOTS[size1], ROOTS[size2]) is True


def test_every_proof_in_the_vector_tree_verifies_against_the_published_roots() -> None:
    for size in range(1, 9):
        for index in range(size):
            proof = inclusion_proof(index, LEAF_HASHES[:size])
            assert verify_inclusion(LEAF_HASHES[index], index, size, proof, ROOTS[size])
        for size1 in range(size + 1):
            proof = consistency_proof(size1, LEAF_HASHES[:size])
            assert verify_consistency(size1, size, proof, ROOTS[size1], ROOTS[size])


# -- every good inclusion proof, broken one way at a time -----------------------------------


PE = ProofError

# What each published inclusion proof gives at a changed (index, size): ProofError where
# PATH(index, size) has another length (or the index is out of range), False where the length
# fits but the walk differs. True marks a size whose walk is the very same sequence of hashes: a
# proof binds the leaf, its index and the root, not the tree size, so (0, 7) verifies with the
# size-8 root. The size is bound by the signed checkpoint that carries the root; never check a
# proof against a root whose size was not signed along with it. test_mutation_tables derives
# every entry again from the RFC's recursion.
INCLUSION_AT: dict[tuple[int, int], dict[tuple[int, int], Outcome]] = {
    (0, 8): {(-1, 8): PE, (1, 8): False, (2, 8): False,
             (0, 7): True, (0, 9): PE, (0, 16): PE, (0, 4): PE},
    (5, 8): {(4, 8): False, (6, 8): False, (7, 8): False,
             (5, 7): True, (5, 9): PE, (5, 16): PE, (5, 4): PE},
    (2, 3): {(1, 3): PE, (3, 3): PE, (0, 3): PE,
             (2, 2): PE, (2, 4): PE, (2, 6): PE, (2, 1): PE},
    (1, 5): {(0, 5): False, (2, 5): False, (3, 5): False,
             (1, 4): PE, (1, 6): True, (1, 10): PE, (1, 2): PE},
}  # fmt: skip


@pytest.mark.parametrize(("index", "size", "proof"), [v for v in INCLUSION if v[2]])
def test_mutated_inclusion_proofs(index: int, size: int, proof: list[bytes]) -> None:
    leaf, root = LEAF_HASHES[index], ROOTS[size]

    def check(
        i: int = index,
        n: int = size,
        p: Sequence[bytes] = proof,
        lf: bytes = leaf,
        rt: bytes = root,
    ) -> bool:
        return verify_inclusion(lf, i, n, p, rt)

    assert check() is True
    # Wrong index or size (see INCLUSION_AT).
    # index - 1, index + 1, index ^ 2, size - 1, size + 1, size * 2, size // 2.
    changed = INCLUSION_AT[index, size]
    assert len(changed) == 7
    for (i, n), outcome in changed.items():
        expect(outcome, partial(check, i=i, n=n))
    # Wrong leaf or root: the wrong length is malformed, a wrong 32-byte hash does not match.
    expect(ProofError, lambda: check(lf=b"WrongLeaf"))
    expect(False, lambda: check(lf=leaf_hash(b"WrongLeaf")))
    expect(False, lambda: check(lf=LEAF_HASHES[(index + 1) % 8]))
    expect(False, lambda: check(rt=EMPTY_ROOT))
    expect(False, lambda: check(rt=SOME_HASH))
    expect(ProofError, lambda: check(rt=b""))
    # One bit flipped anywhere in the proof: well-formed, no match.
    for i in range(len(proof)):
        for bit in range(HASH_SIZE * 8):
            expect(False, partial(check, p=flipped(proof, i, bit)))
    # Elements added or removed: the length is wrong for (index, size).
    for extra in (b"", root, SOME_HASH):
        expect(ProofError, partial(check, p=[*proof, extra]))
        expect(ProofError, partial(check, p=[extra, *proof]))
    expect(ProofError, lambda: check(p=proof[:-1]))
    expect(ProofError, lambda: check(p=proof[1:]))
    expect(ProofError, lambda: check(p=[proof[0], SOME_HASH, *proof[1:]]))
    # A proof element of the wrong length, even with the right count.
    expect(ProofError, lambda: check(p=[*proof[:-1], proof[-1][:31]]))


@pytest.mark.parametrize(
    ("index", "size"), [(0, 0), (0, 1), (1, 0), (2, 1), (-1, 1), (1, 1), (0, -1)]
)
def test_inclusion_with_no_proof_and_bad_inputs(index: int, size: int) -> None:
    # transparency-dev's TestVerifyInclusion probes. Only (0, 1) is a real position, and there
    # the root is the leaf hash itself.
    if (index, size) == (0, 1):
        assert verify_inclusion(SOME_HASH, 0, 1, [], SOME_HASH) is True
        expect(False, lambda: verify_inclusion(SOME_HASH, 0, 1, [], EMPTY_ROOT))
        expect(ProofError, lambda: verify_inclusion(SOME_HASH, 0, 1, [], b""))
        expect(ProofError, lambda: verify_inclusion(b"", 0, 1, [], SOME_HASH))
        return
    for leaf, root in [(SOME_HASH, b""), (b"", EMPTY_ROOT), (SOME_HASH, EMPTY_ROOT)]:
        expect(ProofError, partial(verify_inclusion, leaf, index, size, [], root))


def test_single_entry_tree() -> None:
    # transparency-dev's TestVerifyInclusionSingleEntry.
    h = leaf_hash(b"data")
    assert verify_inclusion(h, 0, 1, [], h) is True
    expect(ProofError, lambda: verify_inclusion(b"", 0, 1, [], h))
    expect(ProofError, lambda: verify_inclusion(h, 0, 1, [], b""))
    expect(ProofError, lambda: verify_inclusion(b"", 0, 1, [], b""))


# -- every good consistency proof, broken one way at a time ---------------------------------


# The same for consistency proofs: every changed size1 and every doubled or halved size2
# changes the proof's length, and size2 +- 1 can leave the walk unchanged, which verifies
# against the original roots for the reason given at INCLUSION_AT.
CONSISTENCY_AT: dict[tuple[int, int], dict[tuple[int, int], Outcome]] = {
    (1, 8): {(0, 8): PE, (2, 8): PE, (3, 8): PE,
             (1, 7): True, (1, 9): PE, (1, 16): PE, (1, 4): PE},
    (6, 8): {(5, 8): PE, (7, 8): PE, (4, 8): PE,
             (6, 7): True, (6, 9): PE, (6, 16): PE, (6, 4): PE},
    (2, 5): {(1, 5): PE, (3, 5): PE, (0, 5): PE,
             (2, 4): PE, (2, 6): True, (2, 10): PE, (2, 2): PE},
    (6, 7): {(5, 7): PE, (7, 7): PE, (4, 7): PE,
             (6, 6): PE, (6, 8): True, (6, 14): PE, (6, 3): PE},
}  # fmt: skip


@pytest.mark.parametrize(("size1", "size2", "proof"), [v for v in CONSISTENCY if v[2]])
def test_mutated_consistency_proofs(size1: int, size2: int, proof: list[bytes]) -> None:
    root1, root2 = ROOTS[size1], ROOTS[size2]

    def check(
        m: int = size1,
        n: int = size2,
        p: Sequence[bytes] = proof,
        r1: bytes = root1,
        r2: bytes = root2,
    ) -> bool:
        return verify_consistency(m, n, p, r1, r2)

    assert check() is True
    # Wrong sizes (see CONSISTENCY_AT).
    # size1 - 1, size1 + 1, size1 ^ 2, size2 - 1, size2 + 1, size2 * 2, size2 // 2.
    changed = CONSISTENCY_AT[size1, size2]
    assert len(changed) == 7
    for (m, n), outcome in changed.items():
        expect(outcome, partial(check, m=m, n=n))
    # Wrong or swapped roots.
    expect(ProofError, lambda: check(r1=b"WrongRoot"))
    expect(ProofError, lambda: check(r2=b"WrongRoot"))
    expect(False, lambda: check(r1=SOME_HASH))
    expect(False, lambda: check(r2=SOME_HASH))
    expect(False, lambda: check(r1=root2, r2=root1))
    # One bit flipped anywhere in the proof.
    for i in range(len(proof)):
        for bit in range(HASH_SIZE * 8):
            expect(False, partial(check, p=flipped(proof, i, bit)))
    # Elements added or removed.
    expect(ProofError, lambda: check(p=[]))
    for extra in (b"", root1, root2, proof[0], SOME_HASH):
        expect(ProofError, partial(check, p=[*proof, extra]))
        expect(ProofError, partial(check, p=[extra, *proof]))
    expect(ProofError, lambda: check(p=proof[:-1]))
    expect(ProofError, lambda: check(p=proof[1:]))


def test_mutation_tables() -> None:
    for (index, size), changed in INCLUSION_AT.items():
        sides = ref_path_sides(index, size)
        for (i, n), outcome in changed.items():
            if not 0 <= i < n or len(ref_path_sides(i, n)) != len(sides):
                assert outcome is PE
            else:
                assert outcome is (ref_path_sides(i, n) == sides)

    def proof_length(shape: list[str]) -> int:
        return len(shape) - (shape[0] == "old root")

    for (size1, size2), changed in CONSISTENCY_AT.items():
        shape = ref_proof_shape(size1, size2)
        for (m, n), outcome in changed.items():
            # Outside 0 < m < n the only proof is the empty one, and these are not empty.
            if not 0 < m < n or proof_length(ref_proof_shape(m, n)) != proof_length(shape):
                assert outcome is PE
            else:
                assert outcome is (ref_proof_shape(m, n) == shape)


ROOT1, ROOT2 = leaf_hash(b"don't care 1"), leaf_hash(b"don't care 2")


@pytest.mark.parametrize(
    ("size1", "size2", "root1", "root2", "proof", "outcome"),
    [
        # transparency-dev's TestVerifyConsistency table, with this module's decisions.
        (1, 1, ROOT1, ROOT2, [], False),  # equal sizes, different roots
        (1, 1, ROOT2, ROOT2, [], True),  # equal sizes, equal roots
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [], True),
        (0, 0, ROOT1, ROOT1, [], False),  # a size-0 tree has one root, EMPTY_ROOT
        (0, 0, EMPTY_ROOT, ROOT2, [], False),
        (0, 1, EMPTY_ROOT, ROOT2, [], True),  # the empty tree is a prefix of every tree
        (0, 1, ROOT1, ROOT2, [], False),
        (1, 0, ROOT1, ROOT2, [], ProofError),  # time travel to the past
        (2, 1, ROOT1, ROOT2, [], ProofError),
        (-1, 1, ROOT1, ROOT2, [], ProofError),
        (1, 2, ROOT1, ROOT2, [], ProofError),  # an empty proof where one is needed
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], ProofError),  # a proof where none is
        (0, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], ProofError),
        (1, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], ProofError),
        (1, 1, b"", b"", [], ProofError),  # roots of the wrong length
    ],
)
def test_consistency_edge_cases(
    size1: int,
    size2: int,
    root1: bytes,
    root2: bytes,
    proof: list[bytes],
    outcome: Outcome,
) -> None:
    expect(outcome, lambda: verify_consistency(size1, size2, proof, root1, root2))


# -- ranges, subtrees and folding ------------------------------------------------------------


def test_complete_subtrees_of_prefixes_match_the_published_compact_ranges() -> None:
    for case in VECTORS["compact_ranges"]:
        subtrees = [tuple(s) for s in case["subtrees"]]
        assert complete_subtrees(0, case["size"]) == subtrees
        hashes = [NODES[level][index] for level, index in subtrees]
        assert fold_subtrees(hashes) == ROOTS[case["size"]]


@pytest.mark.parametrize(
    ("start", "end", "want"),
    [
        (0, 0, []),
        (5, 5, []),
        (6, 9, [(1, 3), (0, 8)]),
        (8, 15, [(2, 2), (1, 6), (0, 14)]),
        (16, 32, [(4, 1)]),
        (2, 5, [(1, 1), (0, 4)]),
    ],
)
def test_complete_subtrees(start: int, end: int, want: list[tuple[int, int]]) -> None:
    assert complete_subtrees(start, end) == want


@pytest.mark.parametrize(("start", "end"), [(-1, 3), (3, 2), (1, 3), (2, 7), (4, 12), (6, 10)])
def test_complete_subtrees_refuses_ranges_it_cannot_fold(start: int, end: int) -> None:
    with pytest.raises(ProofError, match=r"got .*want"):
        complete_subtrees(start, end)


def test_fold_of_nothing_is_the_empty_root() -> None:
    assert fold_subtrees([]) == EMPTY_ROOT
    assert root_hash([]) == EMPTY_ROOT


def test_hash_lists_with_a_bad_element_are_malformed() -> None:
    bad = [*LEAF_HASHES[:3], LEAF_HASHES[3][:31], *LEAF_HASHES[4:]]
    with pytest.raises(ProofError, match=r"leaf_hashes\[3\]: got 31 bytes, want 32"):
        root_hash(bad)
    with pytest.raises(ProofError, match=r"hashes\[1\]: got 0 bytes, want 32"):
        fold_subtrees([SOME_HASH, b""])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: inclusion_proof_ranges(8, 8), "leaf index: got 8, want 0 <= index < tree size 8"),
        (lambda: inclusion_proof_ranges(-1, 8), "leaf index: got -1"),
        (lambda: consistency_proof_ranges(9, 8), "got size1=9, size2=8"),
        (lambda: consistency_proof_ranges(-1, 8), "got size1=-1"),
        (lambda: inclusion_proof(3, LEAF_HASHES[:3]), "leaf index: got 3"),
        (lambda: consistency_proof(4, LEAF_HASHES[:3]), "got size1=4, size2=3"),
        (
            lambda: verify_inclusion(LEAF_HASHES[0], 0, 8, [SOME_HASH], ROOTS[8]),
            "inclusion proof length: got 1 hashes, want 3 for index 0 in a tree of size 8",
        ),
        (
            lambda: verify_consistency(2, 5, [SOME_HASH], ROOTS[2], ROOTS[5]),
            "consistency proof length: got 1 hashes, want 2 from size 2 to size 5",
        ),
        (
            lambda: complete_subtrees(2, 8),
            "leaf range [2, 8): got start 2, want a multiple of 4 (the largest power of two <= 6)",
        ),
        (
            lambda: verify_inclusion(LEAF_HASHES[0][:31], 0, 8, [SOME_HASH] * 3, ROOTS[8]),
            "leaf hash: got 31 bytes, want 32",
        ),
        (
            lambda: verify_inclusion(LEAF_HASHES[0], 0, 8, [SOME_HASH] * 3, ROOTS[8][:31]),
            "root: got 31 bytes, want 32",
        ),
        (
            lambda: verify_inclusion(LEAF_HASHES[0], 0, 8, [SOME_HASH, b"", SOME_HASH], ROOTS[8]),
            "proof[1]: got 0 bytes, want 32",
        ),
        (
            lambda: verify_consistency(2, 5, [SOME_HASH] * 2, ROOTS[2][:31], ROOTS[5]),
            "root1: got 31 bytes, want 32",
        ),
        (
            lambda: verify_consistency(2, 5, [SOME_HASH] * 2, ROOTS[2], ROOTS[5] + b"\0"),
            "root2: got 33 bytes, want 32",
        ),
    ],
)
def test_malformed_requests_say_what_was_got_and_wanted(
    call: Callable[[], object], message: str
) -> None:
    with pytest.raises(ProofError) as info:
        call()
    assert message in str(info.value)


@pytest.mark.parametrize(("size1", "size2"), [(1, 2), (2, 5), (3, 7), (4, 8), (6, 8), (5, 8)])
@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_consistency_proof_elements_of_the_wrong_length_are_malformed(
    size1: int, size2: int, length: int
) -> None:
    # Each element: the right number of hashes, one of them not 32 bytes, is malformed input
    # (ProofError naming it), never just a proof that does not match.
    proof = consistency_proof(size1, LEAF_HASHES[:size2])
    assert verify_consistency(size1, size2, proof, ROOTS[size1], ROOTS[size2])
    for i in range(len(proof)):
        bad = [*proof[:i], (proof[i] * 2)[:length], *proof[i + 1 :]]
        with pytest.raises(ProofError) as info:
            verify_consistency(size1, size2, bad, ROOTS[size1], ROOTS[size2])
        assert str(info.value) == f"proof[{i}]: got {length} bytes, want 32"


def test_ranges_are_logarithmic_for_huge_trees() -> None:
    # No leaf is touched: a store answers from ~log2(size) subtree hashes.
    size = 10**12
    ranges = inclusion_proof_ranges(size - 1, size)
    assert len(ranges) == ref_path_length_fast(size - 1, size)
    assert all(complete_subtrees(s, e) for s, e in ranges)
    ranges = consistency_proof_ranges(size // 3, size)
    assert 0 < len(ranges) <= 2 * size.bit_length()
    # A well-formed proof of the right length for a huge tree verifies quickly (to False).
    proof = [SOME_HASH] * len(inclusion_proof_ranges(12345, size))
    assert verify_inclusion(SOME_HASH, 12345, size, proof, SOME_HASH) is False


def test_root_hash_handles_large_trees_without_recursion() -> None:
    leaves = [i.to_bytes(4, "big") * 8 for i in range(2**17 + 3)]
    # Build the expected root independently: perfect subtrees of 2**17, then the three left.
    level = leaves[: 2**17]
    while len(level) > 1:
        level = [_sha(b"\x01" + a + b) for a, b in zip(level[0::2], level[1::2], strict=True)]
    tail = ref_mth(leaves[2**17 :])
    assert root_hash(leaves) == _sha(b"\x01" + level[0] + tail)


# -- properties over random trees ------------------------------------------------------------


class Tree:
    """A test tree with every complete-subtree hash precomputed (what a store would keep)."""

    def __init__(self, n: int, salt: bytes) -> None:
        self.leaves = hashed([salt + i.to_bytes(2, "big") for i in range(n)])
        self.levels = [self.leaves]
        while len(self.levels[-1]) > 1:
            row = self.levels[-1]
            self.levels.append(
                [_sha(b"\x01" + row[i] + row[i + 1]) for i in range(0, len(row) - 1, 2)]
            )

    def range_hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) by the store's route: complete subtrees, folded."""
        return fold_subtrees([self.levels[lv][ix] for lv, ix in complete_subtrees(start, end)])


trees = st.builds(Tree, st.integers(1, 300), st.binary(max_size=4))


@settings(max_examples=40, deadline=None)
@given(tree=trees, data=st.data())
def test_every_inclusion_proof_verifies(tree: Tree, data: st.DataObject) -> None:
    n = len(tree.leaves)
    root = root_hash(tree.leaves)
    assert root == ref_mth(tree.leaves)
    for index in range(n):
        ranges = inclusion_proof_ranges(index, n)
        proof = [tree.range_hash(s, e) for s, e in ranges]
        assert verify_inclusion(tree.leaves[index], index, n, proof, root)
    # The store's route, the reference route and the RFC's recursion agree.
    index = data.draw(st.integers(0, n - 1), label="index")
    via_ranges = [tree.range_hash(s, e) for s, e in inclusion_proof_ranges(index, n)]
    assert via_ranges == inclusion_proof(index, tree.leaves) == ref_path(index, tree.leaves)


@settings(max_examples=40, deadline=None)
@given(tree=trees, data=st.data())
def test_every_consistency_proof_verifies(tree: Tree, data: st.DataObject) -> None:
    n = len(tree.leaves)
    roots = [tree.range_hash(0, m) for m in range(n + 1)]
    assert roots[n] == ref_mth(tree.leaves)
    for size1 in range(n + 1):
        proof = [tree.range_hash(s, e) for s, e in consistency_proof_ranges(size1, n)]
        assert verify_consistency(size1, n, proof, roots[size1], roots[n])
    size1 = data.draw(st.integers(1, n), label="size1")
    via_ranges = [tree.range_hash(s, e) for s, e in consistency_proof_ranges(size1, n)]
    reference = ref_subproof(size1, tree.leaves, True)
    assert via_ranges == consistency_proof(size1, tree.leaves) == reference


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 2**20), data=st.data())
def test_proof_lengths_follow_the_rfc_recursion(size: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, size - 1), label="index")
    assert len(inclusion_proof_ranges(index, size)) == ref_path_length_fast(index, size)
    size1 = index + 1
    proof = [SOME_HASH] * len(consistency_proof_ranges(size1, size))
    # The verifier takes exactly this length: a well-formed mismatch, not ProofError.
    assert verify_consistency(size1, size, proof, SOME_HASH, SOME_HASH) is (size1 == size)


@settings(max_examples=300, deadline=None)
@given(length=st.integers(0, 2**16), slot=st.integers(0, 2**30))
def test_complete_subtrees_tile_the_range(length: int, slot: int) -> None:
    # Any start that is a multiple of the largest power of two <= length is accepted.
    start = slot << max(length.bit_length() - 1, 0)
    end = start + length
    subtrees = complete_subtrees(start, end)
    at = start
    for level, index in subtrees:
        assert index << level == at
        at += 1 << level
    assert at == end
    levels = [lv for lv, _ in subtrees]
    assert levels == sorted(set(levels), reverse=True)


@settings(max_examples=60, deadline=None)
@given(tree=trees, data=st.data())
def test_fold_of_subtrees_is_the_range_root(tree: Tree, data: st.DataObject) -> None:
    n = len(tree.leaves)
    length = data.draw(st.integers(0, n), label="length")
    step = 1 << max(length.bit_length() - 1, 0)
    start = data.draw(st.integers(0, (n - length) // step), label="slot") * step
    assert tree.range_hash(start, start + length) == ref_mth(tree.leaves[start : start + length])


def _verdict(call: Callable[[], bool]) -> Outcome:
    try:
        return call()
    except ProofError:
        return ProofError


@settings(max_examples=150, deadline=None)
@given(tree=trees, data=st.data())
def test_random_single_mutations_never_verify(tree: Tree, data: st.DataObject) -> None:
    n = len(tree.leaves)
    root = tree.range_hash(0, n)
    index = data.draw(st.integers(0, n - 1), label="index")
    proof = [tree.range_hash(s, e) for s, e in inclusion_proof_ranges(index, n)]
    leaf = tree.leaves[index]

    def inclusion(i: int = index, p: Sequence[bytes] = proof) -> Outcome:
        return _verdict(lambda: verify_inclusion(leaf, i, n, p, root))

    if proof:
        at = data.draw(st.integers(0, len(proof) - 1), label="element")
        bit = data.draw(st.integers(0, HASH_SIZE * 8 - 1), label="bit")
        assert inclusion(p=flipped(proof, at, bit)) is False
        assert inclusion(p=proof[:at] + proof[at + 1 :]) is ProofError
    assert inclusion(p=[*proof, root]) is ProofError
    # Within one tree size the walk pins the index: no other index is accepted.
    other = data.draw(st.integers(0, n - 1), label="other")
    if other != index:
        assert inclusion(i=other) is not True

    size1 = data.draw(st.integers(1, n), label="size1")
    root1 = tree.range_hash(0, size1)
    cproof = [tree.range_hash(s, e) for s, e in consistency_proof_ranges(size1, n)]

    def consistency(
        m: int = size1, p: Sequence[bytes] = cproof, r1: bytes = root1, r2: bytes = root
    ) -> Outcome:
        return _verdict(lambda: verify_consistency(m, n, p, r1, r2))

    if cproof:
        at = data.draw(st.integers(0, len(cproof) - 1), label="c-element")
        bit = data.draw(st.integers(0, HASH_SIZE * 8 - 1), label="c-bit")
        assert consistency(p=flipped(cproof, at, bit)) is False
        assert consistency(r1=root, r2=root1) is False
        assert consistency(p=cproof[:at] + cproof[at + 1 :]) is ProofError
    # Within one new size the walk pins the old size too.
    assert consistency(m=size1 - 1) is not True
    assert consistency(m=size1 + 1) is not True
