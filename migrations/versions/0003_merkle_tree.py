"""merkle tree: one tree over every event, and the signed checkpoints of its head

Tables (design, section 9):

* ``merkle_nodes (level, node_index, hash)``: the hash of every perfect subtree of the
  tree over the global order; level 0 holds the leaf hashes. Any proof at any size reads
  O(log n) of them.
* ``merkle_leaves (leaf_index, position, tx_id)``: which event each leaf is, and where it
  stands in the global order (the growth's cursor, which does not depend on the event's
  row still being there).
* ``checkpoints (tree_size, root_hash, signed_at, note)``: every signed checkpoint.

All three refuse UPDATE, DELETE and TRUNCATE like ``events`` (the refusal now names its
table). Migration 0004 stores the leaves in batches and builds the tree for the events
already stored (this revision built it in its first layout, and a ledger migrated then is
converted by 0004), so an existing ledger has its tree before the server starts.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLES = ("merkle_nodes", "merkle_leaves", "checkpoints")


def refusal(table_named: bool) -> str:
    subject = (
        "'% is append-only: % is refused', TG_TABLE_NAME"
        if table_named
        else ("'events are append-only: % is refused'")
    )
    return f"""
        CREATE OR REPLACE FUNCTION ledger_refuse_rewrite() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION {subject}, TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE merkle_nodes (
            level       smallint NOT NULL CHECK (level >= 0 AND level < 64),
            node_index  bigint NOT NULL CHECK (node_index >= 0),
            hash        bytea NOT NULL CHECK (length(hash) = 32),
            PRIMARY KEY (level, node_index)
        )
        """
    )
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
        CREATE TABLE checkpoints (
            tree_size   bigint PRIMARY KEY CHECK (tree_size >= 0),
            root_hash   bytea NOT NULL CHECK (length(root_hash) = 32),
            signed_at   timestamptz NOT NULL DEFAULT now(),
            note        text NOT NULL
        )
        """
    )
    op.execute(refusal(table_named=True))
    for table in TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {table}"
            " FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_rewrite()"
        )


def downgrade() -> None:
    for table in reversed(TABLES):
        op.execute(f"DROP TABLE {table}")
    op.execute(refusal(table_named=False))
