"""The only module that reads or writes tables: SQLAlchemy Core statements on PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    SmallInteger,
    Table,
    Text,
    bindparam,
    cast,
    func,
    insert,
    literal,
    select,
    true,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Select
from sqlalchemy.types import BigInteger, UserDefinedType

from ledger.domain import (
    TERMINAL_TYPES,
    Event,
    EventType,
    Head,
    NewEvent,
    Status,
    seal,
)
from ledger.errors import Conflict, NotFound, Unprocessable

NOTIFY_CHANNEL = "ledger_events"
# Removed care assignments, so every process can end the streams they allowed.
ACCESS_CHANNEL = "ledger_access"


class Xid8(UserDefinedType[str]):
    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "xid8"


metadata = MetaData()

sessions = Table(
    "sessions",
    metadata,
    Column("id", PG_UUID(as_uuid=True), primary_key=True),
    Column("patient_id", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

care_assignments = Table(
    "care_assignments",
    metadata,
    Column("therapist_id", Text, primary_key=True),
    Column("patient_id", Text, primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("position", BigInteger, primary_key=True),
    Column("tx_id", Xid8, nullable=False),
    Column("session_id", PG_UUID(as_uuid=True), nullable=False),
    Column("version", Integer, nullable=False),
    Column("type", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("progress", SmallInteger, nullable=False),
    Column("message", Text),
    Column("error", Text),
    Column("data", JSONB, nullable=False),
    Column("actor", Text, nullable=False),
    Column("idempotency_key", Text),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("prev_hash", Text, nullable=False),
    Column("hash", Text, nullable=False),
)

EVENT_COLUMNS = (
    events.c.session_id,
    events.c.version,
    events.c.position,
    events.c.type,
    events.c.status,
    events.c.progress,
    events.c.message,
    events.c.error,
    events.c.data,
    events.c.actor,
    events.c.recorded_at,
    events.c.prev_hash,
    events.c.hash,
)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: UUID
    patient_id: str
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "patient_id": self.patient_id,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class GlobalPage:
    events: list[Event]
    held_back: bool


@dataclass(frozen=True, slots=True)
class AppendResult:
    events: list[Event]
    replayed: bool


def event_from_row(row: Row[*tuple[Any, ...]]) -> Event:
    return Event(
        session_id=row.session_id,
        version=row.version,
        position=row.position,
        type=EventType(row.type),
        status=Status(row.status),
        progress=row.progress,
        message=row.message,
        error=row.error,
        data=row.data,
        actor=row.actor,
        recorded_at=row.recorded_at,
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


def _same_request(stored: Sequence[Event], batch: Sequence[NewEvent]) -> bool:
    if len(stored) != len(batch):
        return False
    return all(
        (s.status, s.message, s.error, s.data) == (n.status, n.message, n.error, n.data)
        and (n.progress is None or n.progress == s.progress)
        for s, n in zip(stored, batch, strict=True)
    )


def advisory_key(session_id: UUID) -> int:
    """The session's advisory-lock key: its first 64 bits (a collision only serialises two
    sessions' appends, it never mixes them)."""
    return int.from_bytes(session_id.bytes[:8], "big", signed=True)


def recorded_between(start: datetime | None, end: datetime | None) -> list[Any]:
    """Conditions for ``start <= recorded_at < end``, either bound optional."""
    conditions: list[Any] = []
    if start is not None:
        conditions.append(events.c.recorded_at >= start)
    if end is not None:
        conditions.append(events.c.recorded_at < end)
    return conditions


