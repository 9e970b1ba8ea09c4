"""Merkle tree hashing and proofs in the shape of RFC 9162 (Certificate Transparency 2.0), 2.1.

The audit log of a region is a list of entries; its tree head (size plus root hash) commits to the
whole list. Two proofs make the log checkable by someone who does not hold it:

* an **inclusion proof** shows that one entry is the ``index``-th leaf of the tree of a given size;
* a **consistency proof** shows that the tree of size ``m`` is a prefix of the tree of size ``n``,
  i.e. nothing recorded before was altered, removed or reordered later.

Hashes: ``leaf = SHA-256(0x00 || entry)``, ``node = SHA-256(0x01 || left || right)``; the tree over
``n`` leaves splits at the largest power of two below ``n``. Everything here is pure: the tree's
nodes are read through a ``subtree`` function (the store keeps the roots of complete subtrees, so a
proof costs O(log n) lookups), and the verifiers need nothing but the proof and the tree heads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

HASH_SIZE = 32
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

SubtreeHash = Callable[[int, int], bytes]
"""``subtree(start, end)``: the root hash of leaves ``start .. end-1``."""


class ProofError(ValueError):
    """A proof that does not verify, or a request for one that cannot exist."""


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(_LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def empty_root() -> bytes:
    """The root of the tree with no leaves: the hash of the empty string."""
    return hashlib.sha256(b"").digest()


def split_point(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def is_complete(start: int, end: int) -> bool:
    """Whether ``start .. end-1`` is a complete subtree: a power-of-two size, aligned to it."""
    size = end - start
    return size > 0 and size & (size - 1) == 0 and start % size == 0


def root_from_leaves(leaves: Sequence[bytes]) -> bytes:
    """The tree head hash over ``leaves`` (already leaf-hashed), computed bottom-up."""
    if not leaves:
        return empty_root()
    level = list(leaves)
    # Pairing left to right and carrying an odd last node up unchanged builds exactly the tree
    # that splits at the largest power of two (the odd node is the root of the right subtree).
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def subtree_from(complete: Callable[[int, int], bytes]) -> SubtreeHash:
    """Build ``subtree(start, end)`` for any range out of a lookup of complete subtrees only."""

    def subtree(start: int, end: int) -> bytes:
        if end <= start:
            raise ProofError(f"empty range {start}..{end}")
        if is_complete(start, end):
            return complete(start, end)
        k = split_point(end - start)
        return node_hash(subtree(start, start + k), subtree(start + k, end))

    return subtree


def inclusion_proof(index: int, size: int, subtree: SubtreeHash) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``size`` leaves (RFC 9162 2.1.3.1)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size} leaves")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = split_point(end - start)
        if index < start + k:
            path.append(subtree(start + k, end))
            end = start + k
        else:
            path.append(subtree(start, start + k))
            start += k
    path.reverse()  # the path lists siblings from the leaf up
    return path


def consistency_proof(first: int, second: int, subtree: SubtreeHash) -> list[bytes]:
    """The proof that the tree of ``first`` leaves is a prefix of that of ``second`` (2.1.4.1)."""
    if not 0 < first <= second:
        raise ProofError(f"no consistency proof from size {first} to size {second}")
    proof: list[bytes] = []

    def sub(m: int, start: int, end: int, whole: bool) -> None:
        n = end - start
        if m == n:
            if not whole:
                proof.append(subtree(start, end))
            return
        k = split_point(n)
        if m <= k:
            sub(m, start, start + k, whole)
            proof.append(subtree(start + k, end))
        else:
            sub(m - k, start + k, end, False)
            proof.append(subtree(start, start + k))

    sub(first, 0, second, True)
    return proof


def verify_inclusion(
    index: int, size: int, leaf: bytes, path: Sequence[bytes], root: bytes
) -> None:
    """Check an audit path (RFC 9162 2.1.3.2); raise :class:`ProofError` when it fails."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size} leaves")
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the tree is deep")
    if r != root:
        raise ProofError("inclusion proof does not lead to the tree head's root")


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check a consistency proof (RFC 9162 2.1.4.2); raise :class:`ProofError` when it fails."""
    if not 0 < first <= second:
        raise ProofError(f"no consistency proof from size {first} to size {second}")
    if first == second:
        if proof:
            raise ProofError("a proof between equal sizes must be empty")
        if first_root != second_root:
            raise ProofError("two tree heads of the same size have different roots")
        return
    path = list(proof)
    if not path:
        raise ProofError("empty consistency proof between different sizes")
    if first & (first - 1) == 0:  # a power of two: the old root is itself a node of the new tree
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than the tree is deep")
    if fr != first_root:
        raise ProofError("consistency proof does not reproduce the older root")
    if sr != second_root:
        raise ProofError("consistency proof does not reproduce the newer root")
