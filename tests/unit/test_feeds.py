"""The feeds against an in-memory ledger and a real hub: where a stream starts, and that it
delivers each event once, in order, whatever happens to the notifications."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ledger.domain import Event, Status, VersionRange
from ledger.live.feeds import Clock, GlobalFeed, Item, Kind, SessionFeed
from ledger.live.hub import Hub
from ledger.live.releases import Releases
from ledger.wire import Encoded
from tests.unit.memory import MemoryLedger

QUIET = Clock(heartbeat=60.0, expires_at=None)


def announce(hub: Hub, session: uuid.UUID, first: int, last: int) -> None:
    hub.announced([VersionRange(session_id=session, first=first, last=last)])


async def next_item(items: AsyncIterator[Item]) -> Item:
    async with asyncio.timeout(5):
        return await anext(items)


async def open_feed(
    ledger: MemoryLedger,
    hub: Hub,
    session: uuid.UUID,
    last_event_id: int | None,
    stack: Releases,
    clock: Clock = QUIET,
) -> SessionFeed | None:
    return await SessionFeed.open(ledger, hub, session, last_event_id, clock, stack)


def versions(item: Item) -> list[int]:
    return [encoded.event.version for encoded in item.events]


async def test_a_fresh_stream_starts_with_the_current_state_then_goes_live() -> None:
    ledger, session = MemoryLedger(), uuid.uuid4()
    hub = Hub(ledger, ledger, queue_size=16)
    ledger.append(session, Status.QUEUED, Status.TRANSCRIBING)
    with Releases() as stack:
        feed = await open_feed(ledger, hub, session, None, stack)
        assert feed is not None
        items = feed.items()
        assert versions(await next_item(items)) == [2]
        waiting = asyncio.ensure_future(next_item(items))
        await asyncio.sleep(0.01)  # the feed has caught up from the table and waits
        ledger.append(session, Status.PROCESSED)
        announce(hub, session, 3, 3)
        last = await waiting
        assert versions(last) == [3]
        assert last.live
        # The terminal event ends the feed.
        assert [item async for item in items] == []


async def test_a_session_without_events_waits_for_its_first() -> None:
    ledger, session = MemoryLedger(), uuid.uuid4()
    hub = Hub(ledger, ledger, queue_size=16)
    with Releases() as stack:
        feed = await open_feed(ledger, hub, session, None, stack)
        assert feed is not None
        items = feed.items()
        waiting = asyncio.ensure_future(next_item(items))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        ledger.append(session, Status.UPLOADED)
        announce(hub, session, 1, 1)
        assert versions(await waiting) == [1]


async def test_resuming_replays_exactly_what_follows_the_cursor() -> None:
    ledger, session = MemoryLedger(), uuid.uuid4()
    hub = Hub(ledger, ledger, queue_size=16)
    ledger.append(session, *[Status.TRANSCRIBING] * 5)
    with Releases() as stack:
        feed = await open_feed(ledger, hub, session, 2, stack)
        assert feed is not None
        assert versions(await next_item(feed.items())) == [3, 4, 5]


async def test_a_cursor_beyond_the_history_is_answered_with_a_reset() -> None:
    ledger, session = MemoryLedger(), uuid.uuid4()
    hub = Hub(ledger, ledger, queue_size=16)
    ledger.append(session, Status.QUEUED)
    with Releases() as stack:
        feed = await open_feed(ledger, hub, session, 9, stack)
        assert feed is not None
        item = await next_item(feed.items())
        assert item.kind is Kind.RESET
        assert item.reset_id == 1
        assert item.reset_json is not None
        assert json.loads(item.reset_json)["version"] == 1


async def test_a_client_that_saw_the_end_gets_no_feed() -> None:
    ledger, session = MemoryLedger(), uuid.uuid4()
    hub = Hub(ledger, ledger, queue_size=16)
    ledger.append(session, Status.QUEUED, Status.FAILED)
    with Releases() as stack:
        assert await open_feed(ledger, hub, session, 2, stack) is None
        # One event earlier: the terminal event, then the end.
        feed = await open_feed(ledger, hub, session, 1, stack)
        assert feed is not None
        assert [versions(item) async for item in feed.items()] == [[2]]


async def test_silence_sends_a_heartbeat_and_reads_nothing() -> None:
    ledger, session = MemoryLedger(), uuid.uuid4()
    hub = Hub(ledger, ledger, queue_size=16)
    with Releases() as stack:
        clock = Clock(heartbeat=0.02, expires_at=None)
        feed = await open_feed(ledger, hub, session, 0, stack, clock)
        assert feed is not None
        items = feed.items()
        assert (await next_item(items)).kind is Kind.HEARTBEAT
        reads = ledger.replay_reads
        assert (await next_item(items)).kind is Kind.HEARTBEAT
        assert ledger.replay_reads == reads


async def test_a_busy_stream_keeps_one_heartbeat_timer_and_beats_once_silent() -> None:
    """Deliveries well inside the heartbeat interval send no heartbeat and do not arm a
    timer each (the one armed is kept); silence afterwards still gets its heartbeat."""
    ledger, session = MemoryLedger(), uuid.uuid4()
    hub = Hub(ledger, ledger, queue_size=16)
    loop = asyncio.get_running_loop()
    armed: list[float] = []
    call_later = loop.call_later
    with Releases() as stack:
        clock = Clock(heartbeat=1.0, expires_at=None)
        feed = await open_feed(ledger, hub, session, None, stack, clock)
        assert feed is not None
        ring = feed._ring

        def counted(delay: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
            if callback == ring:  # the feed's heartbeat timer, not the test's sleeps
                armed.append(delay)
            return call_later(delay, callback, *args)

        items = feed.items()
        loop.call_later = counted  # type: ignore[method-assign,assignment]
        try:
            for version in range(1, 21):
                ledger.append(session, Status.TRANSCRIBING)
                announce(hub, session, version, version)
                item = await next_item(items)
                assert item.kind is Kind.EVENT
                assert versions(item) == [version]
                await asyncio.sleep(0.01)
            assert len(armed) <= 2  # not one per delivery
            assert (await next_item(items)).kind is Kind.HEARTBEAT
        finally:
            del loop.call_later


async def test_the_heartbeat_timer_goes_with_the_stream() -> None:
    """However a stream ends, closing its stack cancels its timer (which holds the feed)."""
    ledger, session = MemoryLedger(), uuid.uuid4()
    hub = Hub(ledger, ledger, queue_size=16)
    with Releases() as stack:
        feed = await open_feed(ledger, hub, session, None, stack)
        assert feed is not None
        resting = asyncio.ensure_future(next_item(feed.items()))
        await asyncio.sleep(0.01)
        timer = feed._timer
        assert timer is not None  # resting until a heartbeat is due
    assert timer.cancelled()
    assert feed._timer is None
    resting.cancel()
    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
        await resting


async def test_an_expired_token_ends_the_feed() -> None:
    ledger, session = MemoryLedger(), uuid.uuid4()
    hub = Hub(ledger, ledger, queue_size=16)
    with Releases() as stack:
        clock = Clock(heartbeat=60.0, expires_at=time.time() + 0.05)
        feed = await open_feed(ledger, hub, session, 0, stack, clock)
        assert feed is not None
        async with asyncio.timeout(5):
            assert [item async for item in feed.items()] == []


async def test_the_global_feed_follows_every_session_from_its_cursor() -> None:
    ledger = MemoryLedger()
    hub = Hub(ledger, ledger, queue_size=16)
    a, b = uuid.uuid4(), uuid.uuid4()
    ledger.append(a, Status.QUEUED)
    with Releases() as stack:
        feed = await GlobalFeed.open(ledger, hub, 0, QUIET, stack)
        items = feed.items()
        assert [e.event.position for e in (await next_item(items)).events] == [1]
        ledger.append(b, Status.QUEUED)
        ledger.append(a, Status.TRANSCRIBING)
        announce(hub, b, 1, 1)
        item = await next_item(items)
        assert [(e.event.session_id, e.event.position) for e in item.events] == [(b, 2), (a, 3)]
        # A fresh global stream starts behind everything there is.
        fresh = await GlobalFeed.open(ledger, hub, None, QUIET, stack)
        assert fresh.last == 3


# What may happen to one append's notification on its way to the hub.
FATES = st.sampled_from(["delivered", "lost", "twice", "late"])


@given(
    batches=st.lists(st.integers(1, 4), min_size=1, max_size=12),
    fates=st.lists(FATES, min_size=12, max_size=12),
    queue_size=st.integers(1, 6),
    start=st.sampled_from([None, 0]),
)
def test_every_event_arrives_once_in_order_whatever_the_notifications_do(
    batches: list[int], fates: list[str], queue_size: int, start: int | None
) -> None:
    """Notifications lost, doubled or delivered late, queues overflowing: the feed still
    delivers each version once, in order, because the table is the truth."""

    async def scenario() -> list[int]:
        ledger, session = MemoryLedger(), uuid.uuid4()
        hub = Hub(ledger, ledger, queue_size=queue_size)
        delivered: list[int] = []
        late: list[tuple[int, int]] = []
        with Releases() as stack:
            feed = await open_feed(ledger, hub, session, start, stack)
            assert feed is not None

            async def consume() -> None:
                async for item in feed.items():
                    delivered.extend(versions(item))

            consumer = asyncio.create_task(consume())
            for size, fate in zip(batches, fates, strict=False):
                stored = ledger.append(session, *[Status.TRANSCRIBING] * size)
                span = (stored[0].version, stored[-1].version)
                if fate in ("delivered", "twice"):
                    announce(hub, session, *span)
                if fate == "twice":
                    announce(hub, session, *span)
                if fate == "late":
                    late.append(span)
                await asyncio.sleep(0)
            for span in late:
                announce(hub, session, *span)
            end = ledger.append(session, Status.PROCESSED)[0].version
            announce(hub, session, end, end)
            async with asyncio.timeout(5):
                await consumer
        return delivered

    delivered = asyncio.run(scenario())
    total = sum(batches) + 1
    assert delivered == list(range(1, total + 1))


def holds_events(value: object) -> bool:
    """Whether a value is, or directly contains, an event sent to the client."""
    if isinstance(value, (Item, Encoded, Event)):
        return True
    if isinstance(value, (list, tuple)):
        return any(isinstance(v, (Item, Encoded, Event)) for v in value)
    return False


async def test_a_resting_stream_holds_nothing_it_has_sent() -> None:
    """An idle stream's memory is its own (docs/ARCHITECTURE.md, "Memory per idle stream"):
    once it waits, neither its first message nor the pages of its catch-up stay referenced
    by the feed or by its suspended frame."""
    ledger, session = MemoryLedger(), uuid.uuid4()
    hub = Hub(ledger, ledger, queue_size=16)
    ledger.append(session, *([Status.TRANSCRIBING] * 40))
    for start in (None, 0):  # the current state first; a catch-up from the table
        with Releases() as stack:
            feed = await open_feed(ledger, hub, session, start, stack)
            assert feed is not None
            items = feed.items()
            first = await next_item(items)
            assert versions(first)[-1] == 40
            del first
            waiting = asyncio.ensure_future(next_item(items))
            await asyncio.sleep(0.01)  # caught up: resting until the next wake-up
            assert not waiting.done()
            assert resting_frame_holds(items) == []
            assert feed.first == []
            waiting.cancel()
    with Releases() as stack:  # the global stream, after a catch-up from its cursor
        every = await GlobalFeed.open(ledger, hub, 0, QUIET, stack)
        items = every.items()
        assert [e.event.version for e in (await next_item(items)).events][-1] == 40
        waiting = asyncio.ensure_future(next_item(items))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        assert resting_frame_holds(items) == []
        waiting.cancel()


def resting_frame_holds(items: AsyncIterator[Item]) -> list[str]:
    """The names by which a suspended feed's frame still refers to something it sent."""
    frame = items.ag_frame  # type: ignore[attr-defined]
    return [name for name, value in frame.f_locals.items() if holds_events(value)]
