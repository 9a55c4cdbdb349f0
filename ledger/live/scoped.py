"""A scoped stream: every session a reader may follow, on one connection, each event as
soon as it is committed, resumable exactly by its cursor (:mod:`ledger.cursor`).

It opens like the other feeds (subscribe first, read second). Live events come from the
hub, routed by session and patient; each is delivered when it is the next version of its
session, and anything else (a skipped version, a session it does not know past its first
event, a full queue, a listener reconnect) makes it read the scope from the table. The
hub's marks move the cursor's commit-safe point forward; a table read does too. The per-
session order of delivery is the global order's, in which a session's versions ascend
(the transaction of version N+1 reads version N committed before it takes its id).

Should the cursor outgrow its bound (many sessions delivered beyond a commit-safe point
that an old open transaction holds back), the stream holds back like the global stream
until the transaction ends, rather than send an id a client cannot hand back.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from uuid import UUID

from ledger import metrics
from ledger.cursor import MAX_CURSOR_LENGTH, START, Cursor, CursorIds, Point, Reached
from ledger.domain import Event, Scope
from ledger.live.feeds import (
    CATCHUP_PAGE,
    HEARTBEAT_ITEM,
    HELD_BACK_RETRY_SECONDS,
    Clock,
    Item,
    Kind,
    _Feed,
)
from ledger.live.hub import Hub
from ledger.live.releases import Releases
from ledger.live.sources import ScopedEvents
from ledger.live.subscription import ScopedSubscription
from ledger.storage.notifications import Mark
from ledger.storage.scoped import NO_BOUND, Placed
from ledger.wire import Encoded


class ScopedFeed(_Feed):
    sub: ScopedSubscription

    def __init__(
        self,
        reads: ScopedEvents,
        hub: Hub,
        sub: ScopedSubscription,
        clock: Clock,
        cursor: Cursor,
        delivered: dict[UUID, int],
    ) -> None:
        self.reads = reads
        self.hub = hub
        self.sub = sub
        self.clock = clock
        self.cursor = cursor
        # Each known session's delivered version (the cursor's meaning, spelt out).
        self.delivered = delivered
        self.held = False

    @classmethod
    async def open(
        cls,
        reads: ScopedEvents,
        hub: Hub,
        scope: Scope,
        ids: CursorIds | None,
        clock: Clock,
        stack: Releases,
        *,
        relied: frozenset[str] = frozenset(),
    ) -> ScopedFeed:
        """Start from ``ids`` (a cursor handed back) or, without one, from now."""
        sub = hub.register_scoped(scope, relied=relied)
        stack.callback(functools.partial(hub.unregister_scoped, sub))
        await cls._follow_assigned(reads, hub, sub)
        if ids is not None:
            resolved = await reads.resolve(ids)
            feed = cls(reads, hub, sub, clock, Cursor(resolved.safe, resolved.beyond), {})
            sub.catch_up()
            return feed.ends_with(stack)
        read = await reads.states(scope)
        cursor = Cursor(read.tail)
        for state in read.sessions:
            if state.latest_point is not None:
                cursor.delivered(state.session_id, Reached(state.latest, state.latest_point))
        feed = cls(reads, hub, sub, clock, cursor, {s.session_id: s.latest for s in read.sessions})
        if cursor.full():
            # Too many sessions beyond the safe point to name: start from it instead.
            feed.cursor = Cursor(read.tail)
            feed.held = True
            sub.catch_up()
        return feed.ends_with(stack)

    @staticmethod
    async def _follow_assigned(reads: ScopedEvents, hub: Hub, sub: ScopedSubscription) -> None:
        """Route the therapist's assigned patients here before reading the table, so that
        nothing of theirs committed after the read is missed."""
        scope = sub.scope
        if scope.assigned and scope.therapist is not None:
            hub.follow(sub, await reads.patients_of(scope.therapist) | set(scope.patients))

    async def items(self) -> AsyncIterator[Item]:
        sent_at = time.monotonic()
        while self._open():
            if self.sub.needs_catchup:
                async for item in self._catch_up():
                    yield item
                    del item  # nothing sent stays referenced while the stream rests
                    sent_at = time.monotonic()
                continue
            if self.held:
                if await self._pause(sent_at):
                    yield HEARTBEAT_ITEM
                    sent_at = time.monotonic()
                self.sub.catch_up()
                continue
            live = self._live()
            if live is not None:
                yield live
                sent_at = time.monotonic()
            del live
            if self.sub.needs_catchup or self.held or not self._open():
                continue
            self.sub.wake.clear()
            if self.sub.frames or self.sub.needs_catchup:
                continue
            if await self._rest(sent_at):
                yield HEARTBEAT_ITEM
                sent_at = time.monotonic()

    async def _pause(self, sent_at: float) -> bool:
        """A held stream rests its whole retry interval, whatever arrives meanwhile (the
        next table read has it), so it reads at most four times a second however busy the
        ledger is; True when a heartbeat is due."""
        await asyncio.sleep(min(HELD_BACK_RETRY_SECONDS, self.clock.wait_budget(sent_at)))
        return self.clock.heartbeat_due(sent_at) and self._open()

    def _live(self) -> Item | None:
        """Everything queued that can go out now, as one item."""
        events: list[Encoded] = []
        cursors: list[str] = []
        frames = self.sub.frames
        while frames and not self.sub.needs_catchup:
            frame = frames.pop(0)
            if isinstance(frame, Mark):
                self._advance(frame.xmin, Point(frame.tail_tx, frame.tail))
                continue
            event = frame.event
            known = self.delivered.get(event.session_id)
            if known is None:
                if event.version != 1:
                    self.sub.catch_up()  # a session it does not know: the table has it
                    break
                known = 0  # registered since the stream last read its scope
            if event.version <= known:
                continue
            reached = Reached(event.version, Point(frame.tx, event.position))
            if event.version > known + 1:
                self.sub.catch_up()  # a version was skipped: the table has it
                break
            if not self.cursor.fits_with(event.session_id, reached):
                self.held = True
                self.sub.catch_up()
                break
            self._deliver(event.session_id, reached)
            events.append(frame)
            cursors.append(self.cursor.text())
        if not events:
            return None
        return Item(Kind.EVENT, tuple(events), cursors=tuple(cursors), live=True)

    async def _catch_up(self) -> AsyncIterator[Item]:
        """Read the scope from the table: every session's events after what the cursor
        says was delivered; then the cursor's safe point moves to the read's. A session
        that left the scope keeps its cursor entry (should it come back, it resumes where
        it was) until the safe point covers it."""
        self.sub.needs_catchup = False
        self.sub.frames.clear()
        metrics.CATCHUP_READS.inc()
        changes = self.sub.changes
        await self._follow_assigned(self.reads, self.hub, self.sub)
        known = {session_id: r.version for session_id, r in self.cursor.beyond.items()}
        read = await self.reads.states(self.sub.scope, self.cursor.safe, known)
        self.delivered = {s.session_id: s.delivered for s in read.sessions}
        wanted = {s.session_id: s.delivered for s in read.sessions if s.latest > s.delivered}
        below = read.xmin if self.held else NO_BOUND
        while wanted:
            page = await self.reads.page(wanted, CATCHUP_PAGE, below=below)
            if self.sub.changes != changes or not self._open():
                return  # the scope changed (it reads again) or the stream ended
            taken = take_within(self.cursor, page, wanted, read.xmin)
            for placed in taken:
                self.delivered[placed.event.session_id] = placed.event.version
            if len(taken) < len(page):
                self.held = True
                self.sub.catch_up()  # again, holding back
            if taken:
                yield Item(
                    Kind.EVENT,
                    tuple(Encoded(placed.event, placed.tx) for placed in taken),
                    cursors=tuple(placed.cursor for placed in taken),
                )
            if len(taken) < len(page) or not self._open():
                return
            if len(page) < CATCHUP_PAGE:
                break
        # Everything of the scope up to the read's tail went out (a queue that overflowed
        # meanwhile only means another read; a scope that changed, that this one is moot).
        if self.sub.changes == changes:
            self._advance(read.xmin, read.tail)

    def _deliver(self, session_id: UUID, reached: Reached) -> None:
        self.cursor.delivered(session_id, reached)
        self.delivered[session_id] = reached.version

    def _advance(self, xmin: int, tail: Point) -> None:
        self.cursor.advance(xmin, tail)
        if self.held and len(self.cursor.text()) <= MAX_CURSOR_LENGTH // 2:
            self.held = False
            self.sub.catch_up()  # what was held back goes out now


@dataclass(frozen=True, slots=True)
class Taken:
    """An event taken from a table read, and the cursor just after it."""

    event: Event
    tx: int
    cursor: str


def take_within(
    cursor: Cursor, page: list[Placed], wanted: dict[UUID, int], xmin: int
) -> list[Taken]:
    """The page's events, in order, as far as the cursor stays within its bound; the
    cursor and ``wanted`` (each session's version read up to) move along.

    ``xmin`` is that of the read that chose the sessions: an event of a transaction below
    it has every event of the scope before it in this page (they had all committed), so
    once it is delivered the safe point moves up to it, which always fits the bound.
    """
    taken: list[Taken] = []
    for placed in page:
        event = placed.event
        reached = Reached(event.version, placed.point)
        if placed.tx >= xmin and not cursor.fits_with(event.session_id, reached):
            break
        cursor.delivered(event.session_id, reached)
        if placed.tx < xmin:
            cursor.advance(0, placed.point)
        wanted[event.session_id] = event.version
        taken.append(Taken(event, placed.tx, cursor.text()))
    return taken


async def read_page(
    reads: ScopedEvents, scope: Scope, ids: CursorIds | None, limit: int
) -> tuple[list[Event], Cursor, bool]:
    """A history page of the scope after a cursor (``None``: from the start): the events,
    the cursor after them, and whether more are waiting."""
    if ids is None:
        cursor = Cursor(START)
    else:
        resolved = await reads.resolve(ids)
        cursor = Cursor(resolved.safe, resolved.beyond)
    known = {session_id: r.version for session_id, r in cursor.beyond.items()}
    read = await reads.states(scope, cursor.safe, known)
    wanted = {s.session_id: s.delivered for s in read.sessions if s.latest > s.delivered}
    if not wanted:
        cursor.advance(read.xmin, read.tail)
        return [], cursor, False
    page = await reads.page(wanted, limit + 1)
    taken = take_within(cursor, page[:limit], wanted, read.xmin)
    if not taken and page:
        # The cursor cannot name one more session: what is commit-safe goes first.
        page = await reads.page(wanted, limit + 1, below=read.xmin)
        taken = take_within(cursor, page[:limit], wanted, read.xmin)
    more = len(taken) < len(page)
    if not more:
        cursor.advance(read.xmin, read.tail)
    return [t.event for t in taken], cursor, more
