"""The app's ASGI middleware: the request body limit and per-request observability.

Plain ASGI (not ``BaseHTTPMiddleware``), so a long-lived stream pays one small wrapper each
and nothing else. A middleware with nothing to do for a request hands it on: its
``__call__`` is a plain function returning the next app's awaitable, so no frame of its
own stays suspended for a stream's whole life (each such frame is a few hundred bytes per
idle stream; docs/ARCHITECTURE.md, "Memory per idle stream").
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledger import metrics
from ledger.logs import request_id

access = logging.getLogger("ledger.access")

INCOMING_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def replaying(body: bytes, receive: Receive) -> Receive:
    """A body already read, once more, then the connection's own messages (a disconnect)."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class BodyLimit:
    """Reads a request body fully (it is small by contract) and answers 413 past the limit.

    Buffering here, before the app runs, is what lets an oversized body be refused without
    the app having seen or stored any part of it.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return self.app(scope, receive, send)  # nothing to do here: handed on
        return self._buffered(scope, receive, send)

    async def _buffered(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, 413, f"request body larger than {self.max_bytes} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout):  # a body that never ends is let go
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        await self._refuse(
                            send, 413, f"request body larger than {self.max_bytes} bytes"
                        )
                        return
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await self._refuse(send, 408, f"request body not complete within {self.timeout:g} s")
            return
        await self.app(scope, replaying(b"".join(chunks), receive), send)

    @staticmethod
    async def _refuse(send: Send, status: int, detail: str) -> None:
        payload = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _DuplicateKey(key)
        found[key] = value
    return found


# One decoder, built once (json.loads with a hook builds one per call).
_STRICT = json.JSONDecoder(object_pairs_hook=_refuse_duplicates)
# Where the parsed body is left for the route (the lean append reads it from there).
PARSED_JSON = "ledger.parsed_json"


def parse_strict(body: bytes) -> tuple[Any, str | None]:
    """``(value, None)`` for a JSON body, ``(None, key)`` when an object names ``key``
    twice, ``(None, None)`` when it is not JSON (the route answers that as it always has)."""
    try:
        return _STRICT.decode(body.decode()), None
    except _DuplicateKey as twice:
        return None, str(twice)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep
        return None, None


def duplicate_key(body: bytes) -> str | None:
    """The first key that a JSON object of ``body`` names twice, if any."""
    return parse_strict(body)[1]


class StrictJson:
    """Refuses a JSON body in which an object names a key twice, with FastAPI's 422 shape.

    ``json.loads`` keeps the last value, so ``{"status": "queued", "status": "processed"}``
    would end a session that the writer may have meant to queue: an ambiguous body is
    refused, never guessed at. Runs inside :class:`BodyLimit`, on the body it buffered.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return self.app(scope, receive, send)  # nothing to do here: handed on
        return self._checked(scope, receive, send)

    async def _checked(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The first Content-Type, as Starlette (and so the routes) reads it.
        content_type = next(
            (value for name, value in scope["headers"] if name == b"content-type"), b""
        )
        if not content_type.split(b";")[0].strip().lower().endswith(b"json"):
            await self.app(scope, receive, send)
            return
        message = await receive()
        body = message.get("body", b"")  # whole: BodyLimit buffered it
        value, twice = parse_strict(body) if body else (None, None)
        if twice is None:
            if value is not None:
                scope[PARSED_JSON] = value  # parsed once, for a lean route
            await self.app(scope, replaying(body, receive), send)
            return
        detail = [
            {
                "loc": ["body"],
                "msg": f"JSON object names the key {twice!r} twice: refused as ambiguous",
                "type": "json_invalid",
            }
        ]
        payload = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 422,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if INCOMING_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class Observe:
    """Request id (taken or made), the access log line, and time to the first byte."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = _request_id(scope)
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 0
        first_byte: float | None = None

        async def observed(message: Message) -> None:
            nonlocal status, first_byte
            kind = message["type"]
            if kind in ("http.response.start", "websocket.http.response.start"):
                status = message["status"]
                first_byte = time.perf_counter() - started
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            elif kind == "websocket.accept":
                status = 101
                first_byte = time.perf_counter() - started
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            elapsed = time.perf_counter() - started
            route = _route(scope)
            method = scope.get("method", "WS")
            metrics.REQUEST_SECONDS.labels(method, route, str(status)).observe(
                first_byte if first_byte is not None else elapsed
            )
            access.info(
                "%s %s %s %.1fms",
                method,
                scope.get("path", ""),
                status,
                elapsed * 1000,
                extra={
                    "http": {
                        "method": method,
                        "path": scope.get("path", ""),
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                        "ttfb_ms": None if first_byte is None else round(first_byte * 1000, 2),
                        "client": (scope.get("client") or ("", 0))[0],
                    }
                },
            )
            request_id.reset(token)
