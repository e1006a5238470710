"""CompactRange: published compact trees and roots, then properties against root_hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.compact import CompactRange
from ledger.errors import ProofError
from ledger.merkle import EMPTY_ROOT, complete_subtrees, root_hash

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "testdata" / "rfc6962_vectors.json").read_text()
)
LEAF_HASHES = [hashlib.sha256(b"\x00" + bytes.fromhex(x)).digest() for x in VECTORS["leaves"]]
ROOTS = {r["size"]: bytes.fromhex(r["root"]) for r in VECTORS["roots"]}
NODES = [[bytes.fromhex(x) for x in row] for row in VECTORS["node_hashes_by_level"]]
COMPACT = {
    c["size"]: [NODES[lv][ix] for lv, ix in c["subtrees"]] for c in VECTORS["compact_ranges"]
}


def test_empty() -> None:
    rng = CompactRange()
    assert rng.size == 0
    assert rng.hashes == []
    assert rng.root() == EMPTY_ROOT == ROOTS[0]


def test_published_compact_trees_roots_and_nodes() -> None:
    rng = CompactRange()
    for size, leaf in enumerate(LEAF_HASHES, start=1):
        completed = rng.append(leaf)
        assert rng.size == size
        assert rng.hashes == COMPACT[size]
        assert rng.root() == ROOTS[size]
        # The leaf completes one subtree per trailing one bit of the old size.
        old = size - 1
        levels = (old ^ size).bit_length() - 1
        want = [(lv, old >> lv, NODES[lv][old >> lv]) for lv in range(1, levels + 1)]
        assert completed == want


def test_append_leaf_agrees_with_append() -> None:
    a, b = CompactRange(), CompactRange()
    for leaf in LEAF_HASHES:
        a.append(leaf)
        b.append_leaf(leaf)
        assert (a.size, a.hashes, a.root()) == (b.size, b.hashes, b.root())


def test_append_nodes_agrees_with_append() -> None:
    a, b = CompactRange(), CompactRange()
    for leaf in LEAF_HASHES:
        completed = a.append(leaf)
        assert b.append_nodes(leaf) == b"".join(h for _, _, h in completed)
        assert (a.size, a.hashes, a.root()) == (b.size, b.hashes, b.root())


def test_a_copy_is_independent() -> None:
    rng = CompactRange.from_subtrees(5, COMPACT[5])
    copy = rng.copy()
    for leaf in LEAF_HASHES[5:]:
        copy.append_nodes(leaf)
    assert (rng.size, rng.hashes, rng.root()) == (5, COMPACT[5], ROOTS[5])
    assert (copy.size, copy.hashes, copy.root()) == (8, COMPACT[8], ROOTS[8])
    rng.append_leaf(LEAF_HASHES[5])
    assert copy.root() == ROOTS[8]
    assert rng.root() == ROOTS[6]


def test_hashes_is_a_copy() -> None:
    rng = CompactRange.from_subtrees(3, COMPACT[3])
    rng.hashes.clear()
    assert rng.hashes == COMPACT[3]
    assert rng.root() == ROOTS[3]


@pytest.mark.parametrize("append", ["append", "append_leaf", "append_nodes"])
def test_a_bad_leaf_hash_is_refused_and_changes_nothing(append: str) -> None:
    rng = CompactRange.from_subtrees(7, COMPACT[7])
    with pytest.raises(ProofError, match="leaf hash: got 31 bytes, want 32"):
        getattr(rng, append)(LEAF_HASHES[7][:31])
    assert (rng.size, rng.hashes) == (7, COMPACT[7])
    getattr(rng, append)(LEAF_HASHES[7])
    assert rng.root() == ROOTS[8]


@pytest.mark.parametrize(
    ("size", "hashes", "message"),
    [
        (3, COMPACT[2], "compact range of size 3: got 1 hashes, want 2"),
        (4, COMPACT[3], "compact range of size 4: got 2 hashes, want 1"),
        (0, COMPACT[1], "compact range of size 0: got 1 hashes, want 0"),
        (-1, [], "tree size: got -1, want >= 0"),
        (2, [b"\x00" * 33], r"hashes\[0\]: got 33 bytes, want 32"),
    ],
)
def test_from_subtrees_refuses_the_wrong_shape(
    size: int, hashes: list[bytes], message: str
) -> None:
    with pytest.raises(ProofError, match=message):
        CompactRange.from_subtrees(size, hashes)


@pytest.mark.parametrize("size", range(9))
def test_from_subtrees_with_published_hashes(size: int) -> None:
    rng = CompactRange.from_subtrees(size, COMPACT[size])
    assert rng.size == size
    assert rng.root() == ROOTS[size]
    for leaf in LEAF_HASHES[size:]:
        rng.append(leaf)
    assert rng.root() == ROOTS[8]


# -- properties ------------------------------------------------------------------------------

leaf_lists = st.builds(
    lambda n, salt: [hashlib.sha256(salt + i.to_bytes(2, "big")).digest() for i in range(n)],
    st.integers(0, 300),
    st.binary(max_size=4),
)


@settings(max_examples=30, deadline=None)
@given(leaves=leaf_lists)
def test_root_matches_root_hash_for_every_prefix(leaves: list[bytes]) -> None:
    rng = CompactRange()
    assert rng.root() == root_hash([])
    for n, leaf in enumerate(leaves, start=1):
        rng.append_leaf(leaf)
        assert rng.root() == root_hash(leaves[:n])


@settings(max_examples=60, deadline=None)
@given(leaves=leaf_lists)
def test_completed_subtrees_are_the_hashes_of_their_leaves(leaves: list[bytes]) -> None:
    rng = CompactRange()
    persisted: dict[tuple[int, int], bytes] = {}
    for size, leaf in enumerate(leaves):
        completed = rng.append(leaf)
        assert [lv for lv, _, _ in completed] == list(range(1, len(completed) + 1))
        for level, index, h in completed:
            assert h == root_hash(leaves[index << level : (index + 1) << level])
            # The subtree ends with this leaf, and nothing completes a subtree twice.
            assert (index + 1) << level == size + 1
            assert (level, index) not in persisted
            persisted[level, index] = h
        persisted[0, size] = leaf
        # What was persisted is enough to rebuild the range, as a store does after a restart.
        subtrees = complete_subtrees(0, rng.size)
        assert rng.hashes == [persisted[s] for s in subtrees]


@settings(max_examples=40, deadline=None)
@given(leaves=leaf_lists, data=st.data())
def test_append_nodes_after_a_rebuild_matches_the_stored_form(
    leaves: list[bytes], data: st.DataObject
) -> None:
    # What a store keeps per entry (the joined nodes) from a range rebuilt mid-way, then copied.
    cut = data.draw(st.integers(0, len(leaves)), label="cut")
    whole = CompactRange()
    expected = [b"".join(h for _, _, h in whole.append(leaf)) for leaf in leaves]
    head = CompactRange()
    for leaf in leaves[:cut]:
        head.append_leaf(leaf)
    rebuilt = CompactRange.from_subtrees(head.size, head.hashes).copy()
    assert [rebuilt.append_nodes(leaf) for leaf in leaves[cut:]] == expected[cut:]
    assert rebuilt.root() == whole.root() == root_hash(leaves)


@settings(max_examples=60, deadline=None)
@given(leaves=leaf_lists, data=st.data())
def test_from_subtrees_round_trips(leaves: list[bytes], data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(leaves)), label="cut")
    whole = CompactRange()
    for leaf in leaves[:cut]:
        whole.append(leaf)
    copy = CompactRange.from_subtrees(whole.size, whole.hashes)
    assert (copy.size, copy.hashes, copy.root()) == (whole.size, whole.hashes, whole.root())
    for leaf in leaves[cut:]:
        assert copy.append(leaf) == whole.append(leaf)
    assert copy.root() == whole.root() == root_hash(leaves)
