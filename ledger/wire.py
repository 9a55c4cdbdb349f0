"""Encoding events once per process and framing them for SSE and WebSocket.

The hub wraps each event it fans out in one :class:`Encoded`; every subscriber of that
session shares the same bytes, and each framing is built at most once.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import orjson

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
    __slots__ = (
        "_global_sse",
        "_recorded_at",
        "_session_sse",
        "_ws",
        "event",
        "json",
        "patient_id",
        "tx",
    )

    def __init__(self, event: Event, tx: int = 0, patient_id: str | None = None) -> None:
        self.event = event
        self.json = dumps(event.to_json())
        # Where the hub read it for scoped streams: its transaction (its place in the
        # global order) and its session's patient (how streams that follow one find it).
        self.tx = tx
        self.patient_id = patient_id
        self._session_sse: bytes | None = None
        self._global_sse: bytes | None = None
        self._ws: str | None = None
        self._recorded_at: float | None = None

    def recorded_at(self) -> float:
        """The event's ``recorded_at`` as a Unix time, once for all who measure its lag."""
        if self._recorded_at is None:
            self._recorded_at = self.event.recorded_at.timestamp()
        return self._recorded_at

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

    def scoped_sse(self, cursor: str) -> bytes:
        """A scoped stream's frame: ``id`` is that stream's own cursor, so never shared."""
        return sse_frame(self.event.type.value, cursor, self.json)

    def scoped_ws(self, cursor: str) -> str:
        return ws_message(self.event.type.value, cursor, self.json)

    def global_ws(self) -> str:
        return ws_message(self.event.type.value, self.event.position, self.json)


def sse_frame(event: str, id: int | str, data_json: str) -> bytes:
    """An event frame, as ``fastapi.sse.format_sse_event`` writes it (event, data, id),
    built directly: compact JSON never holds a raw line break, so there are no lines to
    split, and this runs once per event of every replay (the tests hold the two equal)."""
    return f"event: {event}\ndata: {data_json}\nid: {id}\n\n".encode()


def sse_retry(retry_ms: int, id: int | str | None = None) -> bytes:
    """The opening message; with an ``id`` it also gives EventSource a cursor at once
    (``format_sse_event``'s order: id, then retry)."""
    cursor = "" if id is None else f"id: {id}\n"
    return f"{cursor}retry: {retry_ms}\n\n".encode()


def ws_message(event: str, id: int | str, data_json: str) -> str:
    """``id`` a number (a version or position) or a scoped cursor (a JSON string)."""
    id_json = id if isinstance(id, int) else json.dumps(id)
    return f'{{"id":{id_json},"event":{json.dumps(event)},"data":{data_json}}}'


def state_json(session_id: UUID, head: Event | None) -> str:
    return dumps(status_body(session_id, head))


def status_body(session_id: UUID, head: Event | None) -> dict[str, object]:
    """The ``status`` answer: the latest event, or version 0 and nulls before the first."""
    if head is not None:
        return head.to_json()
    return {
        "session_id": str(session_id),
        "version": 0,
        "position": None,
        "type": None,
        "status": None,
        "progress": 0,
        "message": None,
        "error": None,
        "data": {},
        "actor": None,
        "recorded_at": None,
    }
