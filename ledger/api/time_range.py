"""Time ranges in query strings: ``from`` and ``to``, ISO 8601, naive meaning UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Depends, Query

from ledger.errors import BadRequest

DEFAULT_SPAN = timedelta(days=7)
EARLIEST = datetime.min.replace(tzinfo=UTC)


def as_utc(moment: datetime, name: str) -> datetime:
    """The moment in UTC; one that UTC cannot hold (year 1 at +14:00) is the user's 400.

    Normalising here, not in SQL, keeps PostgreSQL from answering with a BC timestamp
    that no Python datetime can hold.
    """
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise BadRequest(f"'{name}' is outside the years 1 to 9999 in UTC") from None


def bounds(start: datetime | None, end: datetime | None) -> tuple[datetime | None, datetime | None]:
    """Either bound in UTC, or None; a range that runs backwards is a 400."""
    start = as_utc(start, "from") if start is not None else None
    end = as_utc(end, "to") if end is not None else None
    if start is not None and end is not None:
        check_order(start, end)
    return start, end


def check_order(start: datetime, end: datetime) -> None:
    if start > end:
        raise BadRequest("'from' is after 'to'")


class TimeRange:
    """``[start, end)``; by default the last seven days (or back to year 1, if nearer)."""

    def __init__(self, start: datetime | None, end: datetime | None) -> None:
        start, end = bounds(start, end)
        self.end = end if end is not None else datetime.now(UTC)
        if start is None:
            start = max(self.end, EARLIEST + DEFAULT_SPAN) - DEFAULT_SPAN
        check_order(start, self.end)
        self.start = start


async def time_range(
    start: Annotated[
        datetime | None, Query(alias="from", description="Start, inclusive (ISO 8601).")
    ] = None,
    end: Annotated[
        datetime | None, Query(alias="to", description="End, exclusive (default: now).")
    ] = None,
) -> TimeRange:
    # async: FastAPI runs a plain function in its thread pool, a thread hop per request.
    return TimeRange(start, end)


RangeDep = Annotated[TimeRange, Depends(time_range)]
