"""Encoding events once per process and framing them for SSE and WebSocket.

The hub wraps each event it fans out in one :class:`Encoded`; every subscriber of that
session shares the same bytes, and each framing is built at most once.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from fastapi.sse import format_sse_event

from ledger.domain import Event

HEARTBEAT = b": heartbeat\n\n"


def dumps(value: Any) -> str:
    """Compact JSON, UTF-8 as is; orjson (an order of magnitude faster, which replays feel).

    orjson refuses integers beyond 64 bits, which jsonb can hold (it keeps ``1e20`` as
    ``100000000000000000000``): those values go through the standard library instead.
    """
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class Encoded:
    __slots__ = ("_global_sse", "_session_sse", "_ws", "event", "json")

    def __init__(self, event: Event) -> None:
        self.event = event
        self.json = dumps(event.to_json())
        self._session_sse: bytes | None = None
        self._global_sse: bytes | None = None
        self._ws: str | None = None

    def session_sse(self) -> bytes:
        """The session stream's frame: ``id`` is the session version."""
        if self._session_sse is None:
            self._session_sse = sse_frame(self.event.type.value, self.event.version, self.json)
        return self._session_sse

    def global_sse(self) -> bytes:
        """The all-sessions frame: ``id`` is the global position (the resume cursor)."""
        if self._global_sse is None:
            self._global_sse = sse_frame(self.event.type.value, self.event.position, self.json)
        return self._global_sse

    def ws(self) -> str:
        if self._ws is None:
            self._ws = ws_message(self.event.type.value, self.event.version, self.json)
        return self._ws


def sse_frame(event: str, id: int, data_json: str) -> bytes:
    """An event frame, as ``format_sse_event`` writes it (event, data, id), built directly:
    compact JSON never holds a raw line break, so there are no lines to split, and this runs
    once per event of every replay."""
    return f"event: {event}\ndata: {data_json}\nid: {id}\n\n".encode()


def sse_retry(retry_ms: int, id: int | None = None) -> bytes:
    """The opening message; with an ``id`` it also gives EventSource a cursor at once."""
    return format_sse_event(retry=retry_ms, id=None if id is None else str(id))


def ws_message(event: str, id: int, data_json: str) -> str:
    return f'{{"id":{id},"event":{json.dumps(event)},"data":{data_json}}}'
