"""The fan-out reads stay one index range scan per notified range, whatever plan the
database picks: a prepared statement may switch to a generic plan, which cannot see the
arrays' sizes; flattened into a join, those reads hashed or scanned whole sessions (or the
whole table) for every notification."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ledger.storage.history import RANGES
from ledger.storage.scoped import ROUTED_RANGES

LONG, SHORT = 5_000, 3


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


def prepared_plan(
    db: psycopg.Connection[Any], query: str, args: tuple[Any, ...], mode: str
) -> list[dict[str, Any]]:
    """The plan of ``query`` as a server-side prepared statement, in ``mode``."""
    db.execute(f"SET plan_cache_mode = {mode}")
    db.execute("DEALLOCATE ALL")
    numbered = query.replace("%s::uuid[]", "$1").replace("%s::int[], %s::int[]", "$2, $3")
    db.execute(f"PREPARE fanout(uuid[], int[], int[]) AS {numbered}")
    # EXECUTE takes no bind parameters: the arguments go as literals.
    explain = sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE fanout({})").format(
        sql.SQL(", ").join(sql.Literal(arg) for arg in args)
    )
    row = db.execute(explain).fetchone()
    assert row is not None
    return list(plan_nodes(row[0][0]["Plan"]))


@pytest.mark.parametrize("mode", ["force_generic_plan", "force_custom_plan"])
@pytest.mark.parametrize("name", ["session streams", "scoped streams"])
def test_a_fanout_read_scans_only_the_notified_versions(
    db: psycopg.Connection[Any], name: str, mode: str
) -> None:
    sessions = [uuid.uuid4() for _ in range(4)]
    for index, session in enumerate(sessions):
        db.execute("INSERT INTO sessions (id, patient_id) VALUES (%s, %s)", (session, f"p-{index}"))
        db.execute(
            """
            INSERT INTO events (session_id, version, type, status, progress, actor,
                                recorded_at, prev_hash, hash)
            SELECT %s, v, 'progress', 'transcribing', 1, 'plan', now(),
                   repeat('0', 64), repeat('0', 64)
            FROM generate_series(1, %s) AS v
            """,
            (session, LONG if index < 2 else SHORT),
        )
    db.execute("ANALYZE")
    query = RANGES if name == "session streams" else ROUTED_RANGES
    # The newest events of a long session and of a short one, as notifications announce.
    args = ([sessions[0], sessions[3]], [LONG - 4, SHORT], [LONG, SHORT])
    nodes = prepared_plan(db, query, args, mode)
    on_events = [node for node in nodes if node.get("Relation Name") == "events"]
    assert on_events, nodes
    assert all("Seq Scan" not in node["Node Type"] for node in on_events)
    # Each range is read through the index by session *and* version, six rows in all.
    conditions = [node.get("Index Cond") or node.get("Recheck Cond", "") for node in on_events]
    assert all("version" in condition for condition in conditions), conditions
    assert sum(node["Actual Rows"] * node["Actual Loops"] for node in on_events) == 6
    assert nodes[0]["Actual Rows"] == 6
    # The scoped read looks each range's patient up once, not once per event.
    on_sessions = [node for node in nodes if node.get("Relation Name") == "sessions"]
    assert sum(node["Actual Loops"] for node in on_sessions) == (2 if on_sessions else 0)
