"""All sessions' events in global, commit-safe order (admins and auditors)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from ledger.api.deps import CurrentPrincipal, RuntimeDep
from ledger.api.responses import page_response
from ledger.api.schemas import MAX_POSITION, PageOut, error_responses
from ledger.auth import require_read_all

router = APIRouter(prefix="/api/events", tags=["events"])


@router.get(
    "",
    response_model=PageOut,
    responses=error_responses(401, 403, 404, 409),
)
async def global_history(
    runtime: RuntimeDep,
    principal: CurrentPrincipal,
    after: Annotated[
        int, Query(ge=0, le=MAX_POSITION, description="The position of the last event seen.")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSONResponse:
    require_read_all(principal)
    await runtime.store.check_global_cursor(after)
    rows = (await runtime.store.global_page(after, limit + 1)).events
    more = len(rows) > limit
    page = rows[:limit]
    return page_response(page, page[-1].position if more else None)
