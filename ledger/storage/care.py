"""The ``care_assignments`` table: which therapist may read which patient's sessions."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import func, select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import ColumnElement

from ledger.domain import CarePair
from ledger.storage.notifications import ACCESS_CHANNEL, announce_addition, announce_removal
from ledger.storage.tables import care_assignments


def _is(pair: CarePair) -> list[ColumnElement[bool]]:
    return [
        care_assignments.c.therapist_id == pair.therapist_id,
        care_assignments.c.patient_id == pair.patient_id,
    ]


class CareAssignments:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def exists(self, pair: CarePair) -> bool:
        stmt = select(care_assignments.c.therapist_id).where(*_is(pair))
        async with self.engine.connect() as conn:
            return (await conn.execute(stmt)).first() is not None

    async def add(self, pair: CarePair) -> bool:
        """Add an assignment and, when it is new, announce it in the same transaction (the
        therapist's open scoped streams start following the patient). Returns whether it
        is new."""
        stmt = (
            pg_insert(care_assignments)
            .values(
                therapist_id=pair.therapist_id,
                patient_id=pair.patient_id,
                created_at=func.clock_timestamp(),
            )
            .on_conflict_do_nothing()
            .returning(care_assignments.c.therapist_id)
        )
        async with self.engine.begin() as conn:
            added = (await conn.execute(stmt)).first() is not None
            if added:
                await conn.execute(select(func.pg_notify(ACCESS_CHANNEL, announce_addition(pair))))
        return added

    async def remove(self, pair: CarePair) -> bool:
        """Remove an assignment and announce it in the same transaction (streams end)."""
        stmt = (
            care_assignments.delete().where(*_is(pair)).returning(care_assignments.c.therapist_id)
        )
        async with self.engine.begin() as conn:
            removed = (await conn.execute(stmt)).first() is not None
            await conn.execute(select(func.pg_notify(ACCESS_CHANNEL, announce_removal(pair))))
        return removed

    async def patients_of(self, therapist_id: str) -> set[str]:
        stmt = select(care_assignments.c.patient_id).where(
            care_assignments.c.therapist_id == therapist_id
        )
        async with self.engine.connect() as conn:
            return {row.patient_id for row in await conn.execute(stmt)}

    async def still_assigned(self, pairs: Collection[CarePair]) -> set[CarePair]:
        """Which of these assignments still exist."""
        if not pairs:
            return set()
        stmt = select(care_assignments.c.therapist_id, care_assignments.c.patient_id).where(
            tuple_(care_assignments.c.therapist_id, care_assignments.c.patient_id).in_(
                [(pair.therapist_id, pair.patient_id) for pair in pairs]
            )
        )
        async with self.engine.connect() as conn:
            return {
                CarePair(therapist_id=row.therapist_id, patient_id=row.patient_id)
                for row in await conn.execute(stmt)
            }
