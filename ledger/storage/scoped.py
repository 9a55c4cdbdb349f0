"""Reading a scope's sessions for the scoped streams: their states, their new events, the
cursor's positions, and the commit-safe marks.

Every read goes through the scope's sessions by index (``sessions`` by id or patient,
``care_assignments`` by therapist, ``events`` by ``(session_id, version)``), never through
the global order, so its cost follows the scope, not the ledger. Fixed statements on
psycopg's pool, like the other hot reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection

from ledger import metrics
from ledger.cursor import START, CursorIds, Point, Reached
from ledger.domain import TERMINAL_TYPES, Event, Scope, VersionRange
from ledger.errors import BadRequest, Conflict, NotFound
from ledger.storage.notifications import mark_statement
from ledger.storage.pool import Pool
from ledger.storage.tables import EVENT_COLUMN_LIST, event_from_row

_EVENT_COUNT = len(EVENT_COLUMN_LIST.split(", "))
NO_BOUND = 2**63 - 1

# The moment's commit-safe point: the oldest open transaction, and the last event in
# global order of the transactions below it.
SAFE_POINT = """
SELECT x.xmin::text::bigint, coalesce(t.tx_id::text::bigint, 0), coalesce(t.position, 0)
FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) AS x
LEFT JOIN LATERAL (
    SELECT tx_id, position FROM events WHERE tx_id < x.xmin
    ORDER BY tx_id DESC, position DESC LIMIT 1
) AS t ON true
"""

MARK = mark_statement(SAFE_POINT)

# The scope's sessions, each part through its own index.
_SCOPE = """
scope AS (
    SELECT id, patient_id FROM sessions WHERE id = ANY(%(sessions)s::uuid[])
    UNION
    SELECT id, patient_id FROM sessions WHERE patient_id = ANY(%(patients)s::text[])
    UNION
    SELECT s.id, s.patient_id FROM care_assignments c
    JOIN sessions s ON s.patient_id = c.patient_id
    WHERE %(assigned)s AND c.therapist_id = %(therapist)s
), allowed AS (
    SELECT id, patient_id FROM scope
    WHERE %(therapist)s::text IS NULL OR patient_id IN (
        SELECT patient_id FROM care_assignments WHERE therapist_id = %(therapist)s
    )
)
"""

# Each session of the scope: the version the cursor says was delivered (its beyond entry,
# else the last version at or before the safe point) and its latest event.
STATES = f"""
WITH {_SCOPE}, known AS (
    SELECT * FROM unnest(%(known)s::uuid[], %(known_versions)s::int[]) AS k(sid, version)
)
SELECT a.id, a.patient_id,
       coalesce(
           (SELECT version FROM known WHERE sid = a.id),
           (SELECT e.version FROM events e
            WHERE %(after_start)s AND e.session_id = a.id
              AND (e.tx_id, e.position) <= (%(safe_tx)s::text::xid8, %(safe_position)s::bigint)
            ORDER BY e.version DESC LIMIT 1),
           0),
       latest.version, latest.type, latest.tx_id::text::bigint, latest.position
FROM allowed a
LEFT JOIN LATERAL (
    SELECT version, type, tx_id, position FROM events WHERE session_id = a.id
    ORDER BY version DESC LIMIT 1
) AS latest ON true
"""

# The next events of the sessions wanted, each after its version, in global order.
PAGE = f"""
SELECT found.* FROM unnest(%(sids)s::uuid[], %(afters)s::int[]) AS r(sid, after)
CROSS JOIN LATERAL (
    SELECT {EVENT_COLUMN_LIST}, tx_id::text::bigint AS tx FROM events
    WHERE session_id = r.sid AND version > r.after AND tx_id < %(below)s::text::xid8
    ORDER BY version LIMIT %(limit)s
) AS found
ORDER BY found.tx, found.position
LIMIT %(limit)s
"""

# What the hub fans out to scoped streams: the announced ranges with each event's
# transaction and session's patient (by which streams that follow a patient are found).
# The patient is a scalar subquery, not a join, looked up once per range (``OFFSET 0``
# keeps it below the events), and the events stay a subquery (``OFFSET 0``, as in
# ``history.RANGES``): joined, the planner drove the events scan by the session
# alone and filtered the versions afterwards, reading each notified session's whole
# history (5.4 ms instead of 0.05 ms beside sessions of 20,000 events; 66 ms in a generic
# plan), which put the scoped fan-out's p99 at 205 ms once the followed sessions were long.
ROUTED_RANGES = f"""
SELECT found.*, r.patient_id FROM (
    SELECT u.sid, u.lo, u.hi, (SELECT patient_id FROM sessions WHERE id = u.sid) AS patient_id
    FROM unnest(%s::uuid[], %s::int[], %s::int[]) AS u(sid, lo, hi)
    OFFSET 0
) AS r
CROSS JOIN LATERAL (
    SELECT {EVENT_COLUMN_LIST}, tx_id::text::bigint AS tx FROM events
    WHERE session_id = r.sid AND version >= r.lo AND version <= r.hi
    OFFSET 0
) AS found
ORDER BY found.session_id, found.version
"""

RESOLVE = """
SELECT position, tx_id::text::bigint, session_id, version FROM events
WHERE position = ANY(%s::bigint[])
"""

PATIENTS_OF = "SELECT patient_id FROM care_assignments WHERE therapist_id = %s"


@dataclass(frozen=True, slots=True)
class SessionState:
    session_id: UUID
    patient_id: str
    delivered: int
    latest: int
    # The latest event's place and whether it ended the session (None: no events yet).
    latest_point: Point | None
    finished: bool


@dataclass(frozen=True, slots=True)
class ScopeRead:
    """The scope's sessions at one moment, and that moment's commit-safe point."""

    sessions: list[SessionState]
    xmin: int
    tail: Point


@dataclass(frozen=True, slots=True)
class Resolved:
    safe: Point
    beyond: dict[UUID, Reached]


@dataclass(frozen=True, slots=True)
class Placed:
    """An event and its transaction (its place in the global order), and where the hub
    read it, its session's patient."""

    event: Event
    tx: int
    patient_id: str | None = None

    @property
    def point(self) -> Point:
        return Point(self.tx, self.event.position)