def global_selection(
    after: int, start: datetime | None = None, end: datetime | None = None
) -> Select[Any]:
    """Events after the cursor ``after`` in commit-safe global order (see ``global_page``)."""
    cursor = (
        select(events.c.tx_id, events.c.position)
        .where(events.c.position == after)
        .union_all(
            select(cast(literal("0"), Xid8), literal(0, BigInteger)).where(
                literal(after, BigInteger) == 0
            )
        )
        .subquery()
    )
    return (
        select(*EVENT_COLUMNS)
        .select_from(events.join(cursor, true()))
        .where(
            tuple_(events.c.tx_id, events.c.position) > tuple_(cursor.c.tx_id, cursor.c.position),
            events.c.tx_id < func.pg_snapshot_xmin(func.pg_current_snapshot()),
            *recorded_between(start, end),
        )
        .order_by(events.c.tx_id, events.c.position)
    )


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(select(literal(1)))

    # -- sessions -------------------------------------------------------------------

    async def create_session(self, session_id: UUID, patient_id: str) -> SessionRecord:
        stmt = (
            pg_insert(sessions)
            .values(id=session_id, patient_id=patient_id, created_at=func.clock_timestamp())
            .on_conflict_do_nothing(index_elements=[sessions.c.id])
            .returning(sessions.c.id, sessions.c.patient_id, sessions.c.created_at)
        )
        async with self.engine.begin() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            raise Conflict(f"session {session_id} already exists")
        return SessionRecord(row.id, row.patient_id, row.created_at)

    async def get_session(self, session_id: UUID) -> SessionRecord:
        stmt = select(sessions.c.id, sessions.c.patient_id, sessions.c.created_at).where(
            sessions.c.id == session_id
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            raise NotFound(f"session {session_id} not found")
        return SessionRecord(row.id, row.patient_id, row.created_at)

    async def recent_sessions(
        self,
        limit: int,
        *,
        patient_id: str | None = None,
        therapist_id: str | None = None,
    ) -> list[tuple[SessionRecord, Event | None]]:
        """The newest sessions (all, one patient's, or a therapist's patients') and their
        latest events."""
        latest = (
            select(*EVENT_COLUMNS)
            .where(events.c.session_id == sessions.c.id)
            .order_by(events.c.version.desc())
            .limit(1)
            .lateral("latest")
        )
        stmt = (
            select(
                sessions.c.id.label("sid"),
                sessions.c.patient_id.label("spatient"),
                sessions.c.created_at.label("screated"),
                *latest.c,
            )
            .select_from(sessions.outerjoin(latest, true()))
            .order_by(sessions.c.created_at.desc(), sessions.c.id)
            .limit(limit)
        )
        if patient_id is not None:
            stmt = stmt.where(sessions.c.patient_id == patient_id)
        if therapist_id is not None:
            stmt = stmt.where(
                sessions.c.patient_id.in_(
                    select(care_assignments.c.patient_id).where(
                        care_assignments.c.therapist_id == therapist_id
                    )
                )
            )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            (
                SessionRecord(row.sid, row.spatient, row.screated),
                None if row.version is None else event_from_row(row),
            )
            for row in rows
        ]

    # -- appending --------------------------------------------------------------------

    async def append(
        self,
        session_id: UUID,
        batch: Sequence[NewEvent],
        *,
        actor: str,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
    ) -> AppendResult:
        """Append a batch atomically, chained and versioned, and notify in the same transaction.

        Appends to one session are serialised by a transaction-scoped advisory lock on the
        session (a row lock would need UPDATE on ``sessions``, which the app's role does not
        have); every read that decides the new versions runs after that lock, in a fresh
        READ COMMITTED snapshot, so concurrent writers can neither gap nor duplicate.
        """
        async with self.engine.begin() as conn:
            locked = await conn.execute(
                select(
                    func.pg_advisory_xact_lock(advisory_key(session_id)),
                    select(sessions.c.id).where(sessions.c.id == session_id).scalar_subquery(),
                )
            )
            if locked.one()[1] is None:
                raise NotFound(f"session {session_id} not found")
            if idempotency_key is not None:
                stored = await self._by_idempotency_key(conn, session_id, idempotency_key)
                if stored:
                    if not _same_request(stored, batch):
                        raise Unprocessable(
                            "Idempotency-Key was already used for a different request"
                        )
                    return AppendResult(stored, replayed=True)
            head, recorded_at, datas = await self._head(conn, session_id, batch)
            if expected_version is not None and expected_version != head.version:
                raise Conflict(
                    f"expected version {expected_version}, but the session is at {head.version}"
                )
            normalised = [
                NewEvent(n.status, n.progress, n.message, n.error, data)
                for n, data in zip(batch, datas, strict=True)
            ]
            sealed = seal(session_id, head, normalised, actor=actor, recorded_at=recorded_at)
            rows = [
                {
                    "session_id": session_id,
                    "version": s.version,
                    "type": s.type.value,
                    "status": s.status.value,
                    "progress": s.progress,
                    "message": s.message,
                    "error": s.error,
                    "data": s.data,
                    "actor": actor,
                    "idempotency_key": idempotency_key,
                    "recorded_at": recorded_at,
                    "prev_hash": s.prev_hash,
                    "hash": s.hash,
                }
                for s in sealed
            ]
            result = await conn.execute(
                insert(events).returning(*EVENT_COLUMNS, sort_by_parameter_order=True), rows
            )
            appended = [event_from_row(row) for row in result]
            payload = f"{session_id} {sealed[0].version} {sealed[-1].version}"
            await conn.execute(select(func.pg_notify(NOTIFY_CHANNEL, payload)))
        return AppendResult(appended, replayed=False)

    async def _by_idempotency_key(
        self, conn: AsyncConnection, session_id: UUID, key: str
    ) -> list[Event]:
        stmt = (
            select(*EVENT_COLUMNS)
            .where(events.c.session_id == session_id, events.c.idempotency_key == key)
            .order_by(events.c.version)
        )
        return [event_from_row(row) for row in await conn.execute(stmt)]

    async def _head(
        self, conn: AsyncConnection, session_id: UUID, batch: Sequence[NewEvent]
    ) -> tuple[Head, datetime, list[dict[str, Any]]]:
        """The session's latest event, the database clock, and the batch's data as stored.

        ``data`` goes through ``jsonb`` once before hashing, so the hash covers exactly what a
        later reader gets back (jsonb rewrites numbers such as ``1e20``).
        """
        latest = (
            select(events.c.version, events.c.progress, events.c.hash, events.c.type)
            .where(events.c.session_id == session_id)
            .order_by(events.c.version.desc())
            .limit(1)
            .subquery()
        )
        anchor = select(literal(1).label("one")).subquery()
        payload = json.dumps([n.data for n in batch], allow_nan=False)
        stmt = select(
            func.clock_timestamp().label("now"),
            cast(literal(payload), JSONB).label("datas"),
            latest.c.version,
            latest.c.progress,
            latest.c.hash,
            latest.c.type,
        ).select_from(anchor.outerjoin(latest, true()))
        row = (await conn.execute(stmt)).one()
        head = Head()
        if row.version is not None:
            head = Head(
                version=row.version,
                progress=row.progress,
                hash=row.hash,
                terminal=EventType(row.type) in TERMINAL_TYPES,
            )
        return head, row.now, row.datas

    # -- reading ----------------------------------------------------------------------

    async def latest(self, session_id: UUID) -> Event | None:
        stmt = (
            select(*EVENT_COLUMNS)
            .where(events.c.session_id == session_id)
            .order_by(events.c.version.desc())
            .limit(1)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else event_from_row(row)

    async def session_page(self, session_id: UUID, after: int, limit: int) -> list[Event]:
        stmt = (
            select(*EVENT_COLUMNS)
            .where(events.c.session_id == session_id, events.c.version > after)
            .order_by(events.c.version)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [event_from_row(row) for row in await conn.execute(stmt)]

    async def session_events(
        self, session_id: UUID, after: int, *, page_size: int = 1000
    ) -> AsyncGenerator[list[Event]]:
        """Every event after ``after`` in pages, each page its own short query."""
        while True:
            page = await self.session_page(session_id, after, page_size)
            if page:
                yield page
                after = page[-1].version
            if len(page) < page_size:
                return

    async def ranges(self, wanted: Sequence[tuple[UUID, int, int]]) -> list[Event]:
        """Events of several sessions, each within ``[from, to]`` versions, in one query."""
        if not wanted:
            return []
        r = (
            select(
                func.unnest(bindparam("sids", type_=ARRAY(PG_UUID(as_uuid=True)))).label("sid"),
                func.unnest(bindparam("los", type_=ARRAY(Integer))).label("lo"),
                func.unnest(bindparam("his", type_=ARRAY(Integer))).label("hi"),
            )
        ).subquery()
        # Driven by the requested ranges, one index range scan each: the planner cannot
        # estimate unnest(), and a plain join lets it scan the whole table instead.
        found = (
            select(*EVENT_COLUMNS)
            .where(
                events.c.session_id == r.c.sid,
                events.c.version >= r.c.lo,
                events.c.version <= r.c.hi,
            )
            .lateral("found")
        )
        stmt = (
            select(*(found.c[column.name] for column in EVENT_COLUMNS))
            .select_from(r.join(found, true()))
            .order_by(found.c.session_id, found.c.version)
        )
        params = {
            "sids": [w[0] for w in wanted],
            "los": [w[1] for w in wanted],
            "his": [w[2] for w in wanted],
        }
        async with self.engine.connect() as conn:
            return [event_from_row(row) for row in await conn.execute(stmt, params)]

    async def check_global_cursor(self, position: int) -> None:
        """Refuse a position the global readers could not have handed out.

        A cursor is an event whose transaction is below the current xmin: resuming from a
        younger one (say, a position taken from an append's answer) could pass by older
        transactions that commit later.
        """
        if position == 0:
            return
        xmin = func.pg_snapshot_xmin(func.pg_current_snapshot())
        stmt = select((events.c.tx_id < xmin).label("visible")).where(events.c.position == position)
        async with self.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            raise NotFound(f"no event at position {position} in this ledger")
        if not row.visible:
            raise Conflict(
                f"position {position} is not yet visible to global readers: an older "
                "transaction is still open; resume from a cursor the global stream handed out"
            )

    async def global_page(
        self,
        after: int,
        limit: int,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> GlobalPage:
        """All sessions' events after the event at global position ``after``.

        Positions are taken at INSERT but transactions commit in another order, so reading
        ``position > after`` could pass a row whose transaction commits a moment later. Instead
        rows are ordered by ``(tx_id, position)`` and only transactions older than the
        snapshot's xmin are read: every such transaction has ended, so no row can later appear
        before the cursor. The price is that a long-running transaction anywhere in the
        cluster holds readers back until it ends; nothing is ever skipped.

        Both statements run in one REPEATABLE READ snapshot, so ``held_back`` (committed
        events exist that may not be handed out yet) is true of exactly this page.
        """
        stmt = global_selection(after, start, end).limit(limit)
        xmin = func.pg_snapshot_xmin(func.pg_current_snapshot())
        held = select(select(events.c.position).where(events.c.tx_id >= xmin).exists())
        async with self.engine.connect() as conn:
            await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                page = [event_from_row(row) for row in await conn.execute(stmt)]
                held_back = bool((await conn.execute(held)).scalar())
        return GlobalPage(page, held_back)

    async def global_tail(self) -> int:
        """The cursor just behind everything a global reader may hand out now (0 if empty)."""
        stmt = (
            select(events.c.position)
            .where(events.c.tx_id < func.pg_snapshot_xmin(func.pg_current_snapshot()))
            .order_by(events.c.tx_id.desc(), events.c.position.desc())
            .limit(1)
        )
        async with self.engine.connect() as conn:
            position = (await conn.execute(stmt)).scalar()
        return 0 if position is None else int(position)

    # -- care assignments -------------------------------------------------------------

    async def is_assigned(self, therapist_id: str, patient_id: str) -> bool:
        stmt = select(care_assignments.c.therapist_id).where(
            care_assignments.c.therapist_id == therapist_id,
            care_assignments.c.patient_id == patient_id,
        )
        async with self.engine.connect() as conn:
            return (await conn.execute(stmt)).first() is not None

    async def assign(self, therapist_id: str, patient_id: str) -> bool:
        """Returns whether the assignment is new."""
        stmt = (
            pg_insert(care_assignments)
            .values(
                therapist_id=therapist_id, patient_id=patient_id, created_at=func.clock_timestamp()
            )
            .on_conflict_do_nothing()
            .returning(care_assignments.c.therapist_id)
        )
        async with self.engine.begin() as conn:
            return (await conn.execute(stmt)).first() is not None

    async def unassign(self, therapist_id: str, patient_id: str) -> bool:
        """Remove an assignment and announce it in the same transaction (streams end)."""
        stmt = (
            care_assignments.delete()
            .where(
                care_assignments.c.therapist_id == therapist_id,
                care_assignments.c.patient_id == patient_id,
            )
            .returning(care_assignments.c.therapist_id)
        )
        payload = json.dumps([therapist_id, patient_id])
        async with self.engine.begin() as conn:
            removed = (await conn.execute(stmt)).first() is not None
            await conn.execute(select(func.pg_notify(ACCESS_CHANNEL, payload)))
        return removed

    async def assigned_pairs(self, pairs: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (therapist, patient) pairs are still assigned."""
        stmt = select(care_assignments.c.therapist_id, care_assignments.c.patient_id).where(
            tuple_(care_assignments.c.therapist_id, care_assignments.c.patient_id).in_(pairs)
        )
        async with self.engine.connect() as conn:
            return {(row.therapist_id, row.patient_id) for row in await conn.execute(stmt)}
