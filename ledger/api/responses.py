"""JSON answers built from the one event encoding (``Event.to_json``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi.responses import JSONResponse

from ledger.domain import Event


def events_response(
    events: Sequence[Event], *, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        [event.to_json() for event in events], status_code=status_code, headers=headers
    )


def page_response(events: Sequence[Event], next_after: int | None) -> JSONResponse:
    body: dict[str, Any] = {"events": [e.to_json() for e in events], "next_after": next_after}
    return JSONResponse(body)


def etag(version: int) -> str:
    return f'"{version}"'
