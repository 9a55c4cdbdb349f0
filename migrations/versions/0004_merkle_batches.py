"""merkle batches: the leaves stored per growth batch, nodes only from 16 leaves up

Growing the tree cost about 11 µs per event, two thirds of it inserting three index
entries per leaf (a leaf-hash node, about one inner node, a leaf row), on the cores the
appends use (docs/ARCHITECTURE.md). From here:

* ``merkle_batches (first_leaf, leaf_count, leaf_hashes, positions, last_tx_id,
  last_position)``: one row per batch of leaves grown together: their leaf hashes
  concatenated (stored uncompressed, so a proof reads only its slice), the global position
  of each leaf's event, and where the batch ends in the global order (the growth's cursor,
  and how an event finds its batch). Append-only like the other tables.
* ``merkle_nodes`` keeps only perfect subtrees of at least 16 leaves (level 4 and up); a
  node below is computed from the at most 16 leaf hashes under it when a proof needs it.
* ``merkle_leaves`` is gone: a ledger migrated to 0003 has its leaves converted into
  batches of 2,000, and roles granted on it are granted the same on ``merkle_batches``.

Then the tree is built for every event not in it yet (a ledger from before 0003, or from
before this revision), so an existing ledger has its tree before the server starts.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sys

from alembic import op
from sqlalchemy import Connection, text

from ledger.storage.tree import GROW_BATCH, STRATUM, TREE_LOCK, build_tree
from ledger.transparency.merkle import HASH_SIZE, Frontier

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

APPEND_ONLY = (
    "CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {table}"
    " FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_rewrite()"
)


def copy_grants(conn: Connection, source: str, target: str) -> None:
    """Grant on ``target`` what each role other than the owner holds on ``source`` (in
    this schema; PUBLIC and grant options included), the statements quoted by PostgreSQL."""
    statements = conn.execute(
        text(
            "SELECT format('GRANT %s ON %I TO %s%s', a.privilege_type, CAST(:target AS text),"
            " CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END,"
            " CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)"
            " FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a"
            " LEFT JOIN pg_roles r ON r.oid = a.grantee"
            " WHERE c.oid = to_regclass(CAST(:source AS text)) AND a.grantee <> c.relowner"
        ),
        {"source": source, "target": target},
    ).scalars()
    for statement in statements.all():
        op.execute(statement)


def upgrade() -> None:
    op.execute(
        f"""
        CREATE TABLE merkle_batches (
            first_leaf     bigint PRIMARY KEY CHECK (first_leaf >= 0),
            leaf_count     integer NOT NULL CHECK (leaf_count BETWEEN 1 AND {GROW_BATCH}),
            leaf_hashes    bytea NOT NULL CHECK (length(leaf_hashes) = {HASH_SIZE} * leaf_count),
            positions      bigint[] NOT NULL
                           CHECK (cardinality(positions) = leaf_count
                                  AND positions[leaf_count] = last_position),
            last_tx_id     xid8 NOT NULL,
            last_position  bigint NOT NULL,
            UNIQUE (last_tx_id, last_position)
        )
        """
    )
    op.execute("ALTER TABLE merkle_batches ALTER COLUMN leaf_hashes SET STORAGE EXTERNAL")
    op.execute(APPEND_ONLY.format(table="merkle_batches"))
    conn = op.get_bind()
    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({TREE_LOCK})")
    leaves, hashed, last = conn.execute(
        text(
            "SELECT count(*), count(n.hash), max(l.leaf_index) FROM merkle_leaves l"
            " LEFT JOIN merkle_nodes n ON n.level = 0 AND n.node_index = l.leaf_index"
        )
    ).one()
    if hashed != leaves or (last is not None and last + 1 != leaves):
        raise RuntimeError(
            f"the stored tree cannot be converted: {leaves} leaves, {hashed} with their hash,"
            f" the last numbered {last} (rows were removed behind the server's back)"
        )
    conn.execute(
        text(
            """
        INSERT INTO merkle_batches
        SELECT min(l.leaf_index), count(*),
               string_agg(n.hash, ''::bytea ORDER BY l.leaf_index),
               array_agg(l.position ORDER BY l.leaf_index),
               (array_agg(l.tx_id ORDER BY l.leaf_index DESC))[1],
               (array_agg(l.position ORDER BY l.leaf_index DESC))[1]
        FROM merkle_leaves l JOIN merkle_nodes n ON n.level = 0 AND n.node_index = l.leaf_index
        GROUP BY l.leaf_index / :batch
        """
        ),
        {"batch": GROW_BATCH},
    )
    copy_grants(conn, "merkle_leaves", "merkle_batches")
    op.execute("DROP TABLE merkle_leaves")
    op.execute("ALTER TABLE merkle_nodes DISABLE TRIGGER merkle_nodes_append_only")
    op.execute(f"DELETE FROM merkle_nodes WHERE level < {STRATUM}")  # noqa: S608 (a constant)
    op.execute("ALTER TABLE merkle_nodes ENABLE TRIGGER merkle_nodes_append_only")
    op.execute(
        f"ALTER TABLE merkle_nodes ADD CONSTRAINT merkle_nodes_stratum CHECK (level >= {STRATUM})"
    )

    def progress(added: int) -> None:
        print(f"merkle tree: {added:,} leaves", file=sys.stderr, flush=True)

    build_tree(conn, progress)


def downgrade() -> None:
    """Back to one row per leaf and every node stored, computed from the batches."""
    conn = op.get_bind()
    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({TREE_LOCK})")
    op.execute(
        """
        CREATE TABLE merkle_leaves (
            leaf_index  bigint PRIMARY KEY CHECK (leaf_index >= 0),
            position    bigint NOT NULL UNIQUE,
            tx_id       xid8 NOT NULL
        )
        """
    )
    op.execute(
        """
        INSERT INTO merkle_leaves
        SELECT b.first_leaf + u.o - 1, u.p, coalesce(e.tx_id, b.last_tx_id)
        FROM merkle_batches b CROSS JOIN LATERAL unnest(b.positions) WITH ORDINALITY AS u(p, o)
        LEFT JOIN events e ON e.position = u.p
        """
    )
    op.execute(APPEND_ONLY.format(table="merkle_leaves"))
    copy_grants(conn, "merkle_batches", "merkle_leaves")
    op.execute("ALTER TABLE merkle_nodes DROP CONSTRAINT merkle_nodes_stratum")
    frontier = Frontier()
    batches = conn.execute(text("SELECT leaf_hashes FROM merkle_batches ORDER BY first_leaf"))
    for (hashes,) in batches.all():
        low = [
            {"level": level, "index": index, "h": node}
            for level, index, node in frontier.extend(bytes(hashes))
            if level < STRATUM
        ]
        conn.execute(
            text("INSERT INTO merkle_nodes (level, node_index, hash) VALUES (:level, :index, :h)"),
            low,
        )
    op.execute("DROP TABLE merkle_batches")
