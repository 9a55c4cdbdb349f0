"""Appending to the event table: grouped, chained, versioned, and announced in the commit.

Concurrent appends to different sessions go in groups: one head read and one insert for the
whole group, so one commit and one notification (PostgreSQL serialises the commits of
notifying transactions, which made them the ceiling of single-event appends). Each request
still stands alone: one that is refused is left out of the insert, and its answer is its
own. docs/ARCHITECTURE.md ("An append") follows one through and gives the measurements
behind the group limits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection, DatabaseError, OperationalError
from psycopg.errors import UniqueViolation

from ledger import metrics
from ledger.domain import (
    TERMINAL_TYPES,
    Event,
    EventType,
    Head,
    NewEvent,
    Sealed,
    VersionRange,
    seal,
)
from ledger.errors import Conflict, LedgerError, NotFound, Unavailable, Unprocessable
from ledger.storage.notifications import EVENTS_CHANNEL, announce_events
from ledger.storage.pool import Pool, fetch_events
from ledger.storage.tables import APPENDED_COLUMNS, EVENT_COLUMN_LIST, record_type

# Lost races before an append gives up with a 503 (each retry waits its turn on the lock).
MAX_ATTEMPTS = 20
# A group of concurrent appends: at most this many requests (the notification names each
# session in about 60 bytes, within NOTIFY's 8,000) and, past the first, this many events.
GROUP_REQUESTS = 64
GROUP_EVENTS = 1000
# Groups of one process in flight at once, so one commits while the next gathers
# (docs/ARCHITECTURE.md: 3 measured best).
GROUPS_IN_FLIGHT = 3

# Everything the appends of a group decide from, in one statement: the database clock (one
# instant for the group), each request's data as jsonb will store it (jsonb rewrites numbers
# such as 1e20, and the hash must cover what readers get back), whether its session exists,
# whether its idempotency key was used, and its session's latest event.
HEAD = """
WITH now AS (SELECT clock_timestamp() AS at)
SELECT now.at, r.datas::jsonb,
       EXISTS (SELECT FROM sessions WHERE id = r.sid),
       EXISTS (SELECT FROM events WHERE session_id = r.sid AND idempotency_key = r.key),
       latest.version, latest.progress, latest.hash, latest.type
FROM now, unnest(%(sids)s::uuid[], %(keys)s::text[], %(datas)s::text[])
     WITH ORDINALITY AS r(sid, key, datas, i)
