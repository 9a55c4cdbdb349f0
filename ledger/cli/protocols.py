"""uvicorn's HTTP and WebSocket protocols, with the limits a directly exposed server needs.

uvicorn (httptools) takes request heads of any size and at any pace: 500 connections
sending a header byte a second are held forever, and 200 unfinished 1 MiB heads cost
200 MiB. Its sans-I/O WebSocket protocol prepares a 431 for an oversized handshake but
never writes it (the client waits forever), and logs every refused handshake as an ERROR.
These subclasses bound the head (``LEDGER_MAX_HEADER_BYTES``, 431) and the time to send it
(``LEDGER_HEADER_TIMEOUT_SECONDS``, 408), write the handshake's refusal, and take a
refusal answered by the app for what it is. Behind nginx its own limits apply first
(``deploy/nginx.conf``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from ledger.waiting import Inbox, Wake


def _refusal(status: int, reason: str) -> bytes:
    body = f'{{"detail":"{reason}"}}'.encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


class BoundedHttpProtocol(HttpToolsProtocol):
    """A request head must arrive whole within ``header_timeout`` and ``max_header_bytes``."""

    # Slots: added to uvicorn's attributes, they grew every connection's instance dict by
    # 800 bytes (tracemalloc; docs/ARCHITECTURE.md, "Memory per idle stream").
    __slots__ = ("_head_bytes", "_head_open", "_head_size", "_head_timer", "_in_head")

    header_timeout = 10.0
    max_header_bytes = 128 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # received since the head began
        self._head_size = 0  # of the request line and headers
        self._in_head = True  # the bytes arriving now belong to a head (a new connection's)
        self._head_open = False  # a head has begun and not yet ended

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # A head still incomplete past the limit (it may never end): refuse it now.
        if self._in_head and self._head_bytes > self.max_header_bytes:
            self._refuse(431, "Request Header Fields Too Large")

    def _responding(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def on_message_begin(self) -> None:
        if self.transport.is_closing():
            return  # pipelined behind a refusal: not served
        super().on_message_begin()
        self._in_head = True
        self._head_open = True
        if not self._responding():  # a pipelined head waits for the response before it
            self._arm()

    def on_headers_complete(self) -> None:
        if self.transport.is_closing():
            return
        self._in_head = False
        self._head_open = False
        self._head_bytes = 0
        self._disarm()
        # The head's size from what the parser collected: no Python call per header.
        self._head_size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if self._head_size > self.max_header_bytes:
            self._refuse(431, "Request Header Fields Too Large")
            return  # no request cycle: the app never sees it
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self.transport.is_closing():
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self.transport.is_closing():
            super().on_message_complete()

    def on_response_complete(self) -> None:
        answered = self.cycle
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if answered is not None and answered.more_body:
            # Answered before its body ended (a GET with a body the app never read): the
            # rest could trickle in forever, so the connection ends here.
            self.transport.close()
            return
        if self._head_open:
            self._arm()  # a head began while the response went out: its time starts now
        elif not self.pipeline:
            self._in_head = True  # the next bytes are a new head: count them from the first
            self._head_bytes = 0

    def handle_websocket_upgrade(self) -> None:
        if not self.transport.is_closing():  # refused above
            super().handle_websocket_upgrade()

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _too_slow(self) -> None:
        self._head_timer = None
        if self._in_head and self._head_bytes:
            self._refuse(408, "Request Timeout")
        elif self._in_head and not self.transport.is_closing():
            self.transport.close()  # connected and silent: nothing to answer

    def _refuse(self, status: int, reason: str) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        if not self._responding():  # never in the middle of another response
            self.transport.write(_refusal(status, reason))
        self.transport.close()


class AnsweringWebSocketProtocol(WebSocketsSansIOProtocol):
    """Writes the refusal of a handshake that websockets could not accept, does not call a
    refusal that the app sent (``send_denial_response``) an incomplete handshake, and holds
    less for each open socket.

    uvicorn's receive queue and write flag (an ``asyncio.Queue`` and ``Event``: four
    deques) become their deque-less stand-ins, and the parsed handshake request and its
    response are dropped once the handshake is answered (nothing reads them after; the
    scope keeps its own copy of the headers): about 8 KiB of each idle WebSocket
    (docs/ARCHITECTURE.md, "Memory per idle stream").
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Only put_nowait, get and empty of the queue, and set, clear and wait of the flag,
        # are used (tests/unit/test_waiting.py holds them to asyncio's behaviour).
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Wake()  # type: ignore[assignment]
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.handshake_exc is not None and not self.handshake_initiated:
            # websockets refused the handshake itself (a header line over 8 KiB, more than
            # 128 headers) and prepared the answer: send it, then close.
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.handshake_complete = True
            self.close_sent = True
            self.transport.close()

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get(
            "more_body", False
        ):
            self.handshake_complete = True  # answered with an HTTP response, as meant
        if self.handshake_complete and hasattr(self, "request"):
            # websockets' parser keeps the request in its suspended frame for the life of
            # the connection: emptied, its headers go even so.
            self.request.headers.clear()
            del self.request, self.response


def bounded_http(header_timeout: float, max_header_bytes: int) -> type[BoundedHttpProtocol]:
    """The HTTP protocol class with this server's limits (uvicorn instantiates it)."""
    return type(
        "BoundedHttpProtocol",
        (BoundedHttpProtocol,),
        {"header_timeout": header_timeout, "max_header_bytes": max_header_bytes},
    )
