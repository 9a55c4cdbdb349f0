"""The hub against an in-memory ledger: what each report of the listener does to whom."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from ledger.domain import CarePair, Scope, Status, VersionRange
from ledger.errors import Unavailable
from ledger.live.hub import Hub
from ledger.storage.notifications import Mark, Unreadable
from ledger.wire import Encoded
from tests.unit.memory import MemoryLedger, MemoryScoped

PAIR = CarePair(therapist_id="dr-a", patient_id="p-1")


def make_hub(ledger: MemoryLedger, queue_size: int = 8) -> Hub:
    return Hub(ledger, ledger, queue_size=queue_size)


async def settled() -> None:
    """Let the hub's background read run."""
    for _ in range(5):
        await asyncio.sleep(0)


def announce(*entries: tuple[uuid.UUID, int, int]) -> list[VersionRange]:
    return [VersionRange(session_id=s, first=a, last=b) for s, a, b in entries]


async def test_an_announced_range_is_read_once_and_offered_to_every_subscriber() -> None:
    ledger = MemoryLedger()
    hub = make_hub(ledger)
    session = uuid.uuid4()
    with hub.subscribe(session) as one, hub.subscribe(session) as two:
        ledger.append(session, Status.QUEUED, Status.TRANSCRIBING)
        hub.announced(announce((session, 1, 2)))
        await settled()
        assert ledger.range_reads == 1
        for sub in (one, two):
            assert [f.event.version for f in sub.frames] == [1, 2]
            assert sub.wake.is_set()
            assert not sub.needs_catchup
        # Encoded once: both subscribers hold the same objects.
        assert [id(f) for f in one.frames] == [id(f) for f in two.frames]


async def test_sessions_nobody_follows_cost_no_read() -> None:
    ledger = MemoryLedger()
    hub = make_hub(ledger)
    followed, other = uuid.uuid4(), uuid.uuid4()
    with hub.subscribe(followed) as sub:
        ledger.append(other, Status.QUEUED)
        hub.announced(announce((other, 1, 1)))
        await settled()
        assert ledger.range_reads == 0
        assert not sub.frames


async def test_notifications_arriving_together_are_read_in_one_query() -> None:
    ledger = MemoryLedger()
    hub = make_hub(ledger)
    a, b = uuid.uuid4(), uuid.uuid4()
    with hub.subscribe(a) as sub_a, hub.subscribe(b) as sub_b:
        ledger.append(a, Status.QUEUED)
        ledger.append(b, Status.QUEUED)
        ledger.append(a, Status.TRANSCRIBING)
        hub.announced(announce((a, 1, 1), (b, 1, 1)))
        hub.announced(announce((a, 2, 2)))
        await settled()
        assert ledger.range_reads == 1
        assert [f.event.version for f in sub_a.frames] == [1, 2]
        assert [f.event.version for f in sub_b.frames] == [1]


async def test_an_unreadable_line_makes_everyone_catch_up() -> None:
    ledger = MemoryLedger()
    hub = make_hub(ledger)
    a, b = uuid.uuid4(), uuid.uuid4()
    with hub.subscribe(a) as sub_a, hub.subscribe(b) as sub_b, hub.subscribe(None) as everything:
        hub.announced([Unreadable("from a newer version")])
        assert all(sub.needs_catchup for sub in (sub_a, sub_b, everything))


async def test_the_global_subscriber_catches_up_on_every_notification() -> None:
    ledger = MemoryLedger()
    hub = make_hub(ledger)
    with hub.subscribe(None) as everything:
        hub.announced(announce((uuid.uuid4(), 1, 1)))
        assert everything.needs_catchup
        assert ledger.range_reads == 0


async def test_a_full_queue_falls_back_to_the_table() -> None:
    ledger = MemoryLedger()
    hub = make_hub(ledger, queue_size=2)
    session = uuid.uuid4()
    with hub.subscribe(session) as sub:
        ledger.append(session, Status.QUEUED, Status.QUEUED, Status.QUEUED)
        hub.announced(announce((session, 1, 3)))
        await settled()
        assert sub.needs_catchup
        assert not sub.frames


