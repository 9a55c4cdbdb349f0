"""The event table's hot paths in plain SQL on psycopg's own pool.

Appending, reading a session's history and the hub's fan-out read run on every request
and every notification. Through SQLAlchemy's async engine an append cost about 2.6 ms of
Python (statement cache keys, the greenlet bridge, a pre-ping, and BEGIN, lock, head,
insert, notify and COMMIT as six round trips); here it is two fixed statements that psycopg
prepares once per connection, about 0.4 ms: the head read, and the insert that carries its
own notification. Everything less frequent stays in :mod:`ledger.store` with SQLAlchemy
Core.
"""

from __future__ import annotations

import json
import select
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection, OperationalError
from psycopg.errors import UniqueViolation
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from ledger import metrics
from ledger.domain import TERMINAL_TYPES, Event, EventType, Head, NewEvent, Sealed, Status, seal
from ledger.errors import Conflict, NotFound, Unavailable, Unprocessable

NOTIFY_CHANNEL = "ledger_events"
# Lost races before an append gives up with a 503 (each retry waits its turn on the lock).
MAX_ATTEMPTS = 20

COLUMNS = (
    "session_id, version, position, type, status, progress, message, error, data, actor,"
    " recorded_at, prev_hash, hash"
)

# Everything an append decides from, in one statement: the database clock, the batch's data
# as jsonb will store it (jsonb rewrites numbers such as 1e20, and the hash must cover what
# readers get back), whether the session exists, whether the idempotency key was used, and
# the session's latest event.
HEAD = """
SELECT clock_timestamp(), %(datas)s::jsonb,
       EXISTS (SELECT FROM sessions WHERE id = %(session_id)s),
       EXISTS (SELECT FROM events
               WHERE session_id = %(session_id)s AND idempotency_key = %(key)s),
       latest.version, latest.progress, latest.hash, latest.type
FROM (SELECT) AS anchor
LEFT JOIN LATERAL (
    SELECT version, progress, hash, type FROM events
    WHERE session_id = %(session_id)s ORDER BY version DESC LIMIT 1
) AS latest ON true
"""

BY_KEY = f"""
SELECT {COLUMNS} FROM events
WHERE session_id = %s AND idempotency_key = %s ORDER BY version
"""

# The batch and its notification in one statement, so one implicit transaction: the
# notification is delivered exactly when the events commit. The rows travel as one JSON
# array (cheaper to send than a parameter per column), one statement for any batch size.
# The unique (session_id, version) refuses the whole statement if another writer took one
# of these versions since the head was read.
INSERT = """
WITH inserted AS (
    INSERT INTO events (session_id, version, type, status, progress, message, error, data,
                        actor, idempotency_key, recorded_at, prev_hash, hash)
    SELECT %(session_id)s, b.version, b.type, b.status, b.progress, b.message, b.error,
           b.data, %(actor)s, %(key)s, %(recorded_at)s, b.prev_hash, b.hash
    FROM json_to_recordset(%(rows)s::json) AS b(
        version int, type text, status text, progress smallint, message text, error text,
        data jsonb, prev_hash text, hash text
    )
    RETURNING version, position
), announced AS (
    SELECT pg_notify(%(channel)s, %(announcement)s)
)
SELECT inserted.version, inserted.position FROM inserted, announced
"""

# After a lost race: appends to the session queue on its advisory lock (a row lock would
# need UPDATE on `sessions`, which the app's role does not have), so retries make progress.
LOCK = "SELECT pg_advisory_xact_lock(%s)"

LATEST = f"SELECT {COLUMNS} FROM events WHERE session_id = %s ORDER BY version DESC LIMIT 1"

PAGE = f"""
SELECT {COLUMNS} FROM events
WHERE session_id = %s AND version > %s ORDER BY version LIMIT %s
"""

# Driven by the requested ranges, one index range scan each: the planner cannot estimate
# unnest(), and a plain join lets it scan the whole table instead.
RANGES = f"""
SELECT found.* FROM unnest(%s::uuid[], %s::int[], %s::int[]) AS r(sid, lo, hi)
CROSS JOIN LATERAL (
    SELECT {COLUMNS} FROM events
    WHERE session_id = r.sid AND version >= r.lo AND version <= r.hi
) AS found
ORDER BY found.session_id, found.version
"""


