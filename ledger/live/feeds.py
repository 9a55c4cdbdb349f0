"""What a stream sends, independent of SSE or WebSocket framing.

A feed is opened *before* the response starts (so a 204 or 400 can still be answered):
it subscribes first and reads the table second, which is what makes a reconnect that
races with appends lose nothing. Afterwards it yields items in order: the replay from
the table, then live events from the hub, catching up from the table whenever the hub
says its queue may be incomplete or a version is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Self
from uuid import UUID

from ledger import metrics
from ledger.domain import CarePair, Event
from ledger.errors import BadRequest
from ledger.live.hub import Hub
from ledger.live.releases import Releases
from ledger.live.sources import GlobalEvents, SessionEvents
from ledger.live.subscription import Mailbox, Subscription
from ledger.wire import Encoded, state_json

HELD_BACK_RETRY_SECONDS = 0.25
CATCHUP_PAGE = 1000


class Kind(Enum):
    EVENT = "event"
    RESET = "reset"
    HEARTBEAT = "heartbeat"


@dataclass(frozen=True, slots=True)
class Item:
    kind: Kind
    # For events: one from the hub, or a page from the table, in order (a page goes out in
    # one write).
    events: tuple[Encoded, ...] = ()
    # For a scoped stream's events: each one's id, that stream's cursor after it.
    cursors: tuple[str, ...] = ()
    # For a reset: the current state as JSON and its version.
    reset_json: str | None = None
    reset_id: int | str = 0
    # Handed over by the hub as it happened (not replayed from the table): its delivery
    # lag is a meaningful measurement.
    live: bool = False

    def count_delivered(self, transport: str) -> None:
        """Count written events; for live ones, observe commit-to-write lag."""
        metrics.DELIVERED[transport].inc(len(self.events))
        if self.live:
            now = time.time()
            for encoded in self.events:
                metrics.DELIVERY_LAG.observe(max(now - encoded.recorded_at(), 0.0))


HEARTBEAT_ITEM = Item(Kind.HEARTBEAT)


def parse_last_event_id(header: str | None, query: str | None) -> int | None:
    """The header wins: a browser reconnects to the same URL and adds the header."""
    raw = header if header is not None else query
    if raw is None:
        return None
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise BadRequest("Last-Event-ID must be a non-negative integer")
    return int(raw)


class Clock:
    """When the next heartbeat is due and when the token runs out."""

    def __init__(self, heartbeat: float, expires_at: float | None) -> None:
        self.heartbeat = heartbeat
        self.expires_at = expires_at

    def wait_budget(self, last_sent: float) -> float:
        budget = last_sent + self.heartbeat - time.monotonic()
        if self.expires_at is not None:
            budget = min(budget, self.expires_at - time.time())
        return max(budget, 0.0)

    def heartbeat_due(self, last_sent: float) -> bool:
        return time.monotonic() - last_sent >= self.heartbeat - 0.001

    def expired(self) -> bool:
        return self.expires_at is not None and time.time() >= self.expires_at


class _Feed:
    """What the feeds share: a subscription, a clock, and how they rest between sends."""

    sub: Mailbox[Any]
    clock: Clock
    _timer: asyncio.TimerHandle | None = None
    _due = 0.0
    _rang = False

    def _open(self) -> bool:
        return not self.sub.closed and not self.clock.expired()

    async def _rest(self, sent_at: float, cap: float | None = None) -> bool:
        """Wait for the hub's wake-up, at most until a heartbeat is due (or ``cap``);
        True when the wait ran out and a heartbeat should go out now.

        The deadline is one timer that a busy stream keeps, armed again only when it must
        ring earlier, not at every delivery (a timeout around each wait cost about 5 µs of
        every delivery); one that rings early only wakes the stream to rest again."""
        budget = self.clock.wait_budget(sent_at)
        if cap is not None:
            budget = min(budget, cap)
        due = time.monotonic() + budget
        if self._timer is None or self._due > due:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_later(budget, self._ring)
            self._due = due
        self._rang = False
        await self.sub.wake.wait()
        return self._rang and self.clock.heartbeat_due(sent_at) and self._open()

    def _ring(self) -> None:
        self._timer = None
        self._rang = True
        self.sub.wake.set()

    def ends_with(self, stack: Releases) -> Self:
        """Cancel the heartbeat timer when the stream's stack closes, however it ends (the
        timer holds the feed, and with it the subscription, until it rings)."""
        stack.callback(self._stop_timer)
        return self

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class SessionFeed(_Feed):
    """One session's stream from ``after`` (exclusive), then live until a terminal event."""

    def __init__(
        self,
        events: SessionEvents,
        sub: Subscription,
        session_id: UUID,
        clock: Clock,
        *,
        after: int,
        first: list[Item],
        finished: bool,
    ) -> None:
        self.events = events
        self.sub = sub
        self.session_id = session_id
        self.clock = clock
        self.last = after
        self.first = first
        self.finished = finished

    @classmethod
    async def open(
        cls,
        events: SessionEvents,
        hub: Hub,
        session_id: UUID,
        last_event_id: int | None,
        clock: Clock,
        stack: Releases,
        *,
        access: CarePair | None = None,
    ) -> SessionFeed | None:
        """Decide where the stream starts; ``None`` means the client has seen the end (204).

        ``access`` is the care assignment the reader relies on, if any: the stream ends when
        it is removed.
        """
        sub = hub.register(session_id, access=access)
        stack.callback(functools.partial(hub.unregister, sub))
        head = await events.latest(session_id)
        head_version = head.version if head is not None else 0

        def feed(after: int, first: list[Item], *, finished: bool) -> SessionFeed:
            made = cls(events, sub, session_id, clock, after=after, first=first, finished=finished)
            return made.ends_with(stack)

        if last_event_id is None:
            if head is None:
                return feed(0, [], finished=False)
            return feed(
                head.version, [Item(Kind.EVENT, (Encoded(head),))], finished=head.is_terminal
            )
        if last_event_id > head_version:
            # The client saw a history this database does not have (a restore, say).
            item = Item(Kind.RESET, reset_json=state_json(session_id, head), reset_id=head_version)
            return feed(head_version, [item], finished=head is not None and head.is_terminal)
        if head is not None and head.is_terminal and last_event_id == head.version:
            return None
        return feed(last_event_id, [], finished=False)

    async def items(self) -> AsyncIterator[Item]:
        # Popped, not iterated: nothing sent stays referenced while the stream idles.
        while self.first:
            yield self.first.pop(0)
        if self.finished:
            return
        self.sub.catch_up()  # The replay from `after` comes from the table.
        sent_at = time.monotonic()
        while self._open():
            if self.sub.needs_catchup:
                self.sub.needs_catchup = False
                self.sub.frames.clear()
                metrics.CATCHUP_READS.inc()
                pages = self.events.replay(self.session_id, self.last, page_size=CATCHUP_PAGE)
                async with contextlib.aclosing(pages):
                    async for page in pages:
                        item = self._emit(through_terminal(page))
                        ended = item.events[-1].event.is_terminal
                        # Deleted, not left bound: a page must not stay referenced by this
                        # frame while the stream idles.
                        del page
                        yield item
                        del item
                        sent_at = time.monotonic()
                        if ended or not self._open():
                            return
                continue
            while self.sub.frames and not self.sub.needs_catchup:
                encoded = self.sub.frames.pop(0)
                version = encoded.event.version
                if version <= self.last:
                    continue
                if version > self.last + 1:
                    self.sub.catch_up()  # A version was skipped: the table has it.
                    break
                yield self._emit([encoded], live=True)
                sent_at = time.monotonic()
                if encoded.event.is_terminal:
                    return
            if self.sub.needs_catchup or not self._open():
                continue
            self.sub.wake.clear()
            if self.sub.frames or self.sub.needs_catchup:
                continue
            if await self._rest(sent_at):
                yield HEARTBEAT_ITEM
                sent_at = time.monotonic()

    def _emit(self, encoded: list[Encoded], *, live: bool = False) -> Item:
        self.last = encoded[-1].event.version
        return Item(Kind.EVENT, tuple(encoded), live=live)


