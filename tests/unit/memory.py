"""An in-memory ledger with the interfaces ``ledger.live`` reads through (``live.sources``).

It is what the hub and the feeds see of storage, kept in lists: appending seals events with
the real domain rules, and the reads answer as the PostgreSQL ones do (a page after a
version, ranges of several sessions, the global order by position). Counters let a test
see how often the table was read.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from uuid import UUID

from ledger.cursor import START, CursorIds, Point, Reached
from ledger.domain import CarePair, Event, Head, NewEvent, Scope, Status, VersionRange, seal
from ledger.storage.global_order import GlobalPage
from ledger.storage.scoped import Placed, Resolved, ScopeRead, SessionState


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


class MemoryScoped:
    """The scoped streams' reads (``live.sources.ScopedEvents``) over a ``MemoryLedger``,
    for scopes that name sessions. Every event is its own committed transaction (its
    position), so nothing is held back; ``during_page`` runs inside each page read, as the
    rest of the ledger's traffic would."""

    def __init__(self, ledger: MemoryLedger) -> None:
        self.ledger = ledger
        self.page_reads = 0
        self.during_page: Callable[[], None] = lambda: None

    def _tail(self) -> Point:
        last = self.ledger.in_order[-1].position if self.ledger.in_order else 0
        return Point(last, last) if last else START

    async def ranges(self, wanted: Sequence[VersionRange]) -> list[Placed]:
        events = await self.ledger.ranges(wanted)
        return [Placed(event, event.position, "memory") for event in events]

    async def mark(self) -> None:
        return None

    async def states(
        self, scope: Scope, safe: Point = START, known: Mapping[UUID, int] | None = None
    ) -> ScopeRead:
        known = known or {}
        states = []
        for session_id in sorted(scope.sessions):
            stored = self.ledger.by_session.get(session_id, [])
            before = [e.version for e in stored if e.position <= safe.position]
            latest = stored[-1] if stored else None
            states.append(
                SessionState(
                    session_id=session_id,
                    patient_id="memory",
                    delivered=known.get(session_id, before[-1] if before else 0),
                    latest=latest.version if latest else 0,
                    latest_point=Point(latest.position, latest.position) if latest else None,
                    finished=latest is not None and latest.is_terminal,
                )
            )
        return ScopeRead(sessions=states, xmin=self._tail().tx + 1, tail=self._tail())

    async def page(
        self, wanted: Mapping[UUID, int], limit: int, *, below: int = 2**63 - 1
    ) -> list[Placed]:
        self.page_reads += 1
        self.during_page()
        found = [
            event
            for event in self.ledger.in_order
            if event.session_id in wanted
            and event.version > wanted[event.session_id]
            and event.position < below
        ]
        return [Placed(event, event.position) for event in found[:limit]]

    async def resolve(self, ids: CursorIds) -> Resolved:
        by_position = {e.position: e for e in self.ledger.in_order}
        safe = START if not ids.safe else Point(ids.safe, ids.safe)
        beyond = {
            by_position[p].session_id: Reached(by_position[p].version, Point(p, p))
            for p in ids.beyond
        }
        return Resolved(safe=safe, beyond=beyond)

    async def patients_of(self, therapist_id: str) -> set[str]:
        return set()
