"""The Merkle tree's tables: growing the tree behind the global order, reading proofs.

Leaf ``i`` is the ``i``-th event of the commit-safe global order (:mod:`.global_order`),
its input the event's 32-byte ``hash``. Growing reads the next events after the last
leaf's position, appends their leaves to the frontier (the O(log n) perfect subtrees of
the tree so far) and inserts every new perfect node, all in one transaction under an
advisory lock, so one process at a time grows it and a crash leaves no half-grown tree.
It never runs inside an append's transaction.

The functions here take a synchronous SQLAlchemy ``Connection``: the migration that builds
the tree for an existing ledger calls them directly, and the server through
``AsyncConnection.run_sync``, so one piece of code does both.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Connection, Text, TextClause, cast, func, literal, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger import metrics
from ledger.errors import LedgerError
from ledger.storage.global_order import visible_after
from ledger.storage.pool import Pool
from ledger.storage.tables import Xid8, events, merkle_leaves
from ledger.transparency.merkle import (
    Frontier,
    Node,
    Range,
    consistency_ranges,
    leaf_hash,
    nodes_needed,
    range_hash,
    root_nodes,
)

# pg_advisory_xact_lock key: "one process grows the tree and signs its head".
TREE_LOCK = 0x6C656467_74726565  # "ledg" "tree"
GROW_BATCH = 2000

_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)").bindparams(key=TREE_LOCK)
# In psycopg's parameter style: the proof routes run them on the hot-path pool; the
# checkpointer and the migration, through SQLAlchemy (``named``).
NODES_SQL = (
    "SELECT n.level, n.node_index, n.hash FROM merkle_nodes n"
    " JOIN unnest(CAST(%(levels)s AS smallint[]), CAST(%(indexes)s AS bigint[]))"
    " AS w(level, node_index) USING (level, node_index)"
)
# The latest signed size, the leaf of the event at a position, and whether it exists.
PLACEMENT_SQL = (
    "SELECT (SELECT max(tree_size) FROM checkpoints),"
    " (SELECT leaf_index FROM merkle_leaves WHERE position = %(position)s),"
    " EXISTS (SELECT 1 FROM events WHERE position = %(position)s)"
)
SIGNED_SQL = "SELECT max(tree_size) FROM checkpoints"


def named(sql: str) -> TextClause:
    """``%(name)s`` parameters as SQLAlchemy's ``:name``."""
    return text(re.sub(r"%\((\w+)\)s", r":\1", sql))


_READ_NODES = named(NODES_SQL)
# The new rows go as comma-separated text and one bytea of concatenated hashes: psycopg
# dumps a Python list as a text array element by element (with escaping), which cost more
# than everything else in growing the tree (docs/ARCHITECTURE.md).
_INSERT_NODES = text(
    "INSERT INTO merkle_nodes (level, node_index, hash)"
    " SELECT l, i, substring(CAST(:hashes AS bytea), CAST((o - 1) * 32 + 1 AS integer), 32)"
    " FROM unnest(CAST(string_to_array(:levels, ',') AS smallint[]),"
    " CAST(string_to_array(:indexes, ',') AS bigint[])) WITH ORDINALITY AS u(l, i, o)"
)
_INSERT_LEAVES = text(
    "INSERT INTO merkle_leaves (leaf_index, position, tx_id)"
    " SELECT :first + o - 1, p, CAST(t AS xid8)"
    " FROM unnest(CAST(string_to_array(:positions, ',') AS bigint[]),"
    " string_to_array(:tx_ids, ',')) WITH ORDINALITY AS u(p, t, o)"
)


def joined(values: Iterable[object]) -> str:
    return ",".join(map(str, values))


class TreeDamaged(LedgerError):
    """A node the tree must hold is missing: its tables were changed behind its back (a
    500 that says so: the stored data, not the request, is at fault)."""


def try_lock(conn: Connection) -> bool:
    return bool(conn.execute(_TRY_LOCK).scalar())


def tree_size(conn: Connection) -> int:
    size = conn.execute(select(func.max(merkle_leaves.c.leaf_index))).scalar()
    return 0 if size is None else int(size) + 1


def read_nodes(conn: Connection, wanted: Iterable[Node]) -> dict[Node, bytes]:
    query = node_query(wanted)
    if query is None:
        return {}
    return found_nodes(query, conn.execute(_READ_NODES, query))


def node_query(wanted: Iterable[Node]) -> dict[str, list[int]] | None:
    nodes = sorted(set(wanted))
    if not nodes:
        return None
    return {"levels": [level for level, _ in nodes], "indexes": [index for _, index in nodes]}


def found_nodes(query: dict[str, list[int]], rows: Iterable[Any]) -> dict[Node, bytes]:
    """The rows as a dict; ``TreeDamaged`` if any node asked for is missing."""
    found = {(int(level), int(index)): bytes(digest) for level, index, digest in rows}
    missing = [n for n in zip(query["levels"], query["indexes"], strict=True) if n not in found]
    if missing:
        raise TreeDamaged(f"the tree lacks {len(missing)} of its nodes, first {missing[0]}")
    return found


