"""The Merkle tree's tables: growing the tree behind the global order, reading proofs.

Leaf ``i`` is the ``i``-th event of the commit-safe global order (:mod:`.global_order`),
its input the event's 32-byte ``hash``. Growing reads the next events after where the
last batch ends (their positions and hashes, packed by PostgreSQL into one value) and
stores them as one batch row (their leaf hashes, their events' positions, where the batch
ends in the global order); the leaf hashes are appended to the frontier (the O(log n)
perfect subtrees of the tree so far) and every new perfect node of at least
``2**STRATUM`` leaves is inserted, all in one transaction under an advisory lock, so one
process at a time grows it and a crash leaves no half-grown tree. It never runs inside an
append's transaction. A node below the stratum is computed from the (fewer than
``2**STRATUM``) leaf hashes under it when a proof needs it: one row per leaf and two per
node cost more than everything else in growing the tree (docs/ARCHITECTURE.md).

The functions here take a synchronous SQLAlchemy ``Connection``: the migration that builds
the tree for an existing ledger calls them directly, and the server through
``AsyncConnection.run_sync``, so one piece of code does both.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    LargeBinary,
    Text,
    TextClause,
    cast,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger import metrics
from ledger.errors import LedgerError
from ledger.storage.global_order import visible_after
from ledger.storage.pool import Pool
from ledger.storage.tables import Xid8, events, merkle_batches
from ledger.transparency.merkle import (
    HASH_SIZE,
    Frontier,
    Node,
    Range,
    consistency_ranges,
    leaves_of,
    nodes_needed,
    perfect_hash,
    range_hash,
    root_nodes,
)

# pg_advisory_xact_lock key: "one process grows the tree and signs its head".
TREE_LOCK = 0x6C656467_74726565  # "ledg" "tree"
GROW_BATCH = 2000  # leaves per transaction of the server's growth, and per stored batch
STRATUM = 4  # nodes of fewer than 2**STRATUM leaves are computed, not stored

_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)").bindparams(key=TREE_LOCK)
# In psycopg's parameter style: the proof routes run them on the hot-path pool; the
# checkpointer and the migration, through SQLAlchemy (``named``).
#
# Stored nodes as (level, index, hash), then the leaf hashes of each wanted leaf range as
# (-1, first leaf, hashes), sliced out of every batch that overlaps it (``leaf_hashes`` is
# stored uncompressed, so a slice reads only its own TOAST chunks).
NODES_SQL = (
    "SELECT n.level, n.node_index, n.hash FROM merkle_nodes n"
    " JOIN unnest(CAST(%(levels)s AS smallint[]), CAST(%(indexes)s AS bigint[]))"
    " AS w(level, node_index) USING (level, node_index)"
    " UNION ALL"
    " SELECT -1, s.lo, substring(b.leaf_hashes"
    " FROM CAST((s.lo - b.first_leaf) * 32 + 1 AS integer)"
    " FOR CAST((s.hi - s.lo) * 32 AS integer))"
    " FROM unnest(CAST(%(starts)s AS bigint[]), CAST(%(ends)s AS bigint[])) AS w(a, z)"
    " JOIN merkle_batches b ON b.first_leaf < w.z AND b.first_leaf >= ("
    "SELECT max(first_leaf) FROM merkle_batches WHERE first_leaf <= w.a)"
    " CROSS JOIN LATERAL (SELECT greatest(w.a, b.first_leaf) AS lo,"
    " least(w.z, b.first_leaf + b.leaf_count) AS hi) s WHERE s.hi > s.lo"
)
# The latest signed size, the leaf of the event at a position (found in the batch that
# ends at or after the event in the global order), and whether the event exists.
PLACEMENT_SQL = (
    "SELECT (SELECT max(tree_size) FROM checkpoints),"
    " (SELECT b.first_leaf + array_position(b.positions, e.position) - 1"
    " FROM events e CROSS JOIN LATERAL (SELECT first_leaf, positions FROM merkle_batches"
    " WHERE (last_tx_id, last_position) >= (e.tx_id, e.position)"
    " ORDER BY last_tx_id, last_position LIMIT 1) b WHERE e.position = %(position)s),"
    " EXISTS (SELECT 1 FROM events WHERE position = %(position)s)"
)
SIGNED_SQL = "SELECT max(tree_size) FROM checkpoints"


def named(sql: str) -> TextClause:
    """``%(name)s`` parameters as SQLAlchemy's ``:name``."""
    return text(re.sub(r"%\((\w+)\)s", r":\1", sql))


