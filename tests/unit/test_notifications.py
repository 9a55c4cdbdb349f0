"""The NOTIFY payloads: what the appends and the care assignments write, the listener reads."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from ledger.domain import CarePair, VersionRange
from ledger.storage.notifications import (
    Unreadable,
    announce_events,
    announce_removal,
    read_events,
    read_removal,
)

ranges = st.builds(
    VersionRange,
    session_id=st.uuids(),
    first=st.integers(1, 2**31 - 1),
    last=st.integers(1, 2**31 - 1),
)


@given(st.lists(ranges, min_size=1, max_size=64))
def test_announced_ranges_read_back_as_written(written: list[VersionRange]) -> None:
    payload = announce_events(written)
    assert read_events(payload) == written
    # NOTIFY's limit is 8,000 bytes; a full group of 64 sessions stays well within it.
    assert len(payload.encode()) < 8000


def test_an_unreadable_line_is_marked_and_the_others_still_read() -> None:
    good = VersionRange(session_id=uuid.uuid4(), first=1, last=2)
    payload = "\n".join([announce_events([good]), "not a line", f"{good.session_id} x 3", ""])
    assert read_events(payload) == [
        good,
        Unreadable("not a line"),
        Unreadable(f"{good.session_id} x 3"),
        Unreadable(""),
    ]


@given(st.text(max_size=40), st.text(max_size=40))
def test_removals_read_back_as_written(therapist: str, patient: str) -> None:
    pair = CarePair(therapist_id=therapist, patient_id=patient)
    assert read_removal(announce_removal(pair)) == pair


def test_a_malformed_removal_is_ignored() -> None:
    for payload in ("", "[", '["only one"]', '{"a": 1}', "42"):
        assert read_removal(payload) is None