def hashes_of(conn: Connection, ranges: list[Range]) -> list[bytes]:
    """MTH of each leaf range, from the stored nodes (one query)."""
    nodes = read_nodes(conn, nodes_needed(ranges))
    return [range_hash(start, end, nodes) for start, end in ranges]


def root_at(conn: Connection, size: int) -> bytes:
    return range_hash(0, size, read_nodes(conn, root_nodes(size)))


def consistency_proof(conn: Connection, first: int, second: int) -> list[bytes]:
    return hashes_of(conn, consistency_ranges(first, second))


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the event at a position stands, as an inclusion proof needs it."""

    signed_size: int  # of the latest checkpoint (0 before the first)
    leaf_index: int | None  # None while the tree does not hold it (or there is no event)
    is_event: bool


def extend_tree(conn: Connection, limit: int = GROW_BATCH) -> int:
    """Append the next ``limit`` events of the global order as leaves; how many were added.

    The caller holds :data:`TREE_LOCK` for the transaction.
    """
    size = tree_size(conn)
    # The cursor is the last leaf's own (tx_id, position), not a lookup of its event: a
    # deleted row must not stop the tree (the export then shows what is missing).
    tx_id, position = cast(literal("0"), Xid8), literal(0, BigInteger)
    if size:
        last = conn.execute(
            select(merkle_leaves.c.tx_id, merkle_leaves.c.position).where(
                merkle_leaves.c.leaf_index == size - 1
            )
        ).one()
        tx_id, position = cast(literal(str(last.tx_id)), Xid8), literal(last.position, BigInteger)
    rows = conn.execute(
        select(events.c.position, events.c.hash, cast(events.c.tx_id, Text))
        .where(*visible_after(tx_id, position))
        .order_by(events.c.tx_id, events.c.position)
        .limit(limit)
    ).all()
    if not rows:
        return 0
    frontier = Frontier.at(size, read_nodes(conn, root_nodes(size)))
    levels: list[int] = []
    indexes: list[int] = []
    hashes: list[bytes] = []
    for _position, digest, _tx_id in rows:
        for level, index, node in frontier.append(leaf_hash(bytes.fromhex(digest))):
            levels.append(level)
            indexes.append(index)
            hashes.append(node)
    conn.execute(
        _INSERT_NODES,
        {"levels": joined(levels), "indexes": joined(indexes), "hashes": b"".join(hashes)},
    )
    conn.execute(
        _INSERT_LEAVES,
        {
            "first": size,
            "positions": joined(p for p, _, _ in rows),
            "tx_ids": joined(t for _, _, t in rows),
        },
    )
    return len(rows)


def build_tree(conn: Connection, progress: Callable[[int], Any] | None = None) -> int:
    """Grow the tree over everything committed (the migration of an existing ledger)."""
    added = 0
    while True:
        batch = extend_tree(conn, 20 * GROW_BATCH)
        if not batch:
            return added
        added += batch
        if progress is not None:
            progress(added)


class Tree:
    """The tree for the server: grown by the checkpointer, read by the proof routes."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def grow(self, limit: int = GROW_BATCH) -> int | None:
        """Add up to ``limit`` leaves; None when another process holds the lock."""
        async with self.engine.begin() as conn:
            if not await conn.run_sync(try_lock):
                return None
            return await conn.run_sync(extend_tree, limit)


class Proofs:
    """What the proof routes read, on the hot-path pool (autocommit, no pre-ping): every
    node of a tree up to the signed size exists and never changes, so no snapshot is
    needed across the two statements a proof takes."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def placement(self, position: int) -> Placement:
        async with self.pool.connection() as conn:
            metrics.DB_STATEMENTS.inc()
            cursor = await conn.execute(PLACEMENT_SQL, {"position": position})
            row = await cursor.fetchone()
        assert row is not None
        signed, leaf, exists = row
        return Placement(
            signed_size=0 if signed is None else int(signed),
            leaf_index=None if leaf is None else int(leaf),
            is_event=bool(exists),
        )

    async def signed_size(self) -> int:
        async with self.pool.connection() as conn:
            metrics.DB_STATEMENTS.inc()
            row = await (await conn.execute(SIGNED_SQL)).fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    async def hashes(self, ranges: list[Range]) -> list[bytes]:
        """MTH of each leaf range, from the stored nodes (one query)."""
        query = node_query(nodes_needed(ranges))
        nodes: dict[Node, bytes] = {}
        if query is not None:
            async with self.pool.connection() as conn:
                metrics.DB_STATEMENTS.inc()
                rows = await (await conn.execute(NODES_SQL, query)).fetchall()
            nodes = found_nodes(query, rows)
        return [range_hash(start, end, nodes) for start, end in ranges]