_READ_NODES = named(NODES_SQL)
_LAST_BATCH = text(
    "SELECT first_leaf + leaf_count AS size, CAST(last_tx_id AS text) AS tx_id, last_position"
    " FROM merkle_batches ORDER BY first_leaf DESC LIMIT 1"
)
# One statement stores a batch and the nodes it completes: the transaction takes its
# transaction ID (which holds back the global readers until it commits) only here, and a
# round trip costs more than a tenth of growing a batch on these hosts (ARCHITECTURE).
# It stores nothing (and returns no row) unless the frontier the batch was grown from is
# the stored one: every frontier node from the stratum up held, with the same hash, so a
# node deleted or rewritten behind the server's back stops growth as when the frontier
# was read from the tables. The lists go as comma-separated text and one bytea of
# concatenated hashes: psycopg dumps a Python list as a text array element by element
# (with escaping), which cost more than everything else in growing the tree.
_STORE_BATCH = text(
    "WITH frontier AS (SELECT count(*) AS held"
    " FROM unnest(CAST(string_to_array(:frontier_levels, ',') AS smallint[]),"
    " CAST(string_to_array(:frontier_indexes, ',') AS bigint[])) WITH ORDINALITY AS f(l, i, o)"
    " JOIN merkle_nodes n ON n.level = f.l AND n.node_index = f.i AND n.hash ="
    " substring(CAST(:frontier_hashes AS bytea), CAST((f.o - 1) * 32 + 1 AS integer), 32)),"
    " batch AS (INSERT INTO merkle_batches"
    " (first_leaf, leaf_count, leaf_hashes, positions, last_tx_id, last_position)"
    " SELECT :first_leaf, :leaf_count, :leaf_hashes,"
    " CAST(string_to_array(:positions, ',') AS bigint[]),"
    " (SELECT tx_id FROM events WHERE position = :last_position), :last_position"
    " FROM frontier WHERE held = :frontier_count RETURNING CAST(last_tx_id AS text) AS tx_id),"
    " nodes AS (INSERT INTO merkle_nodes (level, node_index, hash)"
    " SELECT l, i, substring(CAST(:hashes AS bytea), CAST((o - 1) * 32 + 1 AS integer), 32)"
    " FROM unnest(CAST(string_to_array(:levels, ',') AS smallint[]),"
    " CAST(string_to_array(:indexes, ',') AS bigint[])) WITH ORDINALITY AS u(l, i, o)"
    " WHERE EXISTS (SELECT 1 FROM batch))"
    " SELECT tx_id FROM batch"
)
PACKED = struct.Struct(">q32s")  # an event's position and hash, as ``upcoming`` packs them


def joined(values: Iterable[object]) -> str:
    return ",".join(map(str, values))


def node_params(nodes: list[tuple[int, int, bytes]], prefix: str = "") -> dict[str, object]:
    """Nodes as the store statement takes them: levels, indexes, concatenated hashes."""
    return {
        f"{prefix}levels": joined(level for level, _, _ in nodes),
        f"{prefix}indexes": joined(index for _, index, _ in nodes),
        f"{prefix}hashes": b"".join(digest for _, _, digest in nodes),
    }


class TreeDamaged(LedgerError):
    """A node the tree must hold is missing: its tables were changed behind its back (a
    500 that says so: the stored data, not the request, is at fault)."""


def try_lock(conn: Connection) -> bool:
    return bool(conn.execute(_TRY_LOCK).scalar())


def tree_size(conn: Connection) -> int:
    last = conn.execute(_LAST_BATCH).first()
    return 0 if last is None else int(last.size)


