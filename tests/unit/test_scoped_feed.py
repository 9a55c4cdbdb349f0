"""A scoped feed's table reads against an in-memory ledger and a real hub: a read that a
busy ledger overflows meanwhile is still delivered; one that a scope change spoils is not,
and the next read delivers it, once."""

from __future__ import annotations

import asyncio
import uuid

from ledger.cursor import CursorIds, Point
from ledger.domain import Scope, Status
from ledger.live.feeds import CATCHUP_PAGE, Clock, Kind
from ledger.live.hub import Hub
from ledger.live.releases import Releases
from ledger.live.scoped import ScopedFeed
from ledger.storage.notifications import Mark
from tests.unit.memory import MemoryLedger, MemoryScoped

QUIET = Clock(heartbeat=60.0, expires_at=None)
QUEUE = 16
EVENTS = 3 * CATCHUP_PAGE + 7


async def delivered(feed: ScopedFeed, count: int) -> list[tuple[uuid.UUID, int]]:
    got: list[tuple[uuid.UUID, int]] = []
    items = feed.items()
    async with asyncio.timeout(10):
        while len(got) < count:
            item = await anext(items)
            if item.kind is Kind.EVENT:
                got += [(e.event.session_id, e.event.version) for e in item.events]
    return got


async def replayed_from_the_start(during_page: str) -> tuple[list[tuple[uuid.UUID, int]], int]:
    ledger = MemoryLedger()
    reads = MemoryScoped(ledger)
    session = uuid.uuid4()
    for _ in range(EVENTS):
        ledger.append(session, Status.TRANSCRIBING)
    hub = Hub(ledger, ledger, queue_size=QUEUE, scoped=reads)
    with Releases() as stack:
        scope = Scope(sessions=frozenset({session}))
        feed = await ScopedFeed.open(reads, hub, scope, CursorIds(0, ()), QUIET, stack)
        first = True

        def traffic() -> None:
            nonlocal first
            if during_page == "flood":  # more than its queue holds: it overflows
                for _ in range(QUEUE + 1):
                    feed.sub.offer(Mark(xmin=1, tail=0, tail_tx=0))
            elif during_page == "scope change" and first:
                feed.sub.scope_changed()
            first = False

        reads.during_page = traffic
        got = await delivered(feed, EVENTS)
        assert feed.cursor.safe == Point(EVENTS, EVENTS)
    assert got == [(session, version) for version in range(1, EVENTS + 1)]
    return got, reads.page_reads


async def test_a_read_that_a_busy_ledger_overflows_meanwhile_is_still_delivered() -> None:
    _, page_reads = await replayed_from_the_start("flood")
    assert page_reads == EVENTS // CATCHUP_PAGE + 1  # each page read once


async def test_a_read_that_a_scope_change_spoils_is_read_again_and_delivered_once() -> None:
    _, page_reads = await replayed_from_the_start("scope change")
    assert page_reads == EVENTS // CATCHUP_PAGE + 2  # the spoilt first page, read again