def _scope_params(scope: Scope) -> dict[str, Any]:
    return {
        "sessions": list(scope.sessions),
        "patients": list(scope.patients),
        "assigned": scope.assigned,
        "therapist": scope.therapist,
    }


async def _safe_point(conn: AsyncConnection[Any]) -> tuple[int, Point]:
    metrics.DB_STATEMENTS.inc()
    row = await (await conn.execute(SAFE_POINT)).fetchone()
    assert row is not None
    return int(row[0]), Point(int(row[1]), int(row[2]))


class ScopedReads:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def states(
        self, scope: Scope, safe: Point = START, known: Mapping[UUID, int] | None = None
    ) -> ScopeRead:
        """The scope's sessions and the safe point, in one snapshot."""
        known = known or {}
        params = {
            **_scope_params(scope),
            "known": list(known),
            "known_versions": list(known.values()),
            # From the start nothing was delivered: no walk back through each history.
            "after_start": safe != START,
            "safe_tx": safe.tx,
            "safe_position": safe.position,
        }
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            xmin, tail = await _safe_point(conn)
            metrics.DB_STATEMENTS.inc()
            rows = await (await conn.execute(STATES, params)).fetchall()
        return ScopeRead(
            sessions=[
                SessionState(
                    session_id=row[0],
                    patient_id=row[1],
                    delivered=int(row[2]),
                    latest=0 if row[3] is None else int(row[3]),
                    latest_point=None if row[3] is None else Point(int(row[5]), int(row[6])),
                    finished=row[4] is not None and row[4] in TERMINAL_TYPES,
                )
                for row in rows
            ],
            xmin=xmin,
            tail=tail,
        )

    async def page(
        self, wanted: Mapping[UUID, int], limit: int, *, below: int = NO_BOUND
    ) -> list[Placed]:
        """Up to ``limit`` events of these sessions, each after its version, in global
        order; with ``below``, only those of transactions below it."""
        params = {
            "sids": list(wanted),
            "afters": list(wanted.values()),
            "below": below,
            "limit": limit,
        }
        async with self.pool.connection() as conn:
            metrics.DB_STATEMENTS.inc()
            rows = await (await conn.execute(PAGE, params)).fetchall()
        return [Placed(event_from_row(row[:_EVENT_COUNT]), int(row[_EVENT_COUNT])) for row in rows]

    async def ranges(self, wanted: Sequence[VersionRange]) -> list[Placed]:
        """The announced ranges, placed and with their patients, in one query."""
        if not wanted:
            return []
        params = (
            [w.session_id for w in wanted],
            [w.first for w in wanted],
            [w.last for w in wanted],
        )
        async with self.pool.connection() as conn:
            metrics.DB_STATEMENTS.inc()
            rows = await (await conn.execute(ROUTED_RANGES, params)).fetchall()
        n = _EVENT_COUNT
        return [
            Placed(
                event_from_row(row[:n]),
                int(row[n]),
                None if row[n + 1] is None else str(row[n + 1]),
            )
            for row in rows
        ]

    async def resolve(self, ids: CursorIds) -> Resolved:
        """The cursor's positions as places and sessions, or why it cannot be resumed."""
        positions = [ids.safe, *ids.beyond] if ids.safe else list(ids.beyond)
        async with self.pool.connection() as conn:
            xmin, _ = await _safe_point(conn)
            metrics.DB_STATEMENTS.inc()
            rows = await (await conn.execute(RESOLVE, (positions,))).fetchall()
        found = {
            int(row[0]): (Point(int(row[1]), int(row[0])), row[2], int(row[3])) for row in rows
        }
        missing = [p for p in positions if p not in found]
        if missing:
            raise NotFound(f"no event at position {missing[0]} in this ledger")
        safe = START if not ids.safe else found[ids.safe][0]
        if safe.tx >= xmin:
            raise Conflict(
                f"position {ids.safe} is not yet commit-safe: an older transaction is still "
                "open; resume from a cursor the stream handed out"
            )
        beyond: dict[UUID, Reached] = {}
        for position in ids.beyond:
            point, session_id, version = found[position]
            if point <= safe or session_id in beyond:
                raise BadRequest("the cursor is not one a stream handed out")
            beyond[session_id] = Reached(version, point)
        return Resolved(safe=safe, beyond=beyond)

    async def patients_of(self, therapist_id: str) -> set[str]:
        async with self.pool.connection() as conn:
            metrics.DB_STATEMENTS.inc()
            rows = await (await conn.execute(PATIENTS_OF, (therapist_id,))).fetchall()
        return {str(row[0]) for row in rows}

    async def mark(self) -> None:
        """Announce the moment's commit-safe point to every process (see ``Mark``)."""
        async with self.pool.connection() as conn:
            metrics.DB_STATEMENTS.inc()
            await conn.execute(MARK)
