"""Sessions: register, append, read the current state and the history."""

from __future__ import annotations

import re
import uuid
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Body, Header, Query, Response
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request

from ledger import metrics
from ledger.api.deps import (
    CurrentPrincipal,
    ReadableSession,
    RuntimeDep,
    authenticate,
    get_runtime,
)
from ledger.api.lean import Decline, Lean, bearer_token, header, json_body, path_uuid
from ledger.api.responses import (
    EXPORT_RESPONSES,
    FormatQuery,
    etag,
    events_response,
    export_response,
    page_response,
)
from ledger.api.schemas import (
    MAX_VERSION,
    AppendBody,
    BatchIn,
    EventIn,
    EventOut,
    PageOut,
    SessionIn,
    SessionListOut,
    SessionOut,
    SingleEventIn,
    StatusOut,
    error_responses,
)
from ledger.auth import reader_scope, require_append
from ledger.domain import uuid_prefix_range
from ledger.errors import BadRequest, Conflict, Unprocessable
from ledger.wire import status_body

router = APIRouter(prefix="/api/sessions", tags=["sessions"])

ERRORS = error_responses(400, 401, 403, 404)

KEY_PATTERN, KEY_MAX_LENGTH = r"^[\x21-\x7e]+$", 200
IF_MATCH_PATTERN = r'^(W/)?"?[0-9]{1,9}"?$'
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=KEY_MAX_LENGTH,
        pattern=KEY_PATTERN,
        description="A retry with the same key returns the events stored the first time.",
    ),
]
IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        pattern=IF_MATCH_PATTERN,
        description='Expected current version, e.g. "3".',
    ),
]


@router.get("", response_model=SessionListOut, responses=error_responses(401, 403))
async def list_sessions(
    runtime: RuntimeDep,
    principal: CurrentPrincipal,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    id_prefix: Annotated[
        str | None,
        Query(
            pattern=r"^[0-9a-fA-F-]{1,36}$",
            description="Only sessions whose id starts with these hex digits (as shown short).",
        ),
    ] = None,
) -> JSONResponse:
    """The newest sessions the caller may read, each with its current state."""
    id_range = None if id_prefix is None else uuid_prefix_range(id_prefix)
    if id_prefix is not None and id_range is None:
        # Dashes only, or more than 32 digits: no session id starts like that.
        return JSONResponse({"sessions": []})
    found = await runtime.sessions.recent(limit, **reader_scope(principal), id_range=id_range)
    return JSONResponse(
        {
            "sessions": [
                {**record.to_json(), "state": status_body(record.id, head)}
                for record, head in found
            ]
        }
    )


@router.post(
    "",
    status_code=201,
    response_model=SessionOut,
    responses=error_responses(400, 401, 403, 404, 409),
)
async def create_session(
    body: SessionIn, runtime: RuntimeDep, principal: CurrentPrincipal
) -> JSONResponse:
    require_append(principal)
    record = await runtime.sessions.create(body.id or uuid.uuid4(), body.patient_id)
    return JSONResponse(
        record.to_json(), status_code=201, headers={"Location": f"/api/sessions/{record.id}"}
    )


def _expected_version(if_match: str | None, in_body: int | None) -> int | None:
    from_header: int | None = None
    if if_match is not None:
        raw = if_match.strip().removeprefix("W/").strip('"')
        if not raw.isascii() or not raw.isdigit() or int(raw) > MAX_VERSION:
            raise BadRequest('If-Match must be a version such as "3"')
        from_header = int(raw)
    if from_header is not None and in_body is not None and from_header != in_body:
        # The session cannot be at both versions, so this is a version mismatch like any other.
        raise Conflict("If-Match and expected_version disagree: one cannot match")
    return from_header if from_header is not None else in_body


@router.post(
    "/{session_id}/events",
    status_code=201,
    response_model=list[EventOut],
    responses=error_responses(400, 401, 403, 404, 408, 409, 413, 429, 503),
)
async def append_events(
    session_id: UUID,
    body: Annotated[AppendBody, Body()],
    runtime: RuntimeDep,
    principal: CurrentPrincipal,
    idempotency_key: IdempotencyKey = None,
    if_match: IfMatch = None,
) -> JSONResponse:
    """Append one event, a list, or ``{"events": [...], "expected_version": N}`` atomically."""
    require_append(principal)
    runtime.quotas.append(principal.subject)
    batch: list[EventIn]
    in_body: int | None = None
    if isinstance(body, SingleEventIn):
        batch, in_body = [body], body.expected_version
    elif isinstance(body, BatchIn):
        batch, in_body = body.events, body.expected_version
    else:
        batch = body
    if len(batch) > runtime.settings.max_batch_events:
        raise Unprocessable(f"at most {runtime.settings.max_batch_events} events per request")
    result = await runtime.appender.append(
        session_id,
        [event.to_new() for event in batch],
        actor=principal.subject,
        idempotency_key=idempotency_key,
        expected_version=_expected_version(if_match, in_body),
    )
    headers = {"ETag": etag(result.events[-1].version)}
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    else:
        metrics.EVENTS_APPENDED.inc(len(result.events))
    return events_response(result.events, status_code=201, headers=headers)


@router.get("/{session_id}/status", response_model=StatusOut, responses=ERRORS)
async def session_status(session: ReadableSession, runtime: RuntimeDep) -> JSONResponse:
    head = await runtime.history.latest(session.id)
    version = head.version if head is not None else 0
    return JSONResponse(status_body(session.id, head), headers={"ETag": etag(version)})


@router.get("/{session_id}/events", response_model=PageOut, responses=EXPORT_RESPONSES)
async def session_history(
    session: ReadableSession,
    runtime: RuntimeDep,
    after: Annotated[int, Query(ge=0, le=MAX_VERSION, description="Version to start after.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size (JSON only).")] = 100,
    fmt: FormatQuery = "json",
) -> Response:
    """A page of history, or with ``format=ndjson|csv`` all of it after ``after``, streamed."""
    if fmt != "json":
        return export_response(
            runtime.reporting.export_session(session.id, after), fmt, f"session-{session.id}"
        )
    rows = await runtime.history.page(session.id, after, limit + 1)
    more = len(rows) > limit
    page = rows[:limit]
    return page_response(page, page[-1].version if more else None)


# -- serving the append lean (see ledger.api.lean) -----------------------------------------

APPEND_BODY: TypeAdapter[AppendBody] = TypeAdapter(AppendBody)
KEY = re.compile(KEY_PATTERN)
IF_MATCH = re.compile(IF_MATCH_PATTERN)


async def _append_body(request: Request, found: dict[str, object]) -> AppendBody:
    try:
        return APPEND_BODY.validate_python(await json_body(request))
    except ValidationError:
        raise Decline from None


LEAN = [
    Lean(
        append_events,
        {
            "session_id": lambda request, found: path_uuid(request, "session_id"),
            "idempotency_key": lambda request, found: header(
                request, "idempotency-key", KEY, KEY_MAX_LENGTH
            ),
            "if_match": lambda request, found: header(request, "if-match", IF_MATCH),
            "body": _append_body,
            "runtime": lambda request, found: get_runtime(request),
            "principal": lambda request, found: authenticate(
                found["runtime"], bearer_token(request)
            ),
        },
    )
]