@dataclass(frozen=True, slots=True)
class NodeQuery:
    """The nodes a proof or a root needs: the stored ones by key, the ones below the
    stratum as the leaf ranges they are computed from; one statement reads both."""

    params: dict[str, list[int]]
    computed: list[Node]

    @classmethod
    def of(cls, wanted: Iterable[Node]) -> NodeQuery | None:
        nodes = sorted(set(wanted))
        if not nodes:
            return None
        stored = [node for node in nodes if node[0] >= STRATUM]
        computed = [node for node in nodes if node[0] < STRATUM]
        runs = merged(leaves_of(node) for node in computed)
        return cls(
            {
                "levels": [level for level, _ in stored],
                "indexes": [index for _, index in stored],
                "starts": [start for start, _ in runs],
                "ends": [end for _, end in runs],
            },
            computed,
        )

    def nodes(self, rows: Iterable[Any]) -> dict[Node, bytes]:
        """The rows as a dict; ``TreeDamaged`` if any node asked for is missing."""
        found: dict[Node, bytes] = {}
        leaves: dict[int, bytes] = {}
        for level, index, digest in rows:
            if level >= 0:
                found[(int(level), int(index))] = bytes(digest)
                continue
            first, run = int(index), bytes(digest)
            for offset in range(0, len(run), HASH_SIZE):
                leaves[first + offset // HASH_SIZE] = run[offset : offset + HASH_SIZE]
        for node in self.computed:
            start, end = leaves_of(node)
            under = [leaves[i] for i in range(start, end) if i in leaves]
            if len(under) == end - start:
                found[node] = perfect_hash(under)
        wanted = zip(self.params["levels"], self.params["indexes"], strict=True)
        missing = [n for n in (*wanted, *self.computed) if n not in found]
        if missing:
            raise TreeDamaged(f"the tree lacks {len(missing)} of its nodes, first {missing[0]}")
        return found


def merged(ranges: Iterable[Range]) -> list[Range]:
    runs: list[Range] = []
    for start, end in sorted(ranges):
        if runs and start <= runs[-1][1]:
            runs[-1] = (runs[-1][0], max(end, runs[-1][1]))
        else:
            runs.append((start, end))
    return runs


def read_nodes(conn: Connection, wanted: Iterable[Node]) -> dict[Node, bytes]:
    query = NodeQuery.of(wanted)
    if query is None:
        return {}
    return query.nodes(conn.execute(_READ_NODES, query.params))


def hashes_of(conn: Connection, ranges: list[Range]) -> list[bytes]:
    """MTH of each leaf range, from the stored nodes and leaves (one query)."""
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


def _upcoming() -> TextClause:
    """Where the tree ends (its size and the last batch's end in the global order) and the
    next ``:limit`` events of the global order after it, as one row: how many, each one's
    position (8 bytes, big-endian) and hash (32 bytes) packed together in the global order
    (one sort, one aggregate), and how many hashes are not 32 bytes. Built once as SQL
    (its few constants rendered in): SQLAlchemy keys its statement cache by walking a
    construct on every execution, which cost a tenth of growing a batch."""
    last = (
        select(
            (merkle_batches.c.first_leaf + merkle_batches.c.leaf_count).label("size"),
            merkle_batches.c.last_tx_id,
            merkle_batches.c.last_position,
        )
        .order_by(merkle_batches.c.first_leaf.desc())
        .limit(1)
        .cte("last")
    )
    end = (
        func.coalesce(
            select(last.c.last_tx_id).scalar_subquery(), cast(literal_column("'0'"), Xid8)
        ),
        func.coalesce(select(last.c.last_position).scalar_subquery(), literal_column("0")),
    )
    rows = (
        select(events.c.tx_id, events.c.position, events.c.hash)
        .where(*visible_after(*end))
        .order_by(events.c.tx_id, events.c.position)
        .limit(literal_column(":limit"))
        .subquery("upcoming")
    )
    packed = func.int8send(rows.c.position).op("||")(func.decode(rows.c.hash, "hex"))
    stmt = select(
        func.coalesce(select(last.c.size).scalar_subquery(), literal_column("0")).label("size"),
        cast(end[0], Text).label("end_tx_id"),
        end[1].label("end_position"),
        func.count().label("leaves"),
        func.string_agg(
            packed,
            aggregate_order_by(
                cast(literal_column("''"), LargeBinary), rows.c.tx_id, rows.c.position
            ),
        ).label("packed"),
        func.count()
        .filter(func.octet_length(func.decode(rows.c.hash, "hex")) != HASH_SIZE)
        .label("malformed"),
    ).select_from(rows)
    dialect = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]
    sql = stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
    return text(str(sql))


_UPCOMING = _upcoming()


