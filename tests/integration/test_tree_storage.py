"""The stored tree against the pure one: batches of any size, nodes stored from 16 leaves up
and computed below, every root and proof the same as over the leaves in memory."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, create_engine

from ledger.database_url import sqlalchemy_url
from ledger.storage.tree import (
    STRATUM,
    TREE_LOCK,
    Growth,
    TreeDamaged,
    consistency_proof,
    hashes_of,
    root_at,
    tree_size,
)
from ledger.transparency.merkle import (
    inclusion_ranges,
    leaf_hash,
    tree_root,
    verify_consistency,
    verify_inclusion,
)
from tests.support import DatabaseFactory

LEAVES = 300
# The tree grows only behind the commit-safe point, which is the whole cluster's: under
# xdist another test may hold a transaction open in another database for a while (the
# held-stream tests do), and growth waits for it rather than take nothing.
HELD_FOR_AT_MOST = 60.0


def behind_another_transaction(since: float) -> None:
    """Growth found nothing new: wait a little for whoever holds the safe point back."""
    assert time.monotonic() - since < HELD_FOR_AT_MOST, "the commit-safe point stayed behind"
    time.sleep(0.05)


def grow(conn: Connection, growth: Growth, batch: int, size: int) -> None:
    """Grow the tree to ``size`` leaves, ``batch`` at most at a time."""
    since = time.monotonic()
    while True:
        with conn.begin():
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({TREE_LOCK})")
            added = growth.extend(conn, batch)
            if tree_size(conn) >= size:
                return
        if not added:
            behind_another_transaction(since)


def insert_events(url: str, count: int) -> list[bytes]:
    """``count`` events (a multiple of 30) inserted as a writer would, hashes made up; their
    hashes in global order."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sessions (id, patient_id) SELECT md5(s::text)::uuid, 'p' || s"
            " FROM generate_series(1, 30) AS s ON CONFLICT DO NOTHING"
        )
        first = conn.execute("SELECT coalesce(max(version), 0) FROM events").fetchone()
        assert first is not None
        for v in range(first[0] + 1, first[0] + count // 30 + 1):
            conn.execute(
                "INSERT INTO events (session_id, version, type, status, progress, actor,"
                " recorded_at, prev_hash, hash) SELECT md5(s::text)::uuid, %(v)s, 'progress',"
                " 'queued', 0, 'test', now(), repeat('0', 64),"
                " encode(sha256((s * 1000 + %(v)s)::text::bytea), 'hex')"
                " FROM generate_series(1, 30) AS s",
                {"v": v},
            )
        return [
            bytes.fromhex(h)
            for (h,) in conn.execute("SELECT hash FROM events ORDER BY tx_id, position")
        ]


@pytest.fixture(scope="module")
def grown(databases: DatabaseFactory) -> Iterator[tuple[Connection, list[bytes]]]:
    """A ledger of LEAVES events (inserted as a writer would, hashes made up), its tree
    grown in batches of 1 to 40 leaves: batch edges fall everywhere against the 16-leaf
    stratum; some growth rolled back, the growers taking turns."""
    url = databases.create()
    hashes = insert_events(url, LEAVES)
    engine = create_engine(sqlalchemy_url(url))
    batch = [1, 40, 7, 16, 3, 33, 15, 17, 2, 31]
    # Two growers, as two processes would be: each keeps the frontier it computed, and
    # must read it again when the other grew the tree or its own transaction rolled back.
    growers = [Growth(), Growth()]
    with engine.connect() as conn:
        turn, since = 0, time.monotonic()
        while True:
            grower = growers[(turn // 3) % 2]
            with conn.begin() as transaction:
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({TREE_LOCK})")
                added = grower.extend(conn, batch[turn % len(batch)])
                if added and turn % 5 == 4:
                    transaction.rollback()  # grown, then lost: the next turn grows it again
                elif not added and tree_size(conn) == len(hashes):
                    break
            if added:
                turn += 1
            else:
                behind_another_transaction(since)
        yield conn, hashes
    engine.dispose()


def test_the_batches_hold_every_event_once(grown: tuple[Connection, list[bytes]]) -> None:
    conn, hashes = grown
    assert tree_size(conn) == len(hashes) == LEAVES
    assert conn.exec_driver_sql("SELECT min(level) FROM merkle_nodes").scalar() == STRATUM
    leaves = conn.exec_driver_sql(
        "SELECT string_agg(leaf_hashes, ''::bytea ORDER BY first_leaf) FROM merkle_batches"
    ).scalar()
    assert leaves is not None
    assert bytes(leaves) == b"".join(leaf_hash(h) for h in hashes)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_roots_and_proofs_equal_the_pure_trees(
    grown: tuple[Connection, list[bytes]], data: st.DataObject
) -> None:
    conn, hashes = grown
    second = data.draw(st.integers(1, LEAVES), label="second")
    first = data.draw(st.integers(1, second), label="first")
    index = data.draw(st.integers(0, second - 1), label="index")
    root = root_at(conn, second)
    assert root == tree_root(hashes[:second])
    assert root_at(conn, first) == tree_root(hashes[:first])
    proof = consistency_proof(conn, first, second)
    verify_consistency(first, second, tree_root(hashes[:first]), root, proof)
    path = hashes_of(conn, inclusion_ranges(index, second))
    verify_inclusion(index, second, leaf_hash(hashes[index]), path, root)


def test_a_slice_beyond_the_tree_is_named_damaged(
    grown: tuple[Connection, list[bytes]],
) -> None:
    conn, _ = grown
    with pytest.raises(TreeDamaged, match="the tree lacks"):
        root_at(conn, LEAVES + 5)  # leaves 300 to 304 are in no batch


@pytest.mark.parametrize(
    "tampering",
    [
        "DELETE FROM merkle_nodes WHERE level = 4 AND node_index = 4",
        "UPDATE merkle_nodes SET hash = sha256(hash) WHERE level = 4 AND node_index = 4",
    ],
)
def test_a_grower_refuses_a_frontier_changed_behind_its_back(
    databases: DatabaseFactory, tampering: str
) -> None:
    """A node of the frontier this grower kept (here (4, 4): leaves 64 to 79, in no
    checkpoint's root yet) removed or rewritten: the next batch is refused, nothing stored,
    and so it stays until someone looks (a later batch would merge the node away)."""
    url = databases.create()
    insert_events(url, 90)
    engine = create_engine(sqlalchemy_url(url))
    growth = Growth()
    with engine.connect() as conn:
        grow(conn, growth, 64, 90)  # 64, then 90 leaves: 64 + 16 + 8 + 2, (4, 4) the 16
        insert_events(url, 60)
        with conn.begin():
            assert tree_size(conn) == 90
            conn.exec_driver_sql(
                "ALTER TABLE merkle_nodes DISABLE TRIGGER merkle_nodes_append_only"
            )
            conn.exec_driver_sql(tampering)
            conn.exec_driver_sql("ALTER TABLE merkle_nodes ENABLE TRIGGER merkle_nodes_append_only")
        for _ in range(2):  # every round, not once
            with conn.begin():
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({TREE_LOCK})")
                with pytest.raises(TreeDamaged, match="not the one it was grown from"):
                    growth.extend(conn, 64)
        with conn.begin():
            assert tree_size(conn) == 90
    engine.dispose()
