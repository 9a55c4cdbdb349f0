"""All sessions' events: in global, commit-safe order for admins and auditors, or, for every
reader (and for admins and auditors with filters), the sessions of their scope."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response

from ledger.api.deps import CurrentPrincipal, RuntimeDep
from ledger.api.filters import PatientFilter, SessionFilter
from ledger.api.responses import EXPORT_RESPONSES, FormatQuery, export_response, page_response
from ledger.api.schemas import MAX_POSITION, PageOut
from ledger.api.scopes import reader_scope
from ledger.api.time_range import bounds
from ledger.cursor import MAX_CURSOR_LENGTH, parse_cursor
from ledger.errors import BadRequest
from ledger.live.scoped import read_page

router = APIRouter(prefix="/api/events", tags=["events"])


def global_position(after: str | None) -> int:
    if after is None:
        return 0
    raw = after.strip()
    if not raw.isascii() or not raw.isdigit() or int(raw) > MAX_POSITION:
        raise BadRequest("after must be the position of the last event seen (0 or more)")
    return int(raw)


@router.get("", response_model=PageOut, responses=EXPORT_RESPONSES)
async def events_history(
    runtime: RuntimeDep,
    principal: CurrentPrincipal,
    after: Annotated[
        str | None,
        Query(
            max_length=MAX_CURSOR_LENGTH,
            description="The position of the last event seen (all sessions in global "
            "order), or a scoped page's or stream's cursor.",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size (JSON only).")] = 100,
    start: Annotated[
        datetime | None, Query(alias="from", description="Recorded at or after (ISO 8601).")
    ] = None,
    end: Annotated[datetime | None, Query(alias="to", description="Recorded before.")] = None,
    fmt: FormatQuery = "json",
    session_id: SessionFilter = None,
    patient_id: PatientFilter = None,
) -> Response:
    """A page in commit-safe global order, or with ``format=ndjson|csv`` the whole selection
    (admins and auditors); with filters, or for any other reader, a page of the scope's
    sessions, each in order, with ``cursor`` to resume (the stream takes it too)."""
    scoped = await reader_scope(runtime, principal, session_id, patient_id)
    if scoped is None:
        position = global_position(after)
        start, end = bounds(start, end)
        await runtime.global_order.check_cursor(position)
        if fmt != "json":
            batches = runtime.reporting.export_range(position, start, end)
            return export_response(batches, fmt, "events")
        rows = (await runtime.global_order.page(position, limit + 1, start=start, end=end)).events
        more = len(rows) > limit
        page = rows[:limit]
        return page_response(page, page[-1].position if more else None)
    if fmt != "json" or start is not None or end is not None:
        raise BadRequest("exports and time ranges are of the all-sessions order (admins, auditors)")
    ids = None if after is None else parse_cursor(after)
    events, cursor, more = await read_page(runtime.scoped, scoped.scope, ids, limit)
    text = cursor.text()
    return page_response(events, text if more else None, cursor=text)
