"""All sessions' events in one commit-safe order: the global stream, ``GET /api/events`` and
the global export.

Positions are taken at INSERT but transactions commit in another order, so reading
``position > after`` could pass a row whose transaction commits a moment later. Instead
rows are ordered by ``(tx_id, position)`` and only transactions older than the snapshot's
xmin are read: every such transaction has ended, so no row can later appear before the
cursor. The price is that a long-running transaction anywhere in the cluster holds readers
back until it ends; nothing is ever skipped (docs/ARCHITECTURE.md, "The global order").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import cast, func, literal, select, true, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.types import BigInteger

from ledger.domain import Event
from ledger.errors import Conflict, NotFound
from ledger.storage.tables import EVENT_COLUMNS, Xid8, event_from_row, events


@dataclass(frozen=True, slots=True)
class GlobalPage:
    events: list[Event]
    # Committed events exist that may not be handed out yet (an older transaction is open).
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
    after: int,
    start: datetime | None = None,
    end: datetime | None = None,
    columns: Sequence[ColumnElement[Any]] = EVENT_COLUMNS,
) -> Select[Any]:
    """Events after the cursor ``after`` (a position; 0 is the start), in global order."""
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
        select(*columns)
        .select_from(events.join(cursor, true()))
        .where(*visible_after(cursor.c.tx_id, cursor.c.position), *recorded_between(start, end))
        .order_by(events.c.tx_id, events.c.position)
    )


def visible_after(tx_id: Any, position: Any) -> list[Any]:
    """Rows after ``(tx_id, position)`` in global order that no open transaction precedes."""
    return [
        tuple_(events.c.tx_id, events.c.position) > tuple_(tx_id, position),
        events.c.tx_id < func.pg_snapshot_xmin(func.pg_current_snapshot()),
    ]


class GlobalOrder:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def check_cursor(self, position: int) -> None:
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

    async def page(
        self,
        after: int,
        limit: int,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> GlobalPage:
        """Up to ``limit`` events after the cursor ``after``.

        Both statements run in one REPEATABLE READ snapshot, so ``held_back`` is true of
        exactly this page.
        """
        stmt = global_selection(after, start, end).limit(limit)
        xmin = func.pg_snapshot_xmin(func.pg_current_snapshot())
        held = select(select(events.c.position).where(events.c.tx_id >= xmin).exists())
        async with self.engine.connect() as conn:
            await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                page = [event_from_row(row) for row in await conn.execute(stmt)]
                held_back = bool((await conn.execute(held)).scalar())
        return GlobalPage(events=page, held_back=held_back)

    async def tail(self) -> int:
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
