"""RFC 9162 Merkle hashing and proofs: known vectors, every small tree, and tampered proofs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fyp.governance import merkle

# The eight leaves of the Certificate Transparency reference tests and the root they produce.
CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
CT_ROOT_8 = "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


def _leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(f"entry {i}".encode()) for i in range(n)]


def _subtree(leaves: list[bytes]) -> merkle.SubtreeHash:
    return merkle.subtree_from(lambda s, e: merkle.root_from_leaves(leaves[s:e]))


def test_roots_match_the_reference_vectors() -> None:
    hashed = [merkle.leaf_hash(leaf) for leaf in CT_LEAVES]
    assert merkle.root_from_leaves(hashed).hex() == CT_ROOT_8
    assert merkle.root_from_leaves([]).hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert merkle.root_from_leaves(hashed[:1]) == hashed[0]


def test_the_tree_splits_at_the_largest_power_of_two() -> None:
    leaves = _leaves(7)
    expected = merkle.node_hash(
        merkle.node_hash(
            merkle.node_hash(leaves[0], leaves[1]), merkle.node_hash(leaves[2], leaves[3])
        ),
        merkle.node_hash(merkle.node_hash(leaves[4], leaves[5]), leaves[6]),
    )
    assert merkle.root_from_leaves(leaves) == expected
    assert _subtree(leaves)(0, 7) == expected


def test_every_inclusion_proof_of_small_trees_verifies() -> None:
    for size in range(1, 34):
        leaves = _leaves(size)
        root = merkle.root_from_leaves(leaves)
        for index in range(size):
            path = merkle.inclusion_proof(index, size, _subtree(leaves))
            merkle.verify_inclusion(index, size, leaves[index], path, root)


def test_every_consistency_proof_of_small_trees_verifies() -> None:
    leaves = _leaves(33)
    roots = [merkle.root_from_leaves(leaves[:n]) for n in range(34)]
    subtree = _subtree(leaves)
    for second in range(1, 34):
        for first in range(1, second + 1):
            proof = merkle.consistency_proof(first, second, subtree)
            merkle.verify_consistency(first, second, roots[first], roots[second], proof)


@given(st.data())
def test_a_tampered_inclusion_proof_never_verifies(data: st.DataObject) -> None:
    size = data.draw(st.integers(2, 40))
    index = data.draw(st.integers(0, size - 1))
    leaves = _leaves(size)
    root = merkle.root_from_leaves(leaves)
    path = merkle.inclusion_proof(index, size, _subtree(leaves))
    kind = data.draw(st.sampled_from(["index", "size", "path", "leaf", "drop", "extra"]))
    with pytest.raises(merkle.ProofError):
        if kind == "index":
            other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index))
            merkle.verify_inclusion(other, size, leaves[index], path, root)
        elif kind == "size":
            # The proof checked against another size's genuine root (a head for a different size).
            other = data.draw(st.integers(1, 2 * size).filter(lambda n: n != size))
            other_root = merkle.root_from_leaves(_leaves(2 * size)[:other])
            merkle.verify_inclusion(index, other, leaves[index], path, other_root)
        elif kind == "path":
            at = data.draw(st.integers(0, len(path) - 1))
            bad = [*path[:at], merkle.leaf_hash(b"forged"), *path[at + 1 :]]
            merkle.verify_inclusion(index, size, leaves[index], bad, root)
        elif kind == "leaf":
            merkle.verify_inclusion(index, size, merkle.leaf_hash(b"forged"), path, root)
        elif kind == "drop":
            merkle.verify_inclusion(index, size, leaves[index], path[:-1], root)
        else:
            merkle.verify_inclusion(index, size, leaves[index], [*path, root], root)


@given(st.data())
def test_a_consistency_proof_for_other_sizes_or_roots_never_verifies(data: st.DataObject) -> None:
    second = data.draw(st.integers(3, 40))
    first = data.draw(st.integers(1, second - 1))
    leaves = _leaves(second)
    roots = [merkle.root_from_leaves(leaves[:n]) for n in range(second + 1)]
    proof = merkle.consistency_proof(first, second, _subtree(leaves))
    kind = data.draw(st.sampled_from(["first", "second", "old_root", "new_root", "element"]))
    with pytest.raises(merkle.ProofError):
        if kind == "first":
            other = data.draw(st.integers(1, second - 1).filter(lambda m: m != first))
            merkle.verify_consistency(other, second, roots[other], roots[second], proof)
        elif kind == "second":
            other = data.draw(st.integers(first + 1, 2 * second).filter(lambda n: n != second))
            other_root = merkle.root_from_leaves(_leaves(2 * second)[:other])
            merkle.verify_consistency(first, other, roots[first], other_root, proof)
        elif kind == "old_root":
            forged = [*leaves[: first - 1], merkle.leaf_hash(b"forged")]
            merkle.verify_consistency(
                first, second, merkle.root_from_leaves(forged), roots[second], proof
            )
        elif kind == "new_root":
            merkle.verify_consistency(first, second, roots[first], roots[second - 1], proof)
        else:
            at = data.draw(st.integers(0, len(proof) - 1))
            bad = [*proof[:at], merkle.leaf_hash(b"forged"), *proof[at + 1 :]]
            merkle.verify_consistency(first, second, roots[first], roots[second], bad)


def test_proofs_outside_the_tree_are_refused() -> None:
    subtree = _subtree(_leaves(4))
    with pytest.raises(merkle.ProofError):
        merkle.inclusion_proof(4, 4, subtree)
    with pytest.raises(merkle.ProofError):
        merkle.consistency_proof(5, 4, subtree)
    with pytest.raises(merkle.ProofError):
        merkle.consistency_proof(0, 4, subtree)
