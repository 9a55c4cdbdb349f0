"""All sessions' events in global, commit-safe order (admins and auditors)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response

from ledger.api.deps import CurrentPrincipal, RuntimeDep
from ledger.api.responses import EXPORT_RESPONSES, FormatQuery, export_response, page_response
from ledger.api.schemas import MAX_POSITION, PageOut
from ledger.api.time_range import bounds
from ledger.auth import require_read_all

router = APIRouter(prefix="/api/events", tags=["events"])


@router.get("", response_model=PageOut, responses=EXPORT_RESPONSES)
async def global_history(
    runtime: RuntimeDep,
    principal: CurrentPrincipal,
    after: Annotated[
        int, Query(ge=0, le=MAX_POSITION, description="The position of the last event seen.")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size (JSON only).")] = 100,
    start: Annotated[
        datetime | None, Query(alias="from", description="Recorded at or after (ISO 8601).")
    ] = None,
    end: Annotated[datetime | None, Query(alias="to", description="Recorded before.")] = None,
    fmt: FormatQuery = "json",
) -> Response:
    """A page in commit-safe global order, or with ``format=ndjson|csv`` the whole selection."""
    require_read_all(principal)
    start, end = bounds(start, end)
    await runtime.global_order.check_cursor(after)
    if fmt != "json":
        batches = runtime.reporting.export_range(after, start, end)
        return export_response(batches, fmt, "events")
    rows = (await runtime.global_order.page(after, limit + 1, start=start, end=end)).events
    more = len(rows) > limit
    page = rows[:limit]
    return page_response(page, page[-1].position if more else None)
