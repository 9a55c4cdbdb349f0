"""The state machine and the hash chain, without a database."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.domain import (
    GENESIS_HASH,
    Event,
    Head,
    NewEvent,
    Status,
    seal,
    verify_chain,
)
from ledger.errors import Conflict

NON_TERMINAL = [s for s in Status if s not in (Status.PROCESSED, Status.FAILED)]
MOMENT = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)

new_events = st.builds(
    NewEvent,
    status=st.sampled_from(NON_TERMINAL),
    progress=st.none() | st.integers(0, 100),
    message=st.none() | st.text(max_size=20),
    data=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
)


def materialise(session_id: uuid.UUID, batch: list[NewEvent]) -> list[Event]:
    sealed = seal(session_id, Head(), batch, actor="svc", recorded_at=MOMENT)
    return [
        Event(
            session_id=session_id,
            version=s.version,
            position=s.version,
            type=s.type,
            status=s.status,
            progress=s.progress,
            message=s.message,
            error=s.error,
            data=s.data,
            actor="svc",
            recorded_at=MOMENT,
            prev_hash=s.prev_hash,
            hash=s.hash,
        )
        for s in sealed
    ]


@given(st.lists(new_events, min_size=1, max_size=20))
def test_sealed_chains_verify(batch: list[NewEvent]) -> None:
    events = materialise(uuid.uuid4(), batch)
    assert [e.version for e in events] == list(range(1, len(batch) + 1))
    assert events[0].prev_hash == GENESIS_HASH
    assert verify_chain(events) is None


@given(st.lists(new_events, min_size=2, max_size=10), st.data())
def test_any_edit_is_detected_at_its_version(batch: list[NewEvent], data: st.DataObject) -> None:
    events = materialise(uuid.uuid4(), batch)
    index = data.draw(st.integers(0, len(events) - 1))
    target = events[index]
    edited = replace(target, progress=(target.progress + 1) % 101, message="rewritten")
    events[index] = edited
    found = verify_chain(events)
    assert found is not None
    assert found.version == target.version


def test_a_deleted_event_is_named() -> None:
    events = materialise(uuid.uuid4(), [NewEvent(Status.QUEUED)] * 4)
    del events[2]
    found = verify_chain(events)
    assert found is not None
    assert found.version == 3
    assert "missing" in found.reason


def test_terminal_ends_the_batch_and_the_session() -> None:
    sid = uuid.uuid4()
    with pytest.raises(Conflict):
        seal(
            sid,
            Head(),
            [NewEvent(Status.PROCESSED), NewEvent(Status.QUEUED)],
            actor="a",
            recorded_at=MOMENT,
        )
    with pytest.raises(Conflict):
        seal(
            sid,
            Head(version=3, terminal=True),
            [NewEvent(Status.QUEUED)],
            actor="a",
            recorded_at=MOMENT,
        )
    done = seal(
        sid,
        Head(version=2, progress=40),
        [NewEvent(Status.PROCESSED)],
        actor="a",
        recorded_at=MOMENT,
    )
    assert (done[0].version, done[0].progress, done[0].type.value) == (3, 100, "complete")
    failed = seal(
        sid,
        Head(progress=40),
        [NewEvent(Status.FAILED, error="boom")],
        actor="a",
        recorded_at=MOMENT,
    )
    assert (failed[0].progress, failed[0].type.value) == (40, "error")
