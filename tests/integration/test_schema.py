"""The database itself refuses to rewrite history."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from tests.support import with_database


def seed(db: psycopg.Connection[Any]) -> uuid.UUID:
    session_id = uuid.uuid4()
    db.execute("INSERT INTO sessions (id, patient_id) VALUES (%s, 'p')", (session_id,))
    db.execute(
        """
        INSERT INTO events (session_id, version, type, status, progress, actor, recorded_at,
                            prev_hash, hash)
        VALUES (%s, 1, 'progress', 'queued', 0, 'someone', now(), repeat('0', 64), repeat('a', 64))
        """,
        (session_id,),
    )
    return session_id


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET progress = 99",
        "UPDATE events SET progress = 99 WHERE false",
        "DELETE FROM events",
        "DELETE FROM events WHERE false",
        "TRUNCATE events",
        "TRUNCATE events CASCADE",
    ],
)
def test_rewrites_are_refused(db: psycopg.Connection[Any], statement: str) -> None:
    seed(db)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        db.execute(statement)
    row = db.execute("SELECT count(*), max(progress) FROM events").fetchone()
    assert row == (1, 0)


def test_constraints_hold_for_direct_inserts(db: psycopg.Connection[Any]) -> None:
    session_id = seed(db)
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute(
            """
            INSERT INTO events (session_id, version, type, status, progress, actor, recorded_at,
                                prev_hash, hash)
            VALUES (%s, 1, 'progress', 'queued', 0, 'x', now(), repeat('0', 64), repeat('b', 64))
            """,
            (session_id,),
        )
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute(
            """
            INSERT INTO events (session_id, version, type, status, progress, actor, recorded_at,
                                prev_hash, hash)
            VALUES (%s, 2, 'progress', 'processed', 0, 'x', now(), repeat('0', 64), repeat('b', 64))
            """,
            (session_id,),
        )


def test_migrations_are_the_only_schema(db: psycopg.Connection[Any]) -> None:
    tables = {
        row[0]
        for row in db.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    }
    assert tables == {
        "alembic_version",
        "sessions",
        "care_assignments",
        "events",
        "merkle_nodes",
        "merkle_batches",
        "checkpoints",
    }
    views = {
        row[0]
        for row in db.execute(
            "SELECT viewname FROM pg_views WHERE schemaname = 'public'"
        ).fetchall()
    }
    assert views == {"session_timeline", "stage_durations", "session_outcomes"}
    assert db.execute("SELECT version_num FROM alembic_version").fetchone() == ("0005",)
    # The batches' arrays are stored out of line uncompressed: a proof reads only its slice
    # of the leaf hashes, and growth does not compress (migrations 0004 and 0005).
    storage = db.execute(
        "SELECT attname, attstorage FROM pg_attribute WHERE attrelid = 'merkle_batches'::regclass"
        " AND attname IN ('leaf_hashes', 'positions') ORDER BY attname"
    ).fetchall()
    assert storage == [("leaf_hashes", "e"), ("positions", "e")]


def test_migrations_go_down_and_up(databases: Any) -> None:
    from alembic import command

    from ledger.storage.migrations import alembic_config

    name = f"ledger_updown_{uuid.uuid4().hex[:8]}"
    with databases.admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(databases.server_url, name)
    try:
        config = alembic_config(url)
        command.upgrade(config, "head")
        command.downgrade(config, "base")
        command.upgrade(config, "head")
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("0005",)
    finally:
        with databases.admin() as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
