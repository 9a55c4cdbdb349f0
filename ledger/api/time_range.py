"""Time ranges in query strings: ``from`` and ``to``, ISO 8601, naive meaning UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Depends, Query

from ledger.errors import BadRequest

DEFAULT_SPAN = timedelta(days=7)


def as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def check_order(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and as_utc(start) > as_utc(end):
        raise BadRequest("'from' is after 'to'")


class TimeRange:
    """``[start, end)``; by default the last seven days."""

    def __init__(self, start: datetime | None, end: datetime | None) -> None:
        check_order(start, end)
        self.end = as_utc(end) if end is not None else datetime.now(UTC)
        self.start = as_utc(start) if start is not None else self.end - DEFAULT_SPAN
        check_order(self.start, self.end)


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
