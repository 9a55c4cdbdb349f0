"""The scoped cursor's text: what it says, read back; its bound; what it refuses."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.cursor import (
    MAX_CURSOR_LENGTH,
    MAX_POSITION,
    START,
    Cursor,
    CursorIds,
    Point,
    Reached,
    parse_cursor,
)
from ledger.errors import BadRequest

positions = st.integers(1, MAX_POSITION)


@given(st.integers(0, MAX_POSITION), st.lists(positions, unique=True, max_size=40))
def test_a_cursor_reads_back_as_written(safe: int, beyond: list[int]) -> None:
    cursor = Cursor(Point(1, safe))
    for position in beyond:
        cursor.beyond[uuid.uuid4()] = Reached(1, Point(2, position))
    text = cursor.text()
    assert parse_cursor(text) == CursorIds(safe=safe, beyond=tuple(sorted(beyond)))
    assert len(text) <= MAX_CURSOR_LENGTH  # 40 entries fit, whatever the positions


def test_a_global_position_is_a_cursor_that_names_no_session() -> None:
    assert parse_cursor("1204") == CursorIds(safe=1204, beyond=())
    assert parse_cursor("0") == CursorIds(safe=0, beyond=())


@pytest.mark.parametrize(
    "raw", ["", "x", "1.", ".1", "1..2", "-1", "1.2.0", "1.2.-1", "1.-2", "1." + "9" * 20, "1,2"]
)
def test_what_no_stream_hands_out_is_refused(raw: str) -> None:
    with pytest.raises(BadRequest):
        parse_cursor(raw)


def test_an_overlong_cursor_is_refused() -> None:
    with pytest.raises(BadRequest):
        parse_cursor("1" * (MAX_CURSOR_LENGTH + 1))


@given(st.lists(st.integers(1, 2**40), unique=True, min_size=1, max_size=400))
def test_the_cursor_never_grows_past_its_bound(wanted: list[int]) -> None:
    """Deliveries beyond the safe point are refused once the text would be too long."""
    cursor = Cursor(START)
    for position in wanted:
        session, reached = uuid.uuid4(), Reached(1, Point(5, position))
        if cursor.fits_with(session, reached):
            cursor.delivered(session, reached)
        assert len(cursor.text()) <= MAX_CURSOR_LENGTH


def test_advancing_drops_what_the_safe_point_covers() -> None:
    old, young = uuid.uuid4(), uuid.uuid4()
    cursor = Cursor(Point(10, 100))
    cursor.delivered(old, Reached(3, Point(11, 105)))
    cursor.delivered(young, Reached(1, Point(20, 101)))
    cursor.advance(xmin=15, tail=Point(12, 110))
    assert cursor.safe == Point(12, 110)
    assert set(cursor.beyond) == {young}
    cursor.advance(xmin=15, tail=Point(11, 90))  # an older point never moves it back
    assert cursor.safe == Point(12, 110)
    cursor.delivered(old, Reached(4, Point(12, 109)))  # at or before the point: no entry
    assert set(cursor.beyond) == {young}


@given(
    st.lists(st.tuples(st.integers(2, 9), positions), unique_by=lambda t: t[1], max_size=400),
    st.integers(2, 9),
    positions,
)
def test_moving_the_safe_point_up_to_a_delivery_always_fits(
    entries: list[tuple[int, int]], tx: int, position: int
) -> None:
    """What a held stream does: a commit-safe event is delivered and the safe point moves to
    it, whatever the cursor named before (filled as far as deliveries beyond may go)."""
    cursor = Cursor(Point(1, 1))
    for entry_tx, entry_position in entries:
        session, reached = uuid.uuid4(), Reached(1, Point(entry_tx, entry_position))
        if cursor.fits_with(session, reached):
            cursor.delivered(session, reached)
    point = Point(tx, position)
    cursor.delivered(uuid.uuid4(), Reached(1, point))
    cursor.advance(0, point)
    assert len(cursor.text()) <= MAX_CURSOR_LENGTH
    parse_cursor(cursor.text())  # and it can be handed back
    assert all(reached.point > point for reached in cursor.beyond.values())


def test_a_hand_made_cursor_that_moving_could_outgrow_is_refused() -> None:
    """The parts after the first two of a cursor a stream writes fit in 981 characters;
    a longer tail (here 1,020 characters in all, under the bound) is not one of them."""
    raw = "5.995" + ".1" * 509
    assert len(raw) <= MAX_CURSOR_LENGTH
    with pytest.raises(BadRequest):
        parse_cursor(raw)
    assert parse_cursor("5.995" + ".1" * 490).beyond[-1] == 1000 + 490


@given(st.lists(st.tuples(st.integers(2, 9), positions), unique_by=lambda t: t[1], max_size=400))
def test_every_cursor_a_stream_writes_reads_back(entries: list[tuple[int, int]]) -> None:
    cursor = Cursor(Point(1, 1))
    for tx, position in entries:
        session, reached = uuid.uuid4(), Reached(1, Point(tx, position))
        if cursor.fits_with(session, reached):
            cursor.delivered(session, reached)
        parse_cursor(cursor.text())
