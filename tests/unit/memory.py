"""An in-memory ledger with the interfaces ``ledger.live`` reads through (``live.sources``).

It is what the hub and the feeds see of storage, kept in lists: appending seals events with
the real domain rules, and the reads answer as the PostgreSQL ones do (a page after a
version, ranges of several sessions, the global order by position). Counters let a test
see how often the table was read.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection, Sequence
from datetime import UTC, datetime
from uuid import UUID

from ledger.domain import CarePair, Event, Head, NewEvent, Status, VersionRange, seal
from ledger.storage.global_order import GlobalPage


class MemoryLedger:
    def __init__(self) -> None:
        self.by_session: dict[UUID, list[Event]] = {}
        self.in_order: list[Event] = []
        self.assignments: set[CarePair] = set()
        self.range_reads = 0
        self.replay_reads = 0
        self.fail_reads = False

    # -- writing (what the appender would do) -------------------------------------------

    def append(self, session_id: UUID, *statuses: Status) -> list[Event]:
        stored = self.by_session.setdefault(session_id, [])
        head = Head()
        if stored:
            last = stored[-1]
            head = Head(
                version=last.version,
                progress=last.progress,
                hash=last.hash,
                terminal=last.is_terminal,
            )
        now = datetime.now(UTC)
        sealed = seal(
            session_id,
            head,
            [NewEvent(status) for status in statuses],
            actor="memory",
            recorded_at=now,
        )
        first = len(self.in_order) + 1
        new = [
            s.stored(session_id, first + i, actor="memory", recorded_at=now)
            for i, s in enumerate(sealed)
        ]
        stored.extend(new)
        self.in_order.extend(new)
        return new

    # -- SessionEvents ------------------------------------------------------------------

    def _check(self) -> None:
        if self.fail_reads:
            raise ConnectionError("the in-memory database is down")

    async def latest(self, session_id: UUID) -> Event | None:
        self._check()
        stored = self.by_session.get(session_id, [])
        return stored[-1] if stored else None

    async def ranges(self, wanted: Sequence[VersionRange]) -> list[Event]:
        self._check()
        self.range_reads += 1
        return [
            event
            for r in sorted(wanted, key=lambda r: r.session_id)
            for event in self.by_session.get(r.session_id, [])
            if r.first <= event.version <= r.last
        ]

    async def replay(
        self, session_id: UUID, after: int, *, page_size: int = 1000
    ) -> AsyncGenerator[list[Event]]:
        self._check()
        self.replay_reads += 1
        rest = [e for e in self.by_session.get(session_id, []) if e.version > after]
        for start in range(0, len(rest), page_size):
            yield rest[start : start + page_size]

    # -- GlobalEvents -------------------------------------------------------------------

    async def check_cursor(self, position: int) -> None:
        self._check()

    async def page(
        self,
        after: int,
        limit: int,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> GlobalPage:
        self._check()
        rest = [e for e in self.in_order if e.position > after]
        return GlobalPage(events=rest[:limit], held_back=False)

    async def tail(self) -> int:
        return self.in_order[-1].position if self.in_order else 0

    # -- Assignments --------------------------------------------------------------------

    async def still_assigned(self, pairs: Collection[CarePair]) -> set[CarePair]:
        self._check()
        return set(pairs) & self.assignments
