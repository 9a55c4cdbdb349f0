"""Every read and write of the tables: SQLAlchemy Core statements on PostgreSQL, with the
event table's hot paths delegated to :mod:`ledger.eventlog`."""

from __future__ import annotations

import asyncio
import contextlib
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
    cast,
    func,
    literal,
    select,
    true,
    tuple_,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Select
from sqlalchemy.types import BigInteger, UserDefinedType

from ledger.db import DATABASE_ERRORS
from ledger.domain import Event
from ledger.errors import Conflict, NotFound
from ledger.eventlog import EventLog, event_from_tuple

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
    def __init__(self, engine: AsyncEngine, log: EventLog) -> None:
        self.engine = engine
        # Appends go to the log directly (``store.log.append``); its reads are offered here.
        self.log = log

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
                None if row.version is None else event_from_tuple(row[3:]),
            )
            for row in rows
        ]

    # -- the hot paths (see ledger.eventlog) -----------------------------------------

    async def latest(self, session_id: UUID) -> Event | None:
        return await self.log.latest(session_id)

    async def session_page(self, session_id: UUID, after: int, limit: int) -> list[Event]:
        return await self.log.session_page(session_id, after, limit)

    async def ranges(self, wanted: Sequence[tuple[UUID, int, int]]) -> list[Event]:
        return await self.log.ranges(wanted)

    # -- reading ----------------------------------------------------------------------

    async def session_events(
        self, session_id: UUID, after: int, *, page_size: int = 1000
    ) -> AsyncGenerator[list[Event]]:
        """Every event after ``after`` in pages, each page its own short query.

        The next page is read while the caller sends this one, so the database's work on it
        overlaps this process's encoding and writing instead of waiting behind it.
        """
        ahead: asyncio.Task[list[Event]] | None = None
        try:
            page = await self.session_page(session_id, after, page_size)
            while page:
                if len(page) == page_size:
                    ahead = asyncio.ensure_future(
                        self.session_page(session_id, page[-1].version, page_size)
                    )
                yield page
                if ahead is None:
                    return
                page, ahead = await ahead, None
        finally:
            if ahead is not None:
                ahead.cancel()
                with contextlib.suppress(asyncio.CancelledError, *DATABASE_ERRORS):
                    await ahead

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
                page = [event_from_tuple(row) for row in await conn.execute(stmt)]
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