@dataclass(frozen=True, slots=True)
class Batch:
    """The next batch's leaves, ready to store."""

    leaf_hashes: bytes
    positions: list[int]

    @classmethod
    def unpacked(cls, count: int, packed: bytes, malformed: int) -> Batch:
        if malformed or len(packed) != count * PACKED.size:
            raise TreeDamaged("an event's hash is not 32 bytes: the events table was changed")
        items = list(PACKED.iter_unpack(packed))
        sha = hashlib.sha256  # RFC 9162's leaf hash, inline: a call per leaf costs a third
        leaves = b"".join([sha(b"\x00" + digest).digest() for _, digest in items])
        return cls(leaves, [position for position, _ in items])


class Growth:
    """Grows the tree a batch at a time, keeping the frontier it computed for the next
    batch: the tree of a size is fixed by the global order, so the frontier is read from
    the stored nodes only when the tree's end is not where this one left it (another
    process grew it, or the transaction that grew it rolled back); the batch is stored
    only if the stored nodes still hold the frontier it was grown from."""

    def __init__(self) -> None:
        self._frontier = Frontier()
        self._end: tuple[str, int] = ("0", 0)

    def extend(self, conn: Connection, limit: int = GROW_BATCH) -> int:
        """Append the next ``limit`` (at most GROW_BATCH) events of the global order as
        leaves; how many were added. The caller holds :data:`TREE_LOCK` for the
        transaction."""
        # The cursor is where the last batch ends, not a lookup of its event: a deleted
        # row must not stop the tree (the export then shows what is missing).
        row = conn.execute(_UPCOMING, {"limit": min(limit, GROW_BATCH)}).one()
        if not row.leaves:
            return 0
        size, end = int(row.size), (str(row.end_tx_id), int(row.end_position))
        batch = Batch.unpacked(int(row.leaves), bytes(row.packed), int(row.malformed))
        if (self._frontier.size, self._end) == (size, end):
            frontier = Frontier(size, self._frontier.hashes)
        else:
            frontier = Frontier.at(size, read_nodes(conn, root_nodes(size)))
        held = [
            (level, index, digest)
            for (level, index), digest in zip(root_nodes(size), frontier.hashes, strict=True)
            if level >= STRATUM
        ]
        nodes = frontier.extend(batch.leaf_hashes, STRATUM)
        tx_id = conn.execute(
            _STORE_BATCH,
            {
                **node_params(held, "frontier_"),
                "frontier_count": len(held),
                "first_leaf": size,
                "leaf_count": len(batch.positions),
                "leaf_hashes": batch.leaf_hashes,
                "positions": joined(batch.positions),
                "last_position": batch.positions[-1],
                **node_params(nodes),
            },
        ).scalar()
        if tx_id is None:
            raise TreeDamaged(
                f"the stored frontier of the tree of {size} leaves is not the one it was"
                " grown from: a node was removed or rewritten"
            )
        self._frontier, self._end = frontier, (str(tx_id), batch.positions[-1])
        return len(batch.positions)


def build_tree(conn: Connection, progress: Callable[[int], Any] | None = None) -> int:
    """Grow the tree over everything committed (the migration of an existing ledger)."""
    growth, added = Growth(), 0
    while batch := growth.extend(conn, GROW_BATCH):
        added += batch
        if progress is not None and added % (20 * GROW_BATCH) < batch:
            progress(added)
    return added


class Tree:
    """The tree for the server: grown by the checkpointer, read by the proof routes."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.growth = Growth()

    async def grow(self, limit: int = GROW_BATCH) -> int | None:
        """Add up to ``limit`` leaves; None when another process holds the lock."""
        async with self.engine.begin() as conn:
            if not await conn.run_sync(try_lock):
                return None
            return await conn.run_sync(self.growth.extend, limit)


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
        """MTH of each leaf range, from the stored nodes and leaves (one query)."""
        query = NodeQuery.of(nodes_needed(ranges))
        nodes: dict[Node, bytes] = {}
        if query is not None:
            async with self.pool.connection() as conn:
                metrics.DB_STATEMENTS.inc()
                rows = await (await conn.execute(NODES_SQL, query.params)).fetchall()
            nodes = query.nodes(rows)
        return [range_hash(start, end, nodes) for start, end in ranges]
