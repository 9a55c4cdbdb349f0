"""sessions, care assignments and the append-only events table

The events table is the truth of the ledger. Choices made here:

* ``position`` is a global identity, ``tx_id`` the inserting transaction's id (``xid8``).
  Global readers order by ``(tx_id, position)`` and only read transactions below the
  snapshot's xmin, so a transaction that took a low position but commits late is never
  skipped (see ``ledger.storage.global_order``). The ``(tx_id, position)`` index serves it.
* ``(session_id, version)`` is unique: the per-session order, gap-free by construction
  (appends to one session are serialised by a per-session advisory lock).
* Statement-level triggers refuse UPDATE, DELETE and TRUNCATE for everyone who cannot
  drop the trigger, so history cannot be rewritten by the application.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATUSES = "'uploaded','queued','transcribing','diarizing','analyzing','processed','failed'"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE sessions (
            id          uuid PRIMARY KEY,
            patient_id  text NOT NULL CHECK (length(patient_id) BETWEEN 1 AND 200),
            created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
        )
        """
    )
    op.execute("CREATE INDEX sessions_patient_idx ON sessions (patient_id)")
    op.execute(
        """
        CREATE TABLE care_assignments (
            therapist_id text NOT NULL CHECK (length(therapist_id) BETWEEN 1 AND 200),
            patient_id   text NOT NULL CHECK (length(patient_id) BETWEEN 1 AND 200),
            created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (therapist_id, patient_id)
        )
        """
    )
    op.execute(
        f"""
        CREATE TABLE events (
            position        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tx_id           xid8 NOT NULL DEFAULT pg_current_xact_id(),
            session_id      uuid NOT NULL REFERENCES sessions (id),
            version         integer NOT NULL CHECK (version >= 1),
            type            text NOT NULL CHECK (type IN ('progress', 'complete', 'error')),
            status          text NOT NULL CHECK (status IN ({STATUSES})),
            progress        smallint NOT NULL CHECK (progress BETWEEN 0 AND 100),
            message         text,
            error           text,
            data            jsonb NOT NULL DEFAULT '{{}}' CHECK (jsonb_typeof(data) = 'object'),
            actor           text NOT NULL,
            idempotency_key text,
            recorded_at     timestamptz NOT NULL,
            prev_hash       text NOT NULL CHECK (length(prev_hash) = 64),
            hash            text NOT NULL CHECK (length(hash) = 64),
            CONSTRAINT events_session_version_key UNIQUE (session_id, version),
            CONSTRAINT events_type_matches_status CHECK (
                (status = 'processed') = (type = 'complete')
                AND (status = 'failed') = (type = 'error')
            )
        )
        """
    )
    op.execute("CREATE INDEX events_global_order_idx ON events (tx_id, position)")
    op.execute(
        "CREATE INDEX events_idempotency_idx ON events (session_id, idempotency_key) "
        "WHERE idempotency_key IS NOT NULL"
    )
    op.execute(
        """
        CREATE FUNCTION ledger_refuse_rewrite() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'events are append-only: % is refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER events_append_only
        BEFORE UPDATE OR DELETE OR TRUNCATE ON events
        FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_rewrite()
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE events")
    op.execute("DROP FUNCTION ledger_refuse_rewrite()")
    op.execute("DROP TABLE care_assignments")
    op.execute("DROP TABLE sessions")
