"""The NOTIFY payloads: what the appends and the care assignments write, the listener reads."""

from __future__ import annotations

import json
import uuid

from hypothesis import given
from hypothesis import strategies as st

from ledger.domain import CarePair, VersionRange
from ledger.storage.notifications import (
    AccessChange,
    Mark,
    Unreadable,
    announce_addition,
    announce_events,
    announce_removal,
    read_access,
    read_events,
    read_mark,
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
def test_removals_and_additions_read_back_as_written(therapist: str, patient: str) -> None:
    pair = CarePair(therapist_id=therapist, patient_id=patient)
    assert read_access(announce_removal(pair)) == AccessChange(pair, added=False)
    assert read_access(announce_addition(pair)) == AccessChange(pair, added=True)


def test_an_addition_is_not_read_as_a_removal_by_a_process_from_before_additions() -> None:
    """A process of the previous release unpacks two values: three are refused, not
    misread as the removal of a therapist called "added"."""
    pair = CarePair(therapist_id="t", patient_id="p")
    payload = announce_addition(pair)
    assert len(json.loads(payload)) == 3


def test_a_malformed_access_change_is_ignored() -> None:
    for payload in ("", "[", '["only one"]', '{"a": 1}', '{"a": 1, "b": 2}', "42", "[1,2,3,4]"):
        assert read_access(payload) is None


@given(st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1))
def test_marks_read_back(xmin: int, tail: int, tail_tx: int) -> None:
    payload = f"{xmin} {tail} {tail_tx}"
    assert read_mark(payload) == Mark(xmin=xmin, tail=tail, tail_tx=tail_tx)


def test_a_malformed_mark_is_ignored() -> None:
    for payload in ("", "1 2", "1 2 3 4", "a b c"):
        assert read_mark(payload) is None
