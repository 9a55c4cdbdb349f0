"""Reading events by session: the latest, a page, several sessions' ranges, a whole replay.

These run for every stream that opens or catches up and for every notification the hub
fans out, so they are fixed statements on psycopg's pool (prepared once per connection).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence
from uuid import UUID

from ledger.domain import Event, VersionRange
from ledger.storage.database import DATABASE_ERRORS
from ledger.storage.pool import Pool, fetch_events
from ledger.storage.tables import EVENT_COLUMN_LIST

LATEST = f"""
SELECT {EVENT_COLUMN_LIST} FROM events WHERE session_id = %s ORDER BY version DESC LIMIT 1
"""

PAGE = f"""
SELECT {EVENT_COLUMN_LIST} FROM events
WHERE session_id = %s AND version > %s ORDER BY version LIMIT %s
"""

# Driven by the requested ranges, one index range scan each: the planner cannot estimate
# unnest(), and a plain join lets it scan the whole table instead. ``OFFSET 0`` keeps the
# LATERAL subquery a subquery: PostgreSQL pulls a simple one up into a join, whose generic
# plan (the one a prepared statement may switch to) hashed the whole table: 54 ms instead
# of 0.04 ms for two ranges beside sessions of 20,000 events.
RANGES = f"""
SELECT found.* FROM unnest(%s::uuid[], %s::int[], %s::int[]) AS r(sid, lo, hi)
CROSS JOIN LATERAL (
    SELECT {EVENT_COLUMN_LIST} FROM events
    WHERE session_id = r.sid AND version >= r.lo AND version <= r.hi
    OFFSET 0
) AS found
ORDER BY found.session_id, found.version
"""


class History:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def _fetch(self, query: str, params: Sequence[object]) -> list[Event]:
        async with self.pool.connection() as conn:
            return await fetch_events(conn, query, params)

    async def latest(self, session_id: UUID) -> Event | None:
        found = await self._fetch(LATEST, (session_id,))
        return found[0] if found else None

    async def page(self, session_id: UUID, after: int, limit: int) -> list[Event]:
        """Up to ``limit`` events after version ``after``, oldest first."""
        return await self._fetch(PAGE, (session_id, after, limit))

    async def ranges(self, wanted: Sequence[VersionRange]) -> list[Event]:
        """Events of several sessions, each within its range, in one query."""
        if not wanted:
            return []
        return await self._fetch(
            RANGES,
            ([w.session_id for w in wanted], [w.first for w in wanted], [w.last for w in wanted]),
        )

    async def replay(
        self, session_id: UUID, after: int, *, page_size: int = 1000
    ) -> AsyncGenerator[list[Event]]:
        """Every event after ``after`` in pages, each page its own short query.

        The next page is read while the caller sends this one, so the database's work on it
        overlaps this process's encoding and writing instead of waiting behind it.
        """
        ahead: asyncio.Task[list[Event]] | None = None
        try:
            page = await self.page(session_id, after, page_size)
            while page:
                if len(page) == page_size:
                    ahead = asyncio.ensure_future(
                        self.page(session_id, page[-1].version, page_size)
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
