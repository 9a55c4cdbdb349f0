"""JSON answers built from the one event encoding (``Event.to_json``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Annotated, Any, Literal

from fastapi import Query
from fastapi.responses import JSONResponse, StreamingResponse

from ledger.api.schemas import error_responses
from ledger.domain import Event
from ledger.exports import MEDIA_TYPES, ExportFormat, encode
from ledger.wire import dumps

FormatQuery = Annotated[
    Literal["json", "ndjson", "csv"],
    Query(
        alias="format",
        description="json: a page; ndjson or csv: the whole selection with hash links, streamed.",
    ),
]
EXPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/x-ndjson": {}, "text/csv": {}},
        "description": "A JSON page, or an NDJSON / CSV export.",
    },
    **error_responses(400, 401, 403, 404, 409),
}


class EventsJSON(JSONResponse):
    """JSON encoded like the streams' ``data:`` (``ledger.wire.dumps``), so an event reads
    the same in an answer and on a stream, at the encoder's speed (a batch of 100)."""

    def render(self, content: Any) -> bytes:
        return dumps(content).encode()


def events_response(
    events: Sequence[Event], *, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return EventsJSON(
        [event.to_json() for event in events], status_code=status_code, headers=headers
    )


def page_response(
    events: Sequence[Event], next_after: int | str | None, *, cursor: str | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"events": [e.to_json() for e in events], "next_after": next_after}
    if cursor is not None:
        body["cursor"] = cursor
    return EventsJSON(body)


def etag(version: int) -> str:
    return f'"{version}"'


def export_response(
    batches: AsyncIterator[list[Event]], fmt: ExportFormat, name: str
) -> StreamingResponse:
    extension = "ndjson" if fmt == "ndjson" else "csv"
    return StreamingResponse(
        encode(batches, fmt),
        media_type=MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{name}.{extension}"'},
    )
