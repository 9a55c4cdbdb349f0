"""Per-request observability as plain ASGI middleware: request id, access log, latency.

Plain ASGI (not ``BaseHTTPMiddleware``) so a long-lived stream pays one small wrapper and
nothing else.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledger import metrics
from ledger.logs import request_id

access = logging.getLogger("ledger.access")

INCOMING_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


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