async def test_a_failed_read_sends_its_subscribers_to_the_table() -> None:
    ledger = MemoryLedger()
    hub = make_hub(ledger)
    session = uuid.uuid4()
    with hub.subscribe(session) as sub:
        ledger.append(session, Status.QUEUED)
        ledger.fail_reads = True
        hub.announced(announce((session, 1, 1)))
        await settled()
        assert sub.needs_catchup


async def test_a_removed_assignment_revokes_only_the_streams_resting_on_it() -> None:
    ledger = MemoryLedger()
    hub = make_hub(ledger)
    session = uuid.uuid4()
    other = CarePair(therapist_id="dr-b", patient_id="p-1")
    with (
        hub.subscribe(session, access=PAIR) as revoked,
        hub.subscribe(session, access=other) as kept,
        hub.subscribe(session) as patient,
    ):
        hub.removed(PAIR)
        assert revoked.revoked
        assert revoked.closed
        assert not kept.closed
        assert not patient.closed


async def test_a_reconnect_catches_everyone_up_and_rechecks_assignments() -> None:
    """A removal announced while the listener was away is found in the table."""
    ledger = MemoryLedger()
    ledger.assignments = {CarePair(therapist_id="dr-b", patient_id="p-1")}
    hub = make_hub(ledger)
    session = uuid.uuid4()
    with (
        hub.subscribe(session, access=PAIR) as gone,
        hub.subscribe(session, access=CarePair(therapist_id="dr-b", patient_id="p-1")) as kept,
    ):
        hub.connected()
        assert gone.needs_catchup
        assert kept.needs_catchup
        await settled()
        assert gone.revoked
        assert not kept.revoked
    await hub.stop()


async def test_unsubscribing_forgets_the_session() -> None:
    ledger = MemoryLedger()
    hub = make_hub(ledger)
    session = uuid.uuid4()
    with hub.subscribe(session) as sub:
        pass
    assert sub.closed
    ledger.append(session, Status.QUEUED)
    hub.announced(announce((session, 1, 1)))
    await settled()
    assert ledger.range_reads == 0


async def test_after_close_all_no_stream_may_open() -> None:
    ledger = MemoryLedger()
    hub = make_hub(ledger)
    session = uuid.uuid4()
    with hub.subscribe(session) as sub:
        hub.close_all()
        assert sub.closed
    with pytest.raises(Unavailable), hub.subscribe(session):
        pass


async def test_a_mark_waits_for_the_scoped_streams_next_wake_up_and_a_newer_replaces_it() -> None:
    ledger = MemoryLedger()
    hub = Hub(ledger, ledger, queue_size=8, scoped=MemoryScoped(ledger))
    session = uuid.uuid4()
    older, newer = Mark(xmin=5, tail=3, tail_tx=4), Mark(xmin=9, tail=7, tail_tx=8)
    try:
        with hub.subscribe_scoped(Scope(sessions=frozenset({session}))) as sub:
            hub.marked(older)
            await settled()
            assert list(sub.frames) == [older]
            assert not sub.wake.is_set()  # no stream woken once a second for a mark
            hub.marked(newer)
            await settled()
            assert list(sub.frames) == [newer]  # everything before the older is before it
            # Another process's mark may arrive later with an older snapshot: merged, the
            # higher of each is kept, as applying both would.
            hub.marked(Mark(xmin=7, tail=8, tail_tx=9))
            await settled()
            assert list(sub.frames) == [Mark(xmin=9, tail=8, tail_tx=9)]
            sub.frames[-1] = newer
            ledger.append(session, Status.QUEUED)
            hub.announced(announce((session, 1, 1)))
            await settled()
            assert sub.wake.is_set()
            [mark, event] = sub.frames
            assert mark == newer
            assert isinstance(event, Encoded)
            hub.marked(older)
            await settled()
            assert list(sub.frames)[1:] == [event, older]  # after the event, in order
            sub.catch_up()
            hub.marked(newer)
            await settled()
            assert not sub.frames  # the table read to come moves the cursor anyway
    finally:
        await hub.stop()
