"""A lean Server-Sent Events response for feeds.

``fastapi.sse.EventSourceResponse`` runs extra tasks per connection, a fixed 15 s ``: ping``
and no resume logic; a ledger stream needs a configurable ``: heartbeat``, an exact resume
decided before the response starts, and the least memory per idle connection. So the
response is a plain ASGI callable: one task writes the feed, one small task watches for the
client's disconnect and closes the subscription at once. The wire format is
``fastapi.sse.format_sse_event``'s (see ``ledger.wire``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ledger import metrics
from ledger.live.feeds import Item, Kind
from ledger.live.subscription import Mailbox
from ledger.logs import Throttled
from ledger.wire import HEARTBEAT, Encoded, sse_frame, sse_retry

log = logging.getLogger(__name__)
# Every stream of a failover ends at once: one line for them all.
ended_log = Throttled(log)

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def sse_bytes(item: Item, framing: Callable[[Encoded], bytes]) -> bytes:
    """The item's bytes; a page of events is one write."""
    if item.kind is Kind.HEARTBEAT:
        return HEARTBEAT
    if item.kind is Kind.RESET:
        assert item.reset_json is not None
        return sse_frame("reset", item.reset_id, item.reset_json)
    if item.cursors:
        return b"".join(
            [
                encoded.scoped_sse(cursor)
                for encoded, cursor in zip(item.events, item.cursors, strict=True)
            ]
        )
    if len(item.events) == 1:
        return framing(item.events[0])
    return b"".join([framing(encoded) for encoded in item.events])


class FeedResponse(Response):
    media_type = "text/event-stream"

    def __init__(
        self,
        items: AsyncIterator[Item],
        sub: Mailbox[Any],
        *,
        framing: Callable[[Encoded], bytes],
        retry_ms: int,
        on_close: Callable[[], None],
        initial_id: int | str | None = None,
    ) -> None:
        # Like StreamingResponse: no body attribute, so no Content-Length header.
        self.status_code = 200
        self.init_headers(SSE_HEADERS)
        self.items = items
        self.sub = sub
        self.framing = framing
        self.retry_ms = retry_ms
        self.on_close = on_close
        self.initial_id = initial_id
        self.background: BackgroundTask | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.create_task(self._watch_disconnect(receive))
        metrics.SUBSCRIBERS.labels("sse").inc()
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            # The first message is the retry hint: it also opens the stream in the browser at
            # once, even when the session has nothing to send yet.
            await self._write(send, sse_retry(self.retry_ms, self.initial_id))
            try:
                async for item in self.items:
                    await self._write(send, sse_bytes(item, self.framing))
                    if item.kind is Kind.EVENT:
                        item.count_delivered("sse")
                    del item  # not held while the stream waits for the next
            except OSError:
                raise
            except Exception as exc:
                # The database went away mid-stream: end the response cleanly; the client
                # resumes with Last-Event-ID once it is back.
                ended_log.warning("stream ended by an error: %s", exc)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # The client went away mid-write; its subscription is released below.
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await self.items.aclose()  # type: ignore[attr-defined]
            self.on_close()
            metrics.SUBSCRIBERS.labels("sse").dec()

    @staticmethod
    async def _write(send: Send, body: bytes) -> None:
        await send({"type": "http.response.body", "body": body, "more_body": True})

    async def _watch_disconnect(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.sub.close()
                return
