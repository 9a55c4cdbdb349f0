"""analytics: documented views for SQL users and the indexes behind the analytics API

Views (documented column by column in the README, "Analytics"):

* ``session_timeline``: every event with the next event of its session beside it.
* ``stage_durations``: one row per visit of a session to a status (a run of consecutive
  events with the same status), with how long it lasted.
* ``session_outcomes``: one row per session: when it started, where it is, how it ended.

Indexes, chosen for the analytics queries over a time range on a large table:

* ``events (recorded_at)``: throughput buckets and "sessions touched in this range" read
  only the range, not the table.
* ``events (recorded_at) WHERE version = 1``: sessions started in a range (the first event
  marks the start), a small partial index.
* ``events (recorded_at) WHERE type IN ('complete', 'error')``: outcomes in a range,
  another small partial index; each outcome then finds its session's first event through
  the ``(session_id, version)`` unique index.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX events_recorded_at_idx ON events (recorded_at)")
    op.execute("CREATE INDEX events_started_idx ON events (recorded_at) WHERE version = 1")
    op.execute(
        "CREATE INDEX events_outcome_idx ON events (recorded_at) "
        "WHERE type IN ('complete', 'error')"
    )
    op.execute(
        """
        CREATE VIEW session_timeline AS
        SELECT e.session_id,
               s.patient_id,
               e.version,
               e.position,
               e.type,
               e.status,
               e.progress,
               e.message,
               e.error,
               e.actor,
               e.recorded_at,
               lead(e.status) OVER w AS next_status,
               lead(e.recorded_at) OVER w AS next_recorded_at,
               EXTRACT(EPOCH FROM lead(e.recorded_at) OVER w - e.recorded_at)::double precision
                   AS seconds_to_next
        FROM events e
        JOIN sessions s ON s.id = e.session_id
        WINDOW w AS (PARTITION BY e.session_id ORDER BY e.version)
        """
    )
    op.execute(
        """
        CREATE VIEW stage_durations AS
        WITH marked AS (
            SELECT session_id, version, status, recorded_at,
                   lag(status) OVER (PARTITION BY session_id ORDER BY version)
                       IS DISTINCT FROM status AS enters
            FROM events
        ), visits AS (
            SELECT session_id, version, status, recorded_at AS entered_at,
                   lead(recorded_at) OVER (PARTITION BY session_id ORDER BY version) AS left_at,
                   lead(status) OVER (PARTITION BY session_id ORDER BY version) AS next_status
            FROM marked
            WHERE enters
        )
        SELECT session_id,
               status,
               version AS entered_version,
               entered_at,
               left_at,
               next_status,
               EXTRACT(EPOCH FROM left_at - entered_at)::double precision AS seconds
        FROM visits
        """
    )
    op.execute(
        """
        CREATE VIEW session_outcomes AS
        SELECT s.id AS session_id,
               s.patient_id,
               s.created_at,
               first_event.recorded_at AS started_at,
               last_event.recorded_at AS last_event_at,
               coalesce(last_event.version, 0) AS events,
               last_event.status AS current_status,
               last_event.progress AS current_progress,
               CASE
                   WHEN last_event.version IS NULL THEN 'registered'
                   WHEN last_event.type = 'complete' THEN 'processed'
                   WHEN last_event.type = 'error' THEN 'failed'
                   ELSE 'running'
               END AS outcome,
               CASE WHEN last_event.type IN ('complete', 'error')
                    THEN last_event.recorded_at END AS ended_at,
               CASE WHEN last_event.type IN ('complete', 'error')
                    THEN EXTRACT(EPOCH FROM last_event.recorded_at - first_event.recorded_at)
                         ::double precision END AS seconds_to_end,
               CASE WHEN last_event.type = 'error'
                    THEN coalesce(last_event.error, last_event.message, 'unknown') END
                   AS failure_reason
        FROM sessions s
        LEFT JOIN LATERAL (
            SELECT recorded_at FROM events
            WHERE session_id = s.id AND version = 1
        ) first_event ON true
        LEFT JOIN LATERAL (
            SELECT version, type, status, progress, error, message, recorded_at FROM events
            WHERE session_id = s.id ORDER BY version DESC LIMIT 1
        ) last_event ON true
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW session_outcomes")
    op.execute("DROP VIEW stage_durations")
    op.execute("DROP VIEW session_timeline")
    op.execute("DROP INDEX events_outcome_idx")
    op.execute("DROP INDEX events_started_idx")
    op.execute("DROP INDEX events_recorded_at_idx")
