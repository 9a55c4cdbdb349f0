"""Shedding a storm of stream opens before it costs anything.

When thousands of followers reconnect at once (a restart, a network cut, a worker killed),
every open authenticates, looks its session up and replays from the table. Past what the
pool serves, opens queue for a connection, time out after seconds and are answered 503;
clients retry a second later, and the load never drains (``make soak`` saw 130,000 503s in
four minutes). Here a process lets at most ``limit`` streams be *opening* at once (from the
request until its response starts); up to ``WAITING_PER_SLOT`` times as many more wait
their turn here, parked, costing no query; the rest are answered at once, before any token
check or query, with a 503 whose ``Retry-After`` is spread over seconds, so the retries
arrive spread out instead of in step.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledger import metrics

# The paths whose opening is gated: every live stream, over SSE or WebSocket.
STREAM_SUFFIXES = ("/stream", "/ws")
# A refused open is told to come back after 1 to this many seconds, drawn at random.
RETRY_SPREAD_SECONDS = 10
# Opens that may wait for a slot, per slot: a short queue absorbs a modest storm (a few
# hundred reconnects) without sending anyone away for seconds.
WAITING_PER_SLOT = 8
# A parked open that has not had its turn by then is refused like the rest: a slot held by
# an open stuck at the database must not leave hundreds of clients without any answer.
PARKED_SECONDS = 10.0
STARTED = frozenset(
    {"http.response.start", "websocket.accept", "websocket.close", "websocket.http.response.start"}
)


def is_stream(scope: Scope) -> bool:
    path: str = scope.get("path", "")
    return path.startswith("/api/") and path.endswith(STREAM_SUFFIXES)


class OpeningGate:
    """At most ``limit`` stream opens in progress per process, and ``WAITING_PER_SLOT`` times
    as many waiting (0: no limit)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int,
        retry_after: Callable[[], int] = lambda: random.randint(1, RETRY_SPREAD_SECONDS),
        parked_seconds: float = PARKED_SECONDS,
    ) -> None:
        self.app = app
        self.limit = limit
        self.retry_after = retry_after
        self.parked_seconds = parked_seconds
        self.opening = 0
        self.waiting = 0
        self._slots = asyncio.Semaphore(limit) if limit else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        slots = self._slots
        if slots is None or scope["type"] not in ("http", "websocket") or not is_stream(scope):
            await self.app(scope, receive, send)
            return
        if slots.locked():
            admitted = False
            if self.waiting < WAITING_PER_SLOT * self.limit:
                self.waiting += 1
                metrics.OPENING_WAITING.inc()
                try:
                    async with asyncio.timeout(self.parked_seconds):
                        await slots.acquire()
                    admitted = True
                except TimeoutError:
                    pass
                finally:
                    self.waiting -= 1
                    metrics.OPENING_WAITING.dec()
            if not admitted:
                metrics.LIMITED.labels("opening").inc()
                await self._refuse(scope, receive, send)
                return
        else:
            await slots.acquire()
        self.opening += 1
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self.opening -= 1
                slots.release()

        async def watched(message: Message) -> None:
            if message["type"] in STARTED:
                release()
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            release()

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = json.dumps(
            {"detail": "too many streams opening at once: retry after Retry-After seconds"}
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(self.retry_after()).encode()),
        ]
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        elif (await receive())["type"] != "websocket.connect":
            return  # gone before its handshake could be answered
        elif "websocket.http.response" in scope.get("extensions", {}):
            await send({"type": "websocket.http.response.start", "status": 503, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1013, "reason": "try again later"})