LEFT JOIN LATERAL (
    SELECT version, progress, hash, type FROM events
    WHERE session_id = r.sid ORDER BY version DESC LIMIT 1
) AS latest ON true
ORDER BY r.i
"""

BY_KEY = f"""
SELECT {EVENT_COLUMN_LIST} FROM events
WHERE session_id = %s AND idempotency_key = %s ORDER BY version
"""

# A group's events and its one notification in one statement, so one implicit transaction:
# the notification is delivered exactly when the events commit. The rows travel as one JSON
# array (cheaper to send than a parameter per column), one statement for any group. The
# unique (session_id, version) refuses the whole statement if another writer took one of
# these versions since the head was read.
INSERT = f"""
WITH inserted AS (
    INSERT INTO events ({", ".join(APPENDED_COLUMNS)}, recorded_at)
    SELECT {", ".join(f"b.{name}" for name in APPENDED_COLUMNS)}, %(recorded_at)s
    FROM json_to_recordset(%(rows)s::json) AS b({record_type(APPENDED_COLUMNS)})
    RETURNING session_id, version, position
), announced AS (
    SELECT pg_notify(%(channel)s, %(announcement)s)
)
SELECT inserted.session_id, inserted.version, inserted.position FROM inserted, announced
"""

# After a lost race: appends to the session queue on its advisory lock (a row lock would
# need UPDATE on `sessions`, which the app's role does not have), so retries make progress.
LOCK = "SELECT pg_advisory_xact_lock(%s)"


@dataclass(frozen=True, slots=True)
class AppendResult:
    events: list[Event]
    # Stored by an earlier request with the same idempotency key.
    replayed: bool


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


@dataclass(slots=True)
class PendingAppend:
    """One append waiting for its group; ``done`` carries its answer or its error."""

    session_id: UUID
    batch: Sequence[NewEvent]
    # The batch's data as JSON, once: the head read hands it to jsonb (on every retry too).
    datas: str
    actor: str
    key: str | None
    expected_version: int | None
    done: asyncio.Future[AppendResult]

    def succeed(self, result: AppendResult) -> None:
        if not self.done.done():  # the caller may have gone (cancelled)
            self.done.set_result(result)

    def fail(self, error: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(error)


# A request's answer: its result, or the reason it was refused.
Answer = tuple[PendingAppend, AppendResult | LedgerError]


def answer(answers: Sequence[Answer]) -> None:
    for request, outcome in answers:
        if isinstance(outcome, LedgerError):
            request.fail(outcome)
        else:
            request.succeed(outcome)


def unanswered(group: Sequence[PendingAppend]) -> list[PendingAppend]:
    return [request for request in group if not request.done.done()]


def insert_params(
    sealed: Sequence[tuple[PendingAppend, Sequence[Sealed]]], recorded_at: datetime
) -> dict[str, Any]:
    return {
        "channel": EVENTS_CHANNEL,
        "announcement": announce_events(
            VersionRange(session_id=r.session_id, first=events[0].version, last=events[-1].version)
            for r, events in sealed
        ),
        "recorded_at": recorded_at,
        "rows": json.dumps(
            [
                {
                    "session_id": str(r.session_id),
                    "version": s.version,
                    "type": s.type.value,
                    "status": s.status.value,
                    "progress": s.progress,
                    "message": s.message,
                    "error": s.error,
                    "data": s.data,
                    "actor": r.actor,
                    "idempotency_key": r.key,
                    "prev_hash": s.prev_hash,
                    "hash": s.hash,
                }
                for r, events in sealed
                for s in events
            ],
            ensure_ascii=False,
            allow_nan=False,
        ),
    }


class Appender:
    """The appends of one process, on the pool's autocommit connections."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._waiting: list[PendingAppend] = []
        self._busy: set[UUID] = set()  # sessions with an append in flight
        self._groups: set[asyncio.Task[None]] = set()
        self._locked_slots = asyncio.Semaphore(max(1, pool.max_size // 2))

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
        transaction; the answer comes once it has committed.

        Optimistic: read the heads, seal, insert. The unique ``(session_id, version)`` makes
        the insert fail whole if a writer elsewhere took a version, and the chain stays exact
        because an insert of version N+1 can only succeed on the version N it was sealed
        onto. The group's appends then retry one by one under their session's advisory lock,
        where writers queue instead of racing.
        """
        request = PendingAppend(
            session_id=session_id,
            batch=batch,
            datas=json.dumps([n.data for n in batch], allow_nan=False),
            actor=actor,
            key=idempotency_key,
            expected_version=expected_version,
            done=asyncio.get_running_loop().create_future(),
        )
        self._waiting.append(request)
        self._start_groups()
        return await request.done

    def _start_groups(self) -> None:
        while self._waiting and len(self._groups) < GROUPS_IN_FLIGHT:
            group: list[PendingAppend] = []
            rest: list[PendingAppend] = []
            events = 0
            for request in self._waiting:
                if request.done.done():
                    continue  # its caller went away before it was sent: nothing to do
                # One request per session in flight: a second must see the first's head.
                if (
                    request.session_id in self._busy
                    or len(group) >= GROUP_REQUESTS
                    or (group and events + len(request.batch) > GROUP_EVENTS)
                ):
                    rest.append(request)
                    continue
                group.append(request)
                self._busy.add(request.session_id)
                events += len(request.batch)
            self._waiting = rest
            if not group:
                return
            task = asyncio.create_task(self._run_group(group), name="ledger-append-group")
            self._groups.add(task)

    async def _run_group(self, group: list[PendingAppend]) -> None:
        try:
            await self._attempt(group)
        finally:
            for request in unanswered(group):
                # Interrupted (shutdown): whether it committed is unknown; a retry with its
                # idempotency key finds out.
                request.fail(Unavailable("the append was interrupted: retry"))
            self._busy.difference_update(request.session_id for request in group)
            self._groups.discard(asyncio.current_task())
            self._start_groups()

    async def _attempt(self, group: list[PendingAppend]) -> None:
        try:
            async with self.pool.connection() as conn:
                answers = await self._try_group(conn, group)
            answer(answers)  # autocommit: the insert has committed
        except UniqueViolation:
            metrics.APPEND_RACES.inc()
            await asyncio.gather(*(self._append_locked(r) for r in unanswered(group)))
        except DatabaseError as exc:
            if isinstance(exc, OperationalError) or len(group) == 1:
                for request in group:
                    request.fail(exc)
                return
            # The database refused something in one request's data: each alone, so that
            # only that one fails.
            await asyncio.gather(*(self._attempt([r]) for r in unanswered(group)))
        except Exception as exc:
            for request in group:
                request.fail(exc)

    async def _append_locked(self, request: PendingAppend) -> None:
        try:
            # A lost race sends a whole group here: at most half the pool waits on locks.
            async with self._locked_slots:
                for _ in range(MAX_ATTEMPTS - 1):
                    try:
                        async with self.pool.connection() as conn, conn.transaction():
                            metrics.DB_STATEMENTS.inc()
                            await conn.execute(LOCK, (advisory_key(request.session_id),))
                            answers = await self._try_group(conn, [request])
                        answer(answers)  # only now: the transaction has committed
                        return
                    except UniqueViolation:
                        metrics.APPEND_RACES.inc()
            request.fail(
                Unavailable(f"session {request.session_id} is contended by too many writers: retry")
            )
        except Exception as exc:
            request.fail(exc)

    async def _try_group(
        self, conn: AsyncConnection[Any], group: Sequence[PendingAppend]
    ) -> list[Answer]:
        """Every request's answer, to be given once the insert has committed; raises
        UniqueViolation if the insert lost a race."""
        metrics.DB_STATEMENTS.inc()
        cursor = await conn.execute(
            HEAD,
            {
                "sids": [r.session_id for r in group],
                "keys": [r.key for r in group],
                "datas": [r.datas for r in group],
            },
        )
        heads = await cursor.fetchall()
        recorded_at = heads[0][0]
        answers: list[Answer] = []
        sealed: list[tuple[PendingAppend, list[Sealed]]] = []
        for request, row in zip(group, heads, strict=True):
            try:
                outcome = await self._decide(conn, request, row)
            except LedgerError as refused:
                answers.append((request, refused))
                continue
            if isinstance(outcome, AppendResult):
                answers.append((request, outcome))
            else:
                sealed.append((request, outcome))
        if not sealed:
            return answers
        metrics.DB_STATEMENTS.inc()
        cursor = await conn.execute(INSERT, insert_params(sealed, recorded_at))
        positions: dict[tuple[UUID, int], int] = {
            (sid, version): position for sid, version, position in await cursor.fetchall()
        }
        for request, events in sealed:
            sid, actor = request.session_id, request.actor
            stored = [
                s.stored(sid, positions[sid, s.version], actor=actor, recorded_at=recorded_at)
                for s in events
            ]
            answers.append((request, AppendResult(stored, replayed=False)))
        return answers

    @staticmethod
    async def _decide(
        conn: AsyncConnection[Any], request: PendingAppend, head_row: Sequence[Any]
    ) -> AppendResult | list[Sealed]:
        """One request against its session's head: its sealed events, or the events its
        idempotency key already stored."""
        recorded_at, stored_datas, exists, key_used, version, progress, last_hash, kind = head_row
        session_id = request.session_id
        if not exists:
            raise NotFound(f"session {session_id} not found")
        if key_used:
            stored = await fetch_events(conn, BY_KEY, (session_id, request.key))
            if not same_request(stored, request.batch):
                raise Unprocessable("Idempotency-Key was already used for a different request")
            return AppendResult(stored, replayed=True)
        head = Head()
        if version is not None:
            head = Head(
                version=version,
                progress=progress,
                hash=last_hash,
                terminal=EventType(kind) in TERMINAL_TYPES,
            )
        expected = request.expected_version
        if expected is not None and expected != head.version:
            raise Conflict(f"expected version {expected}, but the session is at {head.version}")
        normalised = [
            dataclasses.replace(n, data=data)
            for n, data in zip(request.batch, stored_datas, strict=True)
        ]
        return seal(session_id, head, normalised, actor=request.actor, recorded_at=recorded_at)
