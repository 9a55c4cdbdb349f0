"""Live streams: a session over SSE and WebSocket, and all sessions over SSE."""

from __future__ import annotations

import asyncio
import contextlib
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
from ledger.api.lean import Decline, Find, Lean, path_uuid
from ledger.api.schemas import error_responses
from ledger.api.sse import FeedResponse
from ledger.auth import Principal, Role, require_read_all
from ledger.domain import CarePair
from ledger.errors import Forbidden, LedgerError, TooManyRequests
from ledger.live.feeds import Clock, GlobalFeed, Kind, SessionFeed, parse_last_event_id
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
    open_feed: Callable[[contextlib.ExitStack], Awaitable[FeedT]],
) -> tuple[FeedT, contextlib.ExitStack]:
    """Open a feed whose subscription (and the subject's stream slot) lives in a fresh
    stack, released if opening fails.

    On success the stack belongs to the response, which closes it when the stream ends.
    """
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(runtime.quotas.stream(principal.subject))
        return await open_feed(stack), stack
    except BaseException:
        stack.close()
        raise


async def open_session_feed(
    runtime: Runtime, principal: Principal, session: SessionRecord, start: int | None
) -> tuple[SessionFeed | None, contextlib.ExitStack]:
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
async def global_stream(
    principal: StreamPrincipal,
    runtime: RuntimeDep,
    last_event_id: LastEventIdQuery = None,
    last_event_id_header: LastEventIdHeader = None,
    access_token: AccessTokenQuery = None,
) -> Response:
    """Every session's events; ``id`` is the global position, the resume cursor.

    Declared here, served lean (below)."""
    require_read_all(principal)
    start = parse_last_event_id(last_event_id_header, last_event_id)
    clock = Clock(runtime.settings.heartbeat_seconds, principal.expires_at)
    global_feed, stack = await opened(
        runtime,
        principal,
        lambda stack: GlobalFeed.open(runtime.global_order, runtime.hub, start, clock, stack),
    )
    return FeedResponse(
        global_feed.items(),
        global_feed.sub,
        framing=Encoded.global_sse,
        retry_ms=runtime.settings.retry_ms,
        on_close=stack.close,
        initial_id=global_feed.last,
    )


@router.websocket("/api/sessions/{session_id}/status/ws")
async def session_ws(websocket: WebSocket, session_id: UUID) -> None:
    """The SSE semantics over WebSocket: ``{"id", "event", "data"}`` text messages.

    Refusals happen before the upgrade, as real HTTP answers (401/403/404/400), so a client
    can tell them apart; after the terminal event the socket closes with code 1000.
    """
    runtime: Runtime = await get_runtime(websocket)
    try:
        check_origin(websocket, runtime.settings.cors_origins)
        principal = await authenticate_stream(websocket, runtime)
        session = await check_read(runtime, principal, session_id)
        start = parse_last_event_id(None, websocket.query_params.get("last_event_id"))
        feed, stack = await open_session_feed(runtime, principal, session, start)
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
        metrics.SUBSCRIBERS.labels("ws").inc()
        watcher = asyncio.create_task(_watch_ws(websocket, feed))
        close_code, reason = 1012, "server shutting down: resume elsewhere"
        try:
            async for item in feed.items():
                if item.kind is Kind.HEARTBEAT:
                    await websocket.send_text('{"event":"heartbeat"}')
                elif item.kind is Kind.RESET:
                    assert item.reset_json is not None
                    await websocket.send_text(ws_message("reset", item.reset_id, item.reset_json))
                else:
                    for encoded in item.events:
                        await websocket.send_text(encoded.ws())
                        if encoded.event.is_terminal:
                            close_code, reason = 1000, "complete"
                    item.count_delivered("ws")
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


async def _watch_ws(websocket: WebSocket, feed: SessionFeed) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
    feed.sub.close()


# -- serving the SSE routes lean (see ledger.api.lean) ---------------------------------------


def _cursor_query(request: Request, found: dict[str, Any]) -> str | None:
    return _within(request.query_params.get("last_event_id"))


def _cursor_header(request: Request, found: dict[str, Any]) -> str | None:
    return _within(request.headers.get("last-event-id"))


def _within(cursor: str | None) -> str | None:
    """A declared Last-Event-ID parameter within its length (else FastAPI answers)."""
    if cursor is not None and len(cursor) > MAX_CURSOR:
        raise Decline
    return cursor


async def _stream_principal(request: Request, found: dict[str, Any]) -> Principal:
    return await authenticate_stream(request, found["runtime"])


# What both SSE routes take: the cursors (which decline first), the token, the caller.
STREAM_FINDERS: dict[str, Find] = {
    "last_event_id": _cursor_query,
    "last_event_id_header": _cursor_header,
    "access_token": lambda request, found: request.query_params.get("access_token"),
    "runtime": lambda request, found: get_runtime(request),
    "principal": _stream_principal,
}

LEAN = [
    Lean(
        session_stream,
        {
            **STREAM_FINDERS,
            # FastAPI too resolves the principal before it validates the path.
            "session": lambda request, found: streamable_session(
                path_uuid(request, "session_id"), found["runtime"], found["principal"]
            ),
        },
    ),
    Lean(global_stream, STREAM_FINDERS),
]
