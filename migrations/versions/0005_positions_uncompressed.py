"""merkle batches: the events' positions stored uncompressed, like the leaf hashes

PostgreSQL compressed each batch's ``positions`` (16 KB of bigints for 2,000 leaves) as it
stored the row, a tenth of the tree's growth per event on the cores the appends use
(docs/ARCHITECTURE.md); stored out of line uncompressed, a batch costs 16 KB of TOAST
instead of 5-7 KB. Rows already stored keep their form (PostgreSQL reads both).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE merkle_batches ALTER COLUMN positions SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.execute("ALTER TABLE merkle_batches ALTER COLUMN positions SET STORAGE EXTENDED")