def through_terminal(page: list[Event]) -> list[Encoded]:
    """A page's events up to and including a terminal one (nothing follows the end)."""
    encoded: list[Encoded] = []
    for event in page:
        encoded.append(Encoded(event))
        if event.is_terminal:
            break
    return encoded


class GlobalFeed(_Feed):
    """Every session's events in commit-safe order, resumable by global position."""

    def __init__(
        self, events: GlobalEvents, sub: Subscription, clock: Clock, *, after: int
    ) -> None:
        self.events = events
        self.sub = sub
        self.clock = clock
        self.last = after

    @classmethod
    async def open(
        cls,
        events: GlobalEvents,
        hub: Hub,
        last_event_id: int | None,
        clock: Clock,
        stack: Releases,
    ) -> GlobalFeed:
        sub = hub.register(None)
        stack.callback(functools.partial(hub.unregister, sub))
        if last_event_id is None:
            after = await events.tail()
        else:
            await events.check_cursor(last_event_id)
            after = last_event_id
        return cls(events, sub, clock, after=after).ends_with(stack)

    async def items(self) -> AsyncIterator[Item]:
        sent_at = time.monotonic()
        held_back = False
        self.sub.catch_up()
        while self._open():
            if self.sub.needs_catchup:
                self.sub.needs_catchup = False
                metrics.CATCHUP_READS.inc()
                while True:
                    page = await self.events.page(self.last, CATCHUP_PAGE)
                    if page.events:
                        self.last = page.events[-1].position
                        yield Item(Kind.EVENT, tuple(Encoded(event) for event in page.events))
                        sent_at = time.monotonic()
                    held_back = page.held_back
                    full = len(page.events) == CATCHUP_PAGE
                    del page  # not held while the stream rests
                    if not full or not self._open():
                        break
                continue
            self.sub.wake.clear()
            if self.sub.needs_catchup:
                continue
            # While a committed event waits behind an older open transaction (which may end
            # without any notification), look again soon.
            if await self._rest(sent_at, HELD_BACK_RETRY_SECONDS if held_back else None):
                yield HEARTBEAT_ITEM
                sent_at = time.monotonic()
            if held_back:
                self.sub.catch_up()
