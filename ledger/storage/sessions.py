"""The ``sessions`` table: registering a session, finding one, listing the newest."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import func, select, true
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.domain import Event, uuid_prefix_range
from ledger.errors import Conflict, NotFound
from ledger.storage.tables import EVENT_COLUMNS, care_assignments, event_from_row, events, sessions


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


class Sessions:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, session_id: UUID, patient_id: str) -> SessionRecord:
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
        return SessionRecord(id=row.id, patient_id=row.patient_id, created_at=row.created_at)

    async def get(self, session_id: UUID) -> SessionRecord:
        stmt = select(sessions.c.id, sessions.c.patient_id, sessions.c.created_at).where(
            sessions.c.id == session_id
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            raise NotFound(f"session {session_id} not found")
        return SessionRecord(id=row.id, patient_id=row.patient_id, created_at=row.created_at)

    async def owners(self, session_ids: Collection[UUID]) -> dict[UUID, str]:
        """The patient of each of these sessions that exists, in one query."""
        if not session_ids:
            return {}
        stmt = select(sessions.c.id, sessions.c.patient_id).where(
            sessions.c.id.in_(list(session_ids))
        )
        async with self.engine.connect() as conn:
            return {row.id: row.patient_id for row in await conn.execute(stmt)}

    async def starting_with(self, prefix: str, *, limit: int = 2) -> list[UUID]:
        """Ids of sessions that start with ``prefix`` (up to ``limit``: two tell "one" from
        "ambiguous")."""
        bounds = uuid_prefix_range(prefix)
        if bounds is None:
            return []
        stmt = select(sessions.c.id).where(sessions.c.id.between(*bounds)).limit(limit)
        async with self.engine.connect() as conn:
            return [row.id for row in await conn.execute(stmt)]

    async def recent(
        self,
        limit: int,
        *,
        patient_id: str | None = None,
        therapist_id: str | None = None,
        id_range: tuple[UUID, UUID] | None = None,
    ) -> list[tuple[SessionRecord, Event | None]]:
        """The newest sessions (all, one patient's, or a therapist's patients'; within an
        id range, e.g. those starting with a prefix) and their latest events."""
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
        if id_range is not None:
            stmt = stmt.where(sessions.c.id.between(*id_range))
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
                SessionRecord(id=row.sid, patient_id=row.spatient, created_at=row.screated),
                None if row.version is None else event_from_row(row[3:]),
            )
            for row in rows
        ]
