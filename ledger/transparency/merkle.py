"""RFC 9162 Merkle trees: hashing, proofs from stored subtrees, and their verification.

The tree over ``n`` leaves splits at the largest power of two smaller than ``n``, so every
subtree a proof names is either *perfect* (a power-of-two run of leaves starting at a
multiple of its size) or the right edge of the tree, which is itself a few perfect ones. The
store keeps every perfect subtree's hash as a node ``(level, index)``, covering leaves
``[index << level, (index + 1) << level)``; a proof at any size is then O(log n) stored
hashes (at most log2(n)^2 for the right edge, read in one query).

Proof generation follows the RFC's recursive definitions (PATH and SUBPROOF, §2.1.3.1 and
§2.1.4.1) over leaf ranges; verification follows the RFC's iterative algorithms (§2.1.3.2
and §2.1.4.2), a second, independent piece of logic, so the tests of one check the other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

Node = tuple[int, int]  # (level, index) of a perfect subtree
Range = tuple[int, int]  # leaves [start, end)


class ProofError(ValueError):
    """A proof that does not verify, or a request no proof can answer."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def split(size: int) -> int:
    """The largest power of two smaller than ``size`` (``size`` >= 2)."""
    return 1 << ((size - 1).bit_length() - 1)


# -- the subtrees a proof names ------------------------------------------------------------


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """PATH(index, D[0:size]) as leaf ranges, from the leaf's sibling up to the root's."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size}")
    ranges: list[Range] = []
    start, end = 0, size
    while end - start > 1:
        k = split(end - start)
        if index < start + k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    ranges.reverse()
    return ranges


def consistency_ranges(first: int, second: int) -> list[Range]:
    """PROOF(first, D[0:second]) as leaf ranges (empty when ``first`` is 0 or ``second``)."""
    if not 0 <= first <= second:
        raise ProofError(f"no consistency proof from {first} to {second}")
    if first in (0, second):
        return []
    ranges: list[Range] = []
    m, start, end, whole = first, 0, second, True  # m and b of SUBPROOF(m, D[start:end], b)
    while m != end - start:
        k = split(end - start)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            m, start, whole = m - k, start + k, False
    if not whole:
        ranges.append((start, end))
    ranges.reverse()
    return ranges


def perfect_nodes(start: int, end: int) -> list[Node]:
    """The perfect subtrees whose RFC combination is MTH(D[start:end]), left to right."""
    nodes: list[Node] = []
    while end > start:
        size = end - start
        if size & (size - 1) == 0 and start % size == 0:
            nodes.append((size.bit_length() - 1, start // size))
            break
        k = split(size)
        nodes.append((k.bit_length() - 1, start // k))
        start += k
    return nodes


def nodes_needed(ranges: Iterable[Range]) -> set[Node]:
    return {node for start, end in ranges for node in perfect_nodes(start, end)}


def range_hash(start: int, end: int, nodes: Mapping[Node, bytes]) -> bytes:
    """MTH(D[start:end]) from stored perfect subtrees (the right edge folds right to left)."""
    if end <= start:
        return EMPTY_ROOT
    return fold([nodes[node] for node in perfect_nodes(start, end)])


def fold(hashes: Sequence[bytes]) -> bytes:
    """The root over perfect subtrees, largest first: folded right to left (RFC 9162's
    split puts the largest power of two on the left)."""
    if not hashes:
        return EMPTY_ROOT
    root = hashes[-1]
    for left in reversed(hashes[:-1]):
        root = node_hash(left, root)
    return root


def root_nodes(size: int) -> list[Node]:
    return perfect_nodes(0, size)


def frontier_levels(size: int) -> list[int]:
    """The levels of the perfect subtrees that make up a tree of ``size``, largest first."""
    return [level for level in range(size.bit_length() - 1, -1, -1) if size >> level & 1]


def leaves_of(node: Node) -> Range:
    level, index = node
    return index << level, (index + 1) << level


def perfect_hash(leaves: Sequence[bytes]) -> bytes:
    """MTH of a power-of-two run of leaf hashes, pairwise level by level."""
    level = list(leaves)
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


# -- growing ------------------------------------------------------------------------------


@dataclass
class Frontier:
    """The perfect subtrees that make up a tree of ``size`` leaves, largest first: all that
    is needed to append leaves and to know the root."""

    size: int = 0
    hashes: list[bytes] = field(default_factory=list)

    @classmethod
    def at(cls, size: int, nodes: Mapping[Node, bytes]) -> Frontier:
        return cls(size, [nodes[node] for node in root_nodes(size)])

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add one leaf hash; the new perfect nodes ``(level, index, hash)``, leaf first."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, not {len(leaf)}")
        # A leaf at a time (the offline checks feed one per event): merge while the new
        # leaf's index is odd, i.e. while it completes a perfect subtree.
        created = [(0, self.size, leaf)]
        self.hashes.append(leaf)
        level, index = 0, self.size
        while index & 1:
            right = self.hashes.pop()
            merged = node_hash(self.hashes.pop(), right)
            self.hashes.append(merged)
            level, index = level + 1, index >> 1
            created.append((level, index, merged))
        self.size += 1
        return created

    def extend(self, leaves: bytes, from_level: int = 0) -> list[tuple[int, int, bytes]]:
        """Add the concatenated leaf hashes; the new perfect nodes of at least
        ``from_level``, as ``append`` would give them one leaf at a time (the tree's growth:
        a level at a time, no list per leaf)."""
        if len(leaves) % HASH_SIZE:
            raise ValueError(f"leaf hashes are {HASH_SIZE} bytes each, not {len(leaves)} in all")
        # Level by level, a list at a time: at level l the new nodes start at index
        # size >> l; when that is odd, the old frontier's subtree of that level is their
        # left sibling. What stays unpaired at a level is the new frontier's node there.
        old = self.size
        frontier = dict(zip(frontier_levels(old), self.hashes, strict=True))
        run = [leaves[offset : offset + HASH_SIZE] for offset in range(0, len(leaves), HASH_SIZE)]
        created: list[tuple[int, int, bytes]] = []
        level, start = 0, old
        while run:
            if level >= from_level:
                created.extend((level, start + i, node) for i, node in enumerate(run))
            if start & 1:
                run.insert(0, frontier.pop(level))
                start -= 1
            if len(run) & 1:
                frontier[level] = run.pop()
            sha = hashlib.sha256
            run = [sha(b"\x01" + run[i] + run[i + 1]).digest() for i in range(0, len(run), 2)]
            level, start = level + 1, start >> 1
        self.size = old + len(leaves) // HASH_SIZE
        self.hashes = [frontier[level] for level in frontier_levels(self.size)]
        return created

    def root(self) -> bytes:
        return fold(self.hashes)


def tree_root(leaves: Sequence[bytes]) -> bytes:
    """The root over leaf *inputs* (each hashed as a leaf), for offline checks."""
    frontier = Frontier()
    for data in leaves:
        frontier.append(leaf_hash(data))
    return frontier.root()


# -- verifying (RFC 9162 §2.1.3.2 and §2.1.4.2) ---------------------------------------------


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ``ProofError`` unless ``proof`` shows the leaf hash at ``index`` in ``root``."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of {size}")
    if any(len(p) != HASH_SIZE for p in proof) or len(leaf) != HASH_SIZE:
        raise ProofError("every hash must be 32 bytes")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("the inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the inclusion proof is too short")
    if r != root:
        raise ProofError("the inclusion proof does not lead to the root")


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise ``ProofError`` unless the tree of ``second`` extends the tree of ``first``."""
    if not 0 <= first <= second:
        raise ProofError(f"a tree of {first} cannot extend to a tree of {second}")
    if any(len(p) != HASH_SIZE for p in proof):
        raise ProofError("every hash must be 32 bytes")
    if first == second:
        if proof:
            raise ProofError("a proof between equal sizes must be empty")
        if first_root != second_root:
            raise ProofError("two different roots for the same size")
        return
    if first == 0:
        if proof:
            raise ProofError("a proof from the empty tree must be empty")
        if first_root != EMPTY_ROOT:
            raise ProofError("the empty tree has another root")
        return
    if not proof:
        raise ProofError("the consistency proof is empty")
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the consistency proof is too short")
    if fr != first_root:
        raise ProofError("the consistency proof does not lead to the earlier root")
    if sr != second_root:
        raise ProofError("the consistency proof does not lead to the later root")
