"""RFC 9162 hashing and proofs: the CT project's published vectors, pymerkle as an
independent oracle, and hypothesis over sizes, indices and single-byte changes."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymerkle import InmemoryTree

from ledger.transparency import merkle
from ledger.transparency.merkle import (
    EMPTY_ROOT,
    Frontier,
    ProofError,
    consistency_ranges,
    inclusion_ranges,
    leaf_hash,
    range_hash,
    verify_consistency,
    verify_inclusion,
)

# transparency-dev/merkle testonly/constants.go (LeafInputs, RootHashes), the same as
# google/certificate-transparency cpp/merkletree/merkle_tree_test.cc.
CT_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# transparency-dev/merkle testdata/inclusion/*/happy-path.json (0-based leaf indices).
CT_INCLUSION = {
    (0, 1): [],
    (0, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (5, 8): [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 3): ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
    (1, 5): [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
}
# transparency-dev/merkle testdata/consistency/*/happy-path.json.
CT_CONSISTENCY = {
    (1, 1): [],
    (1, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (6, 8): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 5): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
    (6, 7): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
}


class StoredTree:
    """A tree grown the way the server grows it, its nodes in a dict instead of a table."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.leaves = leaves
        self.nodes: dict[tuple[int, int], bytes] = {}
        self.roots = [EMPTY_ROOT]
        frontier = Frontier()
        for data in leaves:
            for level, index, digest in frontier.append(leaf_hash(data)):
                self.nodes[(level, index)] = digest
            self.roots.append(frontier.root())

    def inclusion(self, index: int, size: int) -> list[bytes]:
        return [range_hash(a, b, self.nodes) for a, b in inclusion_ranges(index, size)]

    def consistency(self, first: int, second: int) -> list[bytes]:
        return [range_hash(a, b, self.nodes) for a, b in consistency_ranges(first, second)]


CT = StoredTree(CT_LEAVES)


def test_hashing_matches_the_rfc_6962_known_answers() -> None:
    # transparency-dev/merkle rfc6962/rfc6962_test.go
    assert EMPTY_ROOT.hex() == CT_ROOTS[0]
    assert leaf_hash(b"L123456").hex() == (
        "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    )
    assert merkle.node_hash(b"N123", b"N456").hex() == (
        "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"
    )


@pytest.mark.parametrize("size", range(9))
def test_roots_of_zero_to_eight_leaves_match_the_ct_vectors(size: int) -> None:
    assert CT.roots[size].hex() == CT_ROOTS[size]
    assert merkle.tree_root(CT_LEAVES[:size]).hex() == CT_ROOTS[size]
    assert range_hash(0, size, CT.nodes).hex() == CT_ROOTS[size]


@pytest.mark.parametrize(("index", "size"), sorted(CT_INCLUSION))
def test_inclusion_paths_match_the_ct_vectors(index: int, size: int) -> None:
    proof = CT.inclusion(index, size)
    assert [p.hex() for p in proof] == CT_INCLUSION[(index, size)]
    verify_inclusion(index, size, leaf_hash(CT_LEAVES[index]), proof, CT.roots[size])


@pytest.mark.parametrize(("first", "second"), sorted(CT_CONSISTENCY))
def test_consistency_proofs_match_the_ct_vectors(first: int, second: int) -> None:
    proof = CT.consistency(first, second)
    assert [p.hex() for p in proof] == CT_CONSISTENCY[(first, second)]
    verify_consistency(first, second, CT.roots[first], CT.roots[second], proof)


def oracle_leaves(count: int, seed: int) -> list[bytes]:
    return [hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(count)]


@given(size=st.integers(1, 3000), seed=st.integers(0, 2**32), pick=st.randoms())
def test_roots_and_inclusion_paths_agree_with_pymerkle(size: int, seed: int, pick: object) -> None:
    leaves = oracle_leaves(size, seed)
    ours = StoredTree(leaves)
    theirs = InmemoryTree(algorithm="sha256")  # its default is RFC 6962's 0x00/0x01 prefixes
    for data in leaves:
        theirs.append_entry(data)
    import random

    assert isinstance(pick, random.Random)
    for smaller in {size, pick.randint(0, size), pick.randint(1, size)}:
        assert ours.roots[smaller] == theirs.get_root(smaller)
    index = pick.randrange(size)
    # pymerkle numbers leaves from 1 and puts the leaf's own hash first in its path.
    path = theirs.prove_inclusion(index + 1, size).path
    assert path[0] == leaf_hash(leaves[index])
    assert ours.inclusion(index, size) == list(path[1:])


def flip(data: bytes, at: int) -> bytes:
    at %= len(data)
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


@given(size=st.integers(1, 300), data=st.data())
def test_every_inclusion_proof_verifies_and_fails_when_anything_changes(
    size: int, data: st.DataObject
) -> None:
    tree = StoredTree(oracle_leaves(size, size))
    index = data.draw(st.integers(0, size - 1))
    proof = tree.inclusion(index, size)
    leaf, root = leaf_hash(tree.leaves[index]), tree.roots[size]
    verify_inclusion(index, size, leaf, proof, root)
    byte = data.draw(st.integers(0, 10_000))
    changed: list[tuple[int, int, bytes, list[bytes], bytes]] = [
        (index, size, flip(leaf, byte), proof, root),
        (index, size, leaf, proof, flip(root, byte)),
        (index, size, leaf, [*proof, root], root),
    ]
    # Another size is checked against that size's root: a root binds its size only
    # through the signed checkpoint, so the root of the proof's size could still match.
    bigger = StoredTree(oracle_leaves(size + 1, size))
    changed.append((index, size + 1, leaf, proof, bigger.roots[size + 1]))
    if proof:
        at = data.draw(st.integers(0, len(proof) - 1))
        changed.append(
            (index, size, leaf, [*proof[:at], flip(proof[at], byte), *proof[at + 1 :]], root)
        )
        changed.append((index, size, leaf, proof[:-1], root))
    if size > 1:
        other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index))
        changed.append((other, size, leaf, proof, root))
        if index < size - 1:
            changed.append((index, size - 1, leaf, proof, tree.roots[size - 1]))
    for args in changed:
        with pytest.raises(ProofError):
            verify_inclusion(*args)