@dataclass(frozen=True, slots=True)
class AppendResult:
    events: list[Event]
    # Stored by an earlier request with the same idempotency key.
    replayed: bool


# A dict lookup instead of calling the enum, per row of a replay.
EVENT_TYPES = {kind.value: kind for kind in EventType}
STATUSES = {status.value: status for status in Status}


def event_from_tuple(row: Sequence[Any]) -> Event:
    """An event from a row in ``COLUMNS`` order."""
    return Event(
        session_id=row[0],
        version=row[1],
        position=row[2],
        type=EVENT_TYPES[row[3]],
        status=STATUSES[row[4]],
        progress=row[5],
        message=row[6],
        error=row[7],
        data=row[8],
        actor=row[9],
        recorded_at=row[10],
        prev_hash=row[11],
        hash=row[12],
    )


def advisory_key(session_id: UUID) -> int:
    """The session's advisory-lock key: its first 64 bits (a collision only serialises two
    sessions' appends, it never mixes them)."""
    return int.from_bytes(session_id.bytes[:8], "big", signed=True)


def same_request(stored: Sequence[Event], batch: Sequence[NewEvent]) -> bool:
    """Whether a retried batch asks for what its key already stored."""
    if len(stored) != len(batch):
        return False
    return all(
        (s.status, s.message, s.error, s.data) == (n.status, n.message, n.error, n.data)
        and (n.progress is None or n.progress == s.progress)
        for s, n in zip(stored, batch, strict=True)
    )


def insert_params(
    session_id: UUID,
    sealed: Sequence[Sealed],
    *,
    actor: str,
    key: str | None,
    recorded_at: datetime,
) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "channel": NOTIFY_CHANNEL,
        "announcement": f"{session_id} {sealed[0].version} {sealed[-1].version}",
        "actor": actor,
        "key": key,
        "recorded_at": recorded_at,
        "rows": json.dumps(
            [
                {
                    "version": s.version,
                    "type": s.type.value,
                    "status": s.status.value,
                    "progress": s.progress,
                    "message": s.message,
                    "error": s.error,
                    "data": s.data,
                    "prev_hash": s.prev_hash,
                    "hash": s.hash,
                }
                for s in sealed
            ],
            ensure_ascii=False,
            allow_nan=False,
        ),
    }


def load_json(data: bytes | bytearray | str) -> Any:
    """The standard library's loads, on text: given bytes it sniffs their encoding first,
    a cost per row of every replay. (orjson would be faster, but reads integers beyond 64
    bits as floats, and the hash chain covers the exact values.)"""
    return json.loads(data if isinstance(data, str) else data.decode())


async def configure(conn: AsyncConnection[Any]) -> None:
    set_json_loads(load_json, conn)


async def still_open(conn: AsyncConnection[Any]) -> None:
    """The pool's check on checkout, so a PostgreSQL restart costs no failed request.

    An idle connection has nothing to say: if its socket is readable, the server has
    closed it (or sent a notice), and only then does a round trip find out which; the
    common case costs one ``poll`` instead of psycopg's own check's empty query.
    """
    if conn.closed:
        raise OperationalError("the connection is closed")
    # poll, not select: a server with thousands of streams has descriptors past select's
    # limit of 1024.
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    if poller.poll(0):
        await conn.execute("")


