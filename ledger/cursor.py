"""The scoped streams' resume cursor: a commit-safe point and the sessions delivered beyond.

A scoped stream delivers each event as soon as it is committed, so it cannot simply name
the last event it sent in the global order (an older transaction may still commit below
it). Its cursor says two things instead: ``safe``, a point in the global order
``(tx_id, position)`` up to which every event of the scope was delivered and below which
nothing can appear any more; and, for each session whose last delivered event lies beyond
that point, that event. A session's delivered version is then its beyond entry's, or else
the last version it has at or before ``safe``.

On the wire it is the positions alone, decimal: ``safe`` then each beyond entry's position
as the difference to the one before (sorted, so all but the first are positive), joined by
dots: ``1204`` or ``1204.3.5``. A global-stream cursor (one position) is a valid scoped
cursor that means the same. The table turns positions back into sessions and versions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from uuid import UUID

from ledger.errors import BadRequest

MAX_CURSOR_LENGTH = 1024
MAX_POSITION = 2**63 - 1
# Deliveries beyond the safe point stop this far short of the bound, so that delivering a
# commit-safe event, which moves the safe point up to it, always fits: the new point and
# the first difference after it are at most 19 + 1 + 20 characters, and every other part
# only merges with its neighbours.
_ROOM = 40
BEYOND_LIMIT = MAX_CURSOR_LENGTH - _ROOM
# Below this many beyond entries the cursor is short enough whatever the positions are
# (each part is at most 20 characters and a dot).
_ALWAYS_SHORT = (BEYOND_LIMIT - 20) // 21


@dataclass(frozen=True, slots=True, order=True)
class Point:
    """A place in the global order; ``START`` is before every event."""

    tx: int
    position: int


START = Point(0, 0)


@dataclass(frozen=True, slots=True)
class Reached:
    """The last event a stream delivered of one session: its version and place."""

    version: int
    point: Point


@dataclass(frozen=True, slots=True)
class CursorIds:
    """A cursor as a client hands it back: the positions, not yet looked up."""

    safe: int
    beyond: tuple[int, ...]


def parse_cursor(raw: str) -> CursorIds:
    """The positions of a cursor, or a 400 that says what is wrong with it."""
    if len(raw) > MAX_CURSOR_LENGTH:
        raise BadRequest(f"the cursor is longer than {MAX_CURSOR_LENGTH} characters")
    parts = raw.strip().split(".")
    numbers: list[int] = []
    for index, part in enumerate(parts):
        negative = index == 1 and part.startswith("-")
        digits = part[1:] if negative else part
        if not digits.isascii() or not digits.isdigit() or len(digits) > 19:
            raise BadRequest(
                "the cursor must be an id this stream handed out (Last-Event-ID or after)"
            )
        numbers.append(-int(digits) if negative else int(digits))
    safe = numbers[0]
    beyond: list[int] = []
    at = safe
    for index, delta in enumerate(numbers[1:]):
        if index > 0 and delta <= 0:
            raise BadRequest("the cursor's positions are not in order")
        at += delta
        if not 1 <= at <= MAX_POSITION:
            raise BadRequest("the cursor names a position outside any ledger")
        beyond.append(at)
    if safe > MAX_POSITION:
        raise BadRequest("the cursor names a position outside any ledger")
    if len(parts) > 2 and sum(len(part) + 1 for part in parts[2:]) > BEYOND_LIMIT - 3:
        # More than a stream writes: moving its safe point could outgrow the bound.
        raise BadRequest("the cursor is not one a stream handed out")
    return CursorIds(safe=safe, beyond=tuple(beyond))


class Cursor:
    """Where a scoped stream stands; its text is the ``id`` of the next message."""

    __slots__ = ("beyond", "safe")

    def __init__(self, safe: Point, beyond: dict[UUID, Reached] | None = None) -> None:
        self.safe = safe
        self.beyond: dict[UUID, Reached] = {} if beyond is None else beyond

    def delivered(self, session_id: UUID, reached: Reached) -> None:
        if reached.point > self.safe:
            self.beyond[session_id] = reached
        else:
            self.beyond.pop(session_id, None)

    def advance(self, xmin: int, tail: Point) -> None:
        """Everything of the scope up to ``tail`` is delivered and every transaction below
        ``xmin`` has ended: entries of those transactions are covered by the new point."""
        if tail > self.safe:
            self.safe = tail
        for session_id, reached in list(self.beyond.items()):
            if reached.point.tx < xmin or reached.point <= self.safe:
                del self.beyond[session_id]

    def fits_with(self, session_id: UUID, reached: Reached) -> bool:
        """Whether the cursor stays within its length once this event is delivered beyond
        the safe point (one the safe point moves up to always fits: see ``_ROOM``)."""
        entries = len(self.beyond) + (session_id not in self.beyond)
        if entries <= _ALWAYS_SHORT or reached.point <= self.safe:
            return True
        positions = {s: r.point.position for s, r in self.beyond.items()}
        positions[session_id] = reached.point.position
        return len(format_cursor(self.safe.position, positions.values())) <= BEYOND_LIMIT

    def full(self) -> bool:
        """Whether it names more than deliveries beyond the safe point may add up to."""
        return len(self.beyond) > _ALWAYS_SHORT and len(self.text()) > BEYOND_LIMIT

    def text(self) -> str:
        if not self.beyond:
            return str(self.safe.position)
        return format_cursor(self.safe.position, (r.point.position for r in self.beyond.values()))


def format_cursor(safe: int, beyond: Iterable[int]) -> str:
    parts = [str(safe)]
    at = safe
    for position in sorted(beyond):
        parts.append(str(position - at))
        at = position
    return ".".join(parts)