@given(second=st.integers(1, 300), data=st.data())
def test_every_consistency_proof_verifies_and_fails_when_anything_changes(
    second: int, data: st.DataObject
) -> None:
    tree = StoredTree(oracle_leaves(second, second))
    first = data.draw(st.integers(1, second))
    proof = tree.consistency(first, second)
    r1, r2 = tree.roots[first], tree.roots[second]
    verify_consistency(first, second, r1, r2, proof)
    byte = data.draw(st.integers(0, 10_000))
    changed: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
        (first, second, flip(r1, byte), r2, proof),
        (first, second, r1, flip(r2, byte), proof),
        (first, second, r1, r2, [*proof, r1]),
    ]
    if proof:
        at = data.draw(st.integers(0, len(proof) - 1))
        changed.append(
            (first, second, r1, r2, [*proof[:at], flip(proof[at], byte), *proof[at + 1 :]])
        )
        changed.append((first, second, r1, r2, proof[:-1]))
        bigger = StoredTree(oracle_leaves(second + 1, second))
        changed.append((first, second + 1, r1, bigger.roots[second + 1], proof))
    if first > 1:
        changed.append((first - 1, second, tree.roots[first - 1], r2, proof))
    if first < second:
        changed.append((second, first, r2, r1, proof))
    for args in changed:
        with pytest.raises(ProofError):
            verify_consistency(*args)


@pytest.mark.parametrize("first", [1, 2, 4, 8, 16, 32])
def test_consistency_from_a_power_of_two_is_checked_against_the_earlier_root(first: int) -> None:
    """The case a hash-tree library once got wrong: the proof omits the earlier root, and a
    verifier that does not prepend the caller's root accepts a forged one."""
    tree = StoredTree(oracle_leaves(50, 7))
    proof = tree.consistency(first, 50)
    verify_consistency(first, 50, tree.roots[first], tree.roots[50], proof)
    with pytest.raises(ProofError):
        verify_consistency(first, 50, hashlib.sha256(b"forged").digest(), tree.roots[50], proof)


def test_edges_and_refusals() -> None:
    root = CT.roots[8]
    verify_consistency(0, 8, EMPTY_ROOT, root, [])  # every tree extends the empty one
    verify_consistency(8, 8, root, root, [])
    for bad in (
        lambda: verify_consistency(0, 8, root, root, []),
        lambda: verify_consistency(0, 8, EMPTY_ROOT, root, [root]),
        lambda: verify_consistency(8, 8, root, CT.roots[7], []),
        lambda: verify_consistency(8, 8, root, root, [root]),
        lambda: verify_consistency(3, 8, CT.roots[3], root, []),
        lambda: verify_consistency(9, 8, root, root, [root]),
        lambda: verify_inclusion(8, 8, root, [], root),
        lambda: verify_inclusion(0, 0, root, [], root),
        lambda: verify_inclusion(0, 2, root, [b"short"], root),
        lambda: inclusion_ranges(3, 3),
        lambda: consistency_ranges(4, 3),
    ):
        with pytest.raises(ProofError):
            bad()


@given(
    size=st.integers(0, 300),
    chunks=st.lists(st.integers(1, 40), min_size=1, max_size=8),
    from_level=st.integers(0, 6),
)
def test_growing_in_chunks_from_a_level_keeps_exactly_those_nodes(
    size: int, chunks: list[int], from_level: int
) -> None:
    tree = StoredTree(oracle_leaves(size, 3))
    frontier, grown, start, turn = Frontier(), {}, 0, 0
    while start < size:
        end = min(size, start + chunks[turn % len(chunks)])
        joined = b"".join(leaf_hash(data) for data in tree.leaves[start:end])
        grown.update({(lv, i): h for lv, i, h in frontier.extend(joined, from_level)})
        start, turn = end, turn + 1
    assert grown == {node: h for node, h in tree.nodes.items() if node[0] >= from_level}
    assert frontier.root() == tree.roots[size]


def test_the_frontier_grows_exactly_the_perfect_subtrees() -> None:
    tree = StoredTree(oracle_leaves(37, 1))
    expected = {(level, index) for level in range(6) for index in range(37 >> level)}
    assert set(tree.nodes) == expected
    assert Frontier.at(37, tree.nodes).root() == tree.roots[37]
