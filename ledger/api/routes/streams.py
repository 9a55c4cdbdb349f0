"""Live streams: a session over SSE and WebSocket, and all sessions over SSE."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar
from uuid import UUID

from fastapi import APIRouter, Header, Query, Response, WebSocket
from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.websockets import WebSocketDisconnect

from ledger import metrics
from ledger.api.deps import (
    RuntimeDep,
    StreamableSession,
    StreamPrincipal,
    authenticate_stream,
    check_read,
    get_runtime,
    streamable_session,
)
from ledger.api.filters import PatientFilter, SessionFilter
from ledger.api.lean import (
    CANONICAL_UUID,
    Decline,
    Find,
    Lean,
    LeanSocket,
    canonical_uuid,
    path_uuid,
)
from ledger.api.schemas import error_responses
from ledger.api.scopes import ReaderScope, reader_scope
from ledger.api.sse import FeedResponse
from ledger.auth import Principal, Role
from ledger.cursor import MAX_CURSOR_LENGTH, parse_cursor
from ledger.domain import CarePair
from ledger.errors import BadRequest, Forbidden, LedgerError, TooManyRequests
from ledger.live.feeds import Clock, GlobalFeed, Item, Kind, SessionFeed, parse_last_event_id
from ledger.live.releases import Releases
from ledger.live.scoped import ScopedFeed
from ledger.live.subscription import Mailbox
from ledger.logs import Throttled
from ledger.runtime import Runtime
from ledger.storage.database import DATABASE_ERRORS
from ledger.storage.sessions import SessionRecord
from ledger.wire import Encoded, ws_message

log = logging.getLogger(__name__)
# Every stream of a failover ends at once: one line for them all.
ended_log = Throttled(log)
FeedT = TypeVar("FeedT")
router = APIRouter(tags=["streams"])

MAX_CURSOR = 40
LastEventIdQuery = Annotated[
    str | None,
    Query(
        max_length=MAX_CURSOR,
        description="For clients that cannot set the Last-Event-ID header; the header wins.",
    ),
]
LastEventIdHeader = Annotated[str | None, Header(alias="Last-Event-ID", max_length=MAX_CURSOR)]
# The all-sessions stream's cursors: a position, or a scoped stream's longer cursor.
CursorQuery = Annotated[
    str | None,
    Query(
        max_length=MAX_CURSOR_LENGTH,
        description="For clients that cannot set the Last-Event-ID header; the header wins.",
    ),
]
CursorHeader = Annotated[str | None, Header(alias="Last-Event-ID", max_length=MAX_CURSOR_LENGTH)]
AccessTokenQuery = Annotated[
    str | None,
    Query(description="The token, for native EventSource which cannot send headers."),
]

STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "An SSE stream."},
    204: {"description": "The client has already seen the terminal event: stop reconnecting."},
    **error_responses(400, 401, 403, 404, 409, 429, 503),
}


async def opened(
    runtime: Runtime,
    principal: Principal,
    open_feed: Callable[[Releases], Awaitable[FeedT]],
) -> tuple[FeedT, Releases]:
    """Open a feed whose subscription (and the subject's stream slot) lives in a fresh
    stack, released if opening fails.

    On success the stack belongs to the response, which closes it when the stream ends.
    """
    stack = Releases()
    try:
        runtime.quotas.take_stream(principal.subject)
        stack.callback(functools.partial(runtime.quotas.release_stream, principal.subject))
        return await open_feed(stack), stack
    except BaseException:
        stack.close()
        raise


async def open_session_feed(
    runtime: Runtime, principal: Principal, session: SessionRecord, start: int | None
) -> tuple[SessionFeed | None, Releases]:
    """The session feed both transports use, with the stream's clock and access rule."""
    clock = Clock(runtime.settings.heartbeat_seconds, principal.expires_at)
    return await opened(
        runtime,
        principal,
        lambda stack: SessionFeed.open(
            runtime.history,
            runtime.hub,
            session.id,
            start,
            clock,
            stack,
            access=assignment(principal, session.patient_id),
        ),
    )


async def _deny(
    websocket: WebSocket, status_code: int, detail: str, headers: dict[str, str] | None = None
) -> None:
    """Refuse before the upgrade with a real HTTP answer."""
    await websocket.send_denial_response(
        JSONResponse({"detail": detail}, status_code=status_code, headers=headers)
    )


@router.get(
    "/api/sessions/{session_id}/status/stream",
    response_class=Response,
    responses=STREAM_RESPONSES,
)
async def session_stream(
    session: StreamableSession,
    principal: StreamPrincipal,
    runtime: RuntimeDep,
    last_event_id: LastEventIdQuery = None,
    last_event_id_header: LastEventIdHeader = None,
    access_token: AccessTokenQuery = None,
) -> Response:
    """One session's stream. Declared here, served lean (below)."""
    start = parse_last_event_id(last_event_id_header, last_event_id)
    feed, stack = await open_session_feed(runtime, principal, session, start)
    if feed is None:
        stack.close()
        return Response(status_code=204)
    return FeedResponse(
        feed.items(),
        feed.sub,
        framing=Encoded.session_sse,
        retry_ms=runtime.settings.retry_ms,
        on_close=stack.close,
    )


@router.get("/api/events/stream", response_class=Response, responses=STREAM_RESPONSES)
async def events_stream(
    principal: StreamPrincipal,
    runtime: RuntimeDep,
    session_id: SessionFilter = None,
    patient_id: PatientFilter = None,
    last_event_id: CursorQuery = None,
    last_event_id_header: CursorHeader = None,
    access_token: AccessTokenQuery = None,
) -> Response:
    """Every session the caller may read (or those the filters name), on one stream.

    Admins and auditors without filters get the global stream (``id`` the global position,
    in commit-safe global order); everyone else a scoped stream (``id`` an opaque cursor,
    each session in order, live as soon as committed). Declared here, served lean (below).
    """
    scoped = await reader_scope(runtime, principal, session_id, patient_id)
    raw = last_event_id_header if last_event_id_header is not None else last_event_id
    feed, stack = await open_events_feed(runtime, principal, scoped, raw)
    return FeedResponse(
        feed.items(),
        feed.sub,
        framing=Encoded.global_sse,  # a scoped item carries its own ids
        retry_ms=runtime.settings.retry_ms,
        on_close=stack.close,
        initial_id=feed.last if isinstance(feed, GlobalFeed) else feed.cursor.text(),
    )


async def open_events_feed(
    runtime: Runtime, principal: Principal, scoped: ReaderScope | None, raw: str | None
) -> tuple[GlobalFeed | ScopedFeed, Releases]:
    """The all-sessions feed both transports use: global or scoped, from the cursor."""
    clock = Clock(runtime.settings.heartbeat_seconds, principal.expires_at)
    if scoped is None:
        start = parse_last_event_id(raw, None)
        return await opened(
            runtime,
            principal,
            lambda stack: GlobalFeed.open(runtime.global_order, runtime.hub, start, clock, stack),
        )
    ids = None if raw is None else parse_cursor(raw)
    return await opened(
        runtime,
        principal,
        lambda stack: ScopedFeed.open(
            runtime.scoped,
            runtime.hub,
            scoped.scope,
            ids,
            clock,
            stack,
            relied=scoped.relied,
        ),
    )


@router.websocket("/api/sessions/{session_id}/status/ws")
async def session_ws(websocket: WebSocket, session_id: UUID) -> None:
    """The SSE semantics over WebSocket: ``{"id", "event", "data"}`` text messages.

    Refusals happen before the upgrade, as real HTTP answers (401/403/404/400), so a client
    can tell them apart; after the terminal event the socket closes with code 1000.
    """

    async def open_feed(runtime: Runtime, principal: Principal) -> Opened:
        session = await check_read(runtime, principal, session_id)
        start = parse_last_event_id(None, websocket.query_params.get("last_event_id"))
        return await open_session_feed(runtime, principal, session, start)

    await serve_ws(websocket, open_feed)


@router.websocket("/api/events/ws")
async def events_ws(websocket: WebSocket) -> None:
    """The all-sessions stream over WebSocket, global or scoped as over SSE; filters and
    ``last_event_id`` in the query. A terminal event does not close it."""

    async def open_feed(runtime: Runtime, principal: Principal) -> Opened:
        query = websocket.query_params
        scoped = await reader_scope(
            runtime,
            principal,
            [ws_uuid(raw) for raw in query.getlist("session_id")],
            query.getlist("patient_id"),
        )
        return await open_events_feed(runtime, principal, scoped, query.get("last_event_id"))

    await serve_ws(websocket, open_feed)


Opened = tuple[SessionFeed | GlobalFeed | ScopedFeed | None, Releases]


def ws_uuid(raw: str) -> UUID:
    try:
        return UUID(raw)
    except ValueError:
        raise BadRequest("session_id must be a UUID") from None


def ws_messages(item: Item) -> list[str]:
    if item.kind is Kind.HEARTBEAT:
        return ['{"event":"heartbeat"}']
    if item.kind is Kind.RESET:
        assert item.reset_json is not None
        return [ws_message("reset", item.reset_id, item.reset_json)]
    if item.cursors:
        return [e.scoped_ws(c) for e, c in zip(item.events, item.cursors, strict=True)]
    return [encoded.ws() for encoded in item.events]


async def serve_ws(
    websocket: WebSocket, open_feed: Callable[[Runtime, Principal], Awaitable[Opened]]
) -> None:
    """Authenticate, open the feed (refusing with a real HTTP answer), then send it."""
    runtime: Runtime = await get_runtime(websocket)
    try:
        check_origin(websocket, runtime.settings.cors_origins)
        principal = await authenticate_stream(websocket, runtime)
        feed, stack = await open_feed(runtime, principal)
    except TooManyRequests as exc:
        await _deny(websocket, 429, exc.detail, {"Retry-After": str(exc.retry_after)})
        return
    except LedgerError as exc:
        await _deny(websocket, exc.status_code, exc.detail)
        return
    except DATABASE_ERRORS:
        await _deny(websocket, 503, "database unavailable, retry shortly")
        return
    with stack:
        await websocket.accept()
        if feed is None:
            await websocket.close(1000, "complete")
            return
        global_ids = isinstance(feed, GlobalFeed)
        ends = isinstance(feed, SessionFeed)
        metrics.SUBSCRIBERS.labels("ws").inc()
        watcher = asyncio.create_task(_watch_ws(websocket, feed.sub))
        close_code, reason = 1012, "server shutting down: resume elsewhere"
        try:
            async for item in feed.items():
                if global_ids and item.kind is Kind.EVENT:
                    await send_texts(websocket, [encoded.global_ws() for encoded in item.events])
                else:
                    await send_texts(websocket, ws_messages(item))
                if item.kind is Kind.EVENT:
                    if ends and item.events[-1].event.is_terminal:
                        close_code, reason = 1000, "complete"
                    item.count_delivered("ws")
                del item  # not held while the stream waits for the next
            if close_code != 1000 and feed.sub.revoked:
                close_code, reason = 1008, "access revoked"
            elif close_code != 1000 and feed.clock.expired():
                close_code, reason = 1008, "token expired: reconnect with a fresh one"
            await websocket.close(close_code, reason)
        except (WebSocketDisconnect, OSError, RuntimeError):
            pass  # Gone mid-write; the subscription is released with the stack.
        except DATABASE_ERRORS as exc:
            ended_log.warning("websocket stream ended by a database error: %s", exc)
            with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
                await websocket.close(1011, "database unavailable: resume shortly")
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            metrics.SUBSCRIBERS.labels("ws").dec()


async def send_texts(websocket: WebSocket, messages: list[str]) -> None:
    """In a frame of its own, so that nothing sent stays referenced by the stream's."""
    for message in messages:
        await websocket.send_text(message)


def assignment(principal: Principal, patient_id: str) -> CarePair | None:
    """The care assignment a therapist's stream depends on (it ends when removed)."""
    if principal.role is Role.THERAPIST:
        return CarePair(therapist_id=principal.subject, patient_id=patient_id)
    return None


def check_origin(websocket: WebSocket, allowed: list[str]) -> None:
    """Browsers send cookies with cross-site WebSocket handshakes: only trusted origins."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return  # not a browser
    host = websocket.headers.get("host", "")
    same_origin = {f"http://{host}", f"https://{host}"}
    if origin not in allowed and origin not in same_origin:
        raise Forbidden("this origin may not open WebSocket streams")


async def _watch_ws(websocket: WebSocket, sub: Mailbox[Any]) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
    sub.close()


# -- serving the SSE routes lean (see ledger.api.lean) ---------------------------------------


def _cursor_finders(limit: int) -> dict[str, Find]:
    """The Last-Event-ID parameters within their declared length (else FastAPI answers)."""

    def within(cursor: str | None) -> str | None:
        if cursor is not None and len(cursor) > limit:
            raise Decline
        return cursor

    return {
        "last_event_id": lambda request, found: within(request.query_params.get("last_event_id")),
        "last_event_id_header": lambda request, found: within(request.headers.get("last-event-id")),
    }


def _session_filter(request: Request, found: dict[str, Any]) -> list[UUID] | None:
    """The declared ``session_id`` filters, each in the canonical form (else FastAPI)."""
    raw = request.query_params.getlist("session_id")
    if not all(CANONICAL_UUID.fullmatch(value) for value in raw):
        raise Decline
    return [UUID(value) for value in raw] or None


async def _stream_principal(request: Request, found: dict[str, Any]) -> Principal:
    return await authenticate_stream(request, found["runtime"])


# What both SSE routes take after their cursors (which decline first): the token, the caller.
STREAM_FINDERS: dict[str, Find] = {
    "access_token": lambda request, found: request.query_params.get("access_token"),
    "runtime": lambda request, found: get_runtime(request),
    "principal": _stream_principal,
}

LEAN = [
    Lean(
        session_stream,
        {
            **_cursor_finders(MAX_CURSOR),
            **STREAM_FINDERS,
            # FastAPI too resolves the principal before it validates the path.
            "session": lambda request, found: streamable_session(
                path_uuid(request, "session_id"), found["runtime"], found["principal"]
            ),
        },
    ),
    Lean(
        events_stream,
        {
            **_cursor_finders(MAX_CURSOR_LENGTH),
            "session_id": _session_filter,
            "patient_id": lambda request, found: request.query_params.getlist("patient_id") or None,
            **STREAM_FINDERS,
        },
    ),
]

# Served in front of the router (``ledger.api.lean.LeanSockets``); a session id in another
# spelling goes to the declared route.
LEAN_SOCKETS = [
    LeanSocket(session_ws, {"session_id": canonical_uuid}),
    LeanSocket(events_ws, {}),
]