class EventLog:
    def __init__(self, url: str, *, size: int) -> None:
        # Autocommit: every statement is its own transaction, with no BEGIN and COMMIT.
        self.pool = AsyncConnectionPool(
            url,
            min_size=min(4, size),
            max_size=size,
            open=False,
            kwargs={"autocommit": True},
            check=still_open,
            configure=configure,
            name="ledger-eventlog",
        )

    async def open(self) -> None:
        await self.pool.open()

    async def close(self) -> None:
        await self.pool.close()

    async def append(
        self,
        session_id: UUID,
        batch: Sequence[NewEvent],
        *,
        actor: str,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
    ) -> AppendResult:
        """Append a batch atomically, chained and versioned, and notify in the same
        transaction.

        Optimistic first: read the head, seal, insert. The unique ``(session_id, version)``
        makes a concurrent writer's insert fail whole, and the chain stays exact because an
        insert of version N+1 can only succeed on the version N it was sealed onto. The loser
        retries under the session's advisory lock, where writers queue instead of racing.
        """
        datas = json.dumps([n.data for n in batch], allow_nan=False)
        for attempt in range(MAX_ATTEMPTS):
            try:
                async with self.pool.connection() as conn:
                    if attempt == 0:
                        return await self._try_append(
                            conn, session_id, batch, datas, actor, idempotency_key, expected_version
                        )
                    async with conn.transaction():
                        metrics.DB_STATEMENTS.inc()
                        await conn.execute(LOCK, (advisory_key(session_id),))
                        return await self._try_append(
                            conn, session_id, batch, datas, actor, idempotency_key, expected_version
                        )
            except UniqueViolation:
                metrics.APPEND_RACES.inc()
        raise Unavailable(f"session {session_id} is contended by too many writers: retry")

    async def _try_append(
        self,
        conn: AsyncConnection[Any],
        session_id: UUID,
        batch: Sequence[NewEvent],
        datas: str,
        actor: str,
        key: str | None,
        expected_version: int | None,
    ) -> AppendResult:
        metrics.DB_STATEMENTS.inc()
        cursor = await conn.execute(HEAD, {"datas": datas, "session_id": session_id, "key": key})
        row = await cursor.fetchone()
        assert row is not None
        recorded_at, stored_datas, exists, key_used, version, progress, last_hash, kind = row
        if not exists:
            raise NotFound(f"session {session_id} not found")
        if key_used:
            stored = await fetch_events(conn, BY_KEY, (session_id, key))
            if not same_request(stored, batch):
                raise Unprocessable("Idempotency-Key was already used for a different request")
            return AppendResult(stored, replayed=True)
        head = Head()
        if version is not None:
            head = Head(version, progress, last_hash, EventType(kind) in TERMINAL_TYPES)
        if expected_version is not None and expected_version != head.version:
            raise Conflict(
                f"expected version {expected_version}, but the session is at {head.version}"
            )
        normalised = [
            NewEvent(n.status, n.progress, n.message, n.error, data)
            for n, data in zip(batch, stored_datas, strict=True)
        ]
        sealed = seal(session_id, head, normalised, actor=actor, recorded_at=recorded_at)
        params = insert_params(session_id, sealed, actor=actor, key=key, recorded_at=recorded_at)
        metrics.DB_STATEMENTS.inc()
        cursor = await conn.execute(INSERT, params)
        positions: dict[int, int] = dict(await cursor.fetchall())
        appended = [
            s.stored(session_id, positions[s.version], actor=actor, recorded_at=recorded_at)
            for s in sealed
        ]
        return AppendResult(appended, replayed=False)

    async def _fetch(self, query: str, params: Sequence[Any]) -> list[Event]:
        async with self.pool.connection() as conn:
            return await fetch_events(conn, query, params)

    async def latest(self, session_id: UUID) -> Event | None:
        found = await self._fetch(LATEST, (session_id,))
        return found[0] if found else None

    async def session_page(self, session_id: UUID, after: int, limit: int) -> list[Event]:
        return await self._fetch(PAGE, (session_id, after, limit))

    async def ranges(self, wanted: Sequence[tuple[UUID, int, int]]) -> list[Event]:
        """Events of several sessions, each within ``[from, to]`` versions, in one query."""
        if not wanted:
            return []
        return await self._fetch(
            RANGES, ([w[0] for w in wanted], [w[1] for w in wanted], [w[2] for w in wanted])
        )


async def fetch_events(
    conn: AsyncConnection[Any], query: str, params: Sequence[Any]
) -> list[Event]:
    metrics.DB_STATEMENTS.inc()
    cursor = await conn.execute(query, params)
    return [event_from_tuple(row) for row in await cursor.fetchall()]
