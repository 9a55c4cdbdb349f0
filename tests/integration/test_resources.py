"""Resources: disconnects free everything, slow consumers cannot grow memory without bound."""

from __future__ import annotations

import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from websockets.sync.client import connect

from tests.support import (
    LiveServer,
    append,
    auth,
    backends,
    create_session,
    iter_sse,
    metric,
    receive_all,
    stream,
    token,
    wait_until,
)

CLIENTS = 40


def subscribers(live: LiveServer) -> float:
    return metric(live, "ledger_subscribers", 'transport="sse"') + metric(
        live, "ledger_subscribers", 'transport="ws"'
    )


def churn(live: LiveServer, session_id: str) -> None:
    """CLIENTS streams at once, each dropped abruptly after its first message."""

    def sse_client(_: int) -> None:
        with stream(live, f"/api/sessions/{session_id}/status/stream") as response:
            next(iter_sse(response))

    def ws_client(_: int) -> None:
        url = f"ws://127.0.0.1:{live.port}/api/sessions/{session_id}/status/ws"
        with connect(f"{url}?access_token={token('admin')}") as ws:
            ws.recv(timeout=10)

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        list(pool.map(sse_client, range(CLIENTS)))
        list(pool.map(ws_client, range(CLIENTS // 4)))


def test_disconnects_leave_nothing_behind(
    server_factory: Callable[..., LiveServer], database_url: str
) -> None:
    # A small pool that this load certainly fills: the pool keeps that many connections
    # open, so after the warm-up the count must not move.
    live = server_factory(LEDGER_POOL_SIZE="4")
    with live.client() as client:
        session_id = create_session(client)
        append(client, session_id, {"status": "queued"})
    churn(live, session_id)  # warms the pool up to its size
    assert wait_until(lambda: subscribers(live) == 0)
    baseline = backends(database_url)
    for _ in range(3):
        churn(live, session_id)
        assert wait_until(lambda: subscribers(live) == 0)
    # psycopg's pool (4), the engine's (half of it) and the listener.
    assert backends(database_url) == baseline == 4 + 2 + 1


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


BATCHES, PER_BATCH = 300, 6  # about 14 MiB of events a slow reader does not read yet


def slow_reader_socket(port: int) -> socket.socket:
    """A connected client socket with a tiny receive window (set before it is agreed)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


def append_unread_backlog(live: LiveServer, session_id: str) -> int:
    """Append the backlog while the stream's reader reads nothing, then end the session;
    the server grows by a small fraction of it, its queue overflowing to the table.
    Returns how many events the session holds."""
    assert live.process is not None
    blob = "x" * 8000
    body = [{"status": "transcribing", "data": {"b": blob}}] * PER_BATCH
    with live.client() as client:
        for _ in range(10):  # warm-up, then measure
            append(client, session_id, body)
        before = rss_kib(live.process.pid)
        for _ in range(BATCHES - 10):
            assert append(client, session_id, body).status_code == 201
        after = rss_kib(live.process.pid)
        append(client, session_id, {"status": "processed"})
    appended_kib = (BATCHES - 10) * PER_BATCH * 8
    # Growth stays a small fraction of what was appended while the consumer slept.
    assert after - before < appended_kib / 4, (before, after, appended_kib)
    assert metric(live, "ledger_queue_overflows_total") >= 1
    return BATCHES * PER_BATCH + 1


def test_slow_consumer_is_bounded_and_still_gets_everything(
    server_factory: Callable[..., LiveServer],
) -> None:
    live = server_factory(LEDGER_SUBSCRIBER_QUEUE_SIZE="8")
    with live.client() as client:
        session_id = create_session(client)

    # A client with a tiny receive window that stops reading once the stream is open.
    sock = slow_reader_socket(live.port)
    headers = "".join(f"{k}: {v}\r\n" for k, v in auth("admin").items())
    request = (
        f"GET /api/sessions/{session_id}/status/stream?last_event_id=0 HTTP/1.0\r\n"
        f"Host: 127.0.0.1\r\n{headers}\r\n"
    )
    sock.sendall(request.encode())
    assert sock.recv(64).startswith(b"HTTP/1.1 200")
    total = append_unread_backlog(live, session_id)

    # Now it reads: every event once, in order.
    sock.settimeout(30)
    chunks: list[bytes] = []
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    sock.close()
    received = b"".join(chunks).split(b"\r\n\r\n", 1)[1].decode()
    ids = [int(line[4:]) for line in received.splitlines() if line.startswith("id: ")]
    assert ids == list(range(1, total + 1))


def test_a_slow_websocket_reader_is_bounded_and_still_gets_everything(
    server_factory: Callable[..., LiveServer],
) -> None:
    """The same over WebSocket: the socket fills, uvicorn's write flag (``ledger.waiting``'s
    ``Wake``) holds the stream's writer, its queue overflows to the table instead of the
    server's memory, and once the reader reads it gets every event once, in order."""
    live = server_factory(LEDGER_SUBSCRIBER_QUEUE_SIZE="8")
    with live.client() as client:
        session_id = create_session(client)
    url = (
        f"ws://127.0.0.1:{live.port}/api/sessions/{session_id}/status/ws"
        f"?access_token={token('admin')}&last_event_id=0"
    )
    sock = slow_reader_socket(live.port)
    # A queue of one message: the client stops reading from the socket once it holds one.
    with connect(url, sock=sock, max_queue=1, max_size=2**20, ping_interval=None) as ws:
        total = append_unread_backlog(live, session_id)
        received = receive_all(ws)
    assert [m["id"] for m in received] == list(range(1, total + 1))
    assert received[-1]["event"] == "complete"
    assert ws.close_code == 1000
