"""The opening gate and the throttled warning, driven by hand (pure ASGI, no server)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from ledger.api.admission import WAITING_PER_SLOT, OpeningGate, is_stream
from ledger.logs import Throttled


class HeldApp:
    """An app whose every request waits until released, then starts its response."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.entered += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0)  # a stream goes on after its start: its slot is free by now
        await send({"type": "http.response.body", "body": b""})


def http(path: str) -> Scope:
    return {"type": "http", "method": "GET", "path": path, "headers": []}


async def call(gate: OpeningGate, scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect" if scope["type"] == "websocket" else "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await gate(scope, receive, send)
    return sent


def test_only_stream_paths_are_gated() -> None:
    assert is_stream(http("/api/sessions/abc/status/stream"))
    assert is_stream(http("/api/sessions/abc/status/ws"))
    assert is_stream(http("/api/events/stream"))
    assert not is_stream(http("/api/sessions/abc/events"))
    assert not is_stream(http("/static/stream"))


def test_opens_past_the_limit_wait_then_are_refused_and_slots_return_at_the_first_byte() -> None:
    async def scenario() -> None:
        app = HeldApp()
        gate = OpeningGate(app, limit=2, retry_after=lambda: 7)
        path = http("/api/sessions/abc/status/stream")
        admitted = [asyncio.create_task(call(gate, path)) for _ in range(2)]
        parked = [asyncio.create_task(call(gate, path)) for _ in range(2 * WAITING_PER_SLOT)]
        await asyncio.sleep(0)
        assert (gate.opening, gate.waiting, app.entered) == (2, 2 * WAITING_PER_SLOT, 2)
        refused = await call(gate, path)
        assert app.entered == 2  # neither the parked nor the refused one reached the app
        assert refused[0]["status"] == 503
        assert (b"retry-after", b"7") in refused[0]["headers"]
        assert "too many streams opening" in json.loads(refused[1]["body"])["detail"]
        # Other paths are not gated.
        other = asyncio.create_task(call(gate, http("/api/sessions/abc/status")))
        await asyncio.sleep(0)
        assert app.entered == 3
        app.release.set()
        for task in [*admitted, *parked, other]:
            assert (await task)[0]["status"] == 200
        assert app.entered == 3 + 2 * WAITING_PER_SLOT  # the parked ones, in their turn
        assert (gate.opening, gate.waiting) == (0, 0)
        assert (await call(gate, path))[0]["status"] == 200

    asyncio.run(scenario())


def test_a_failing_open_gives_its_slot_back() -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    gate = OpeningGate(failing, limit=1)
    with pytest.raises(RuntimeError):
        asyncio.run(call(gate, http("/api/events/stream")))
    assert gate.opening == 0
    assert gate._slots is not None
    assert not gate._slots.locked()


def test_a_parked_open_is_refused_when_its_turn_does_not_come_and_leaves_no_trace() -> None:
    async def scenario() -> None:
        app = HeldApp()
        gate = OpeningGate(app, limit=1, retry_after=lambda: 2, parked_seconds=0.05)
        path = http("/api/sessions/abc/status/stream")
        stuck = asyncio.create_task(call(gate, path))  # holds the slot until released
        await asyncio.sleep(0)
        timed_out = await call(gate, path)
        assert timed_out[0]["status"] == 503
        assert (b"retry-after", b"2") in timed_out[0]["headers"]
        assert gate.waiting == 0
        # A parked open whose task is cancelled (the server stopping) leaves no count.
        parked = asyncio.create_task(call(gate, path))
        await asyncio.sleep(0)
        assert gate.waiting == 1
        parked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await parked
        assert gate.waiting == 0
        app.release.set()
        assert (await stuck)[0]["status"] == 200
        assert gate.opening == 0
        assert gate._slots is not None
        assert not gate._slots.locked()

    asyncio.run(scenario())


def test_a_websocket_is_refused_with_an_http_answer_when_the_server_can_send_one() -> None:
    async def never(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("the gate is full: the app must not run")

    gate = OpeningGate(never, limit=1, retry_after=lambda: 3)
    gate.waiting = WAITING_PER_SLOT  # the slot taken, the queue full
    assert gate._slots is not None
    asyncio.run(gate._slots.acquire())
    scope: dict[str, Any] = {"type": "websocket", "path": "/api/sessions/a/status/ws"}
    denied = asyncio.run(call(gate, {**scope, "extensions": {"websocket.http.response": {}}}))
    assert denied[0]["type"] == "websocket.http.response.start"
    assert denied[0]["status"] == 503
    assert (b"retry-after", b"3") in denied[0]["headers"]
    closed = asyncio.run(call(gate, scope))
    assert closed == [{"type": "websocket.close", "code": 1013, "reason": "try again later"}]


def test_a_websocket_gone_before_its_handshake_is_answered_gets_nothing() -> None:
    async def scenario() -> list[Message]:
        gate = OpeningGate(HeldApp(), limit=1)
        assert gate._slots is not None
        await gate._slots.acquire()
        gate.waiting = WAITING_PER_SLOT
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "websocket.disconnect", "code": 1001}

        async def send(message: Message) -> None:
            sent.append(message)

        await gate({"type": "websocket", "path": "/api/events/ws"}, receive, send)
        return sent

    assert asyncio.run(scenario()) == []


def test_the_spread_of_retry_after_covers_seconds() -> None:
    gate = OpeningGate(HeldApp(), limit=1)
    drawn = {gate.retry_after() for _ in range(500)}
    assert min(drawn) == 1
    assert max(drawn) >= 8


def test_a_throttled_warning_is_logged_once_per_interval_with_what_it_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    throttled = Throttled(logging.getLogger("test.throttled"), every=5.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.throttled"):
        for _ in range(1000):
            throttled.warning("database unavailable: %s", "gone")
        now[0] += 5.0
        throttled.warning("database unavailable: %s", "back?")
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "database unavailable: gone",
        "database unavailable: back? (and 999 more like it in the last 5 s)",
    ]
