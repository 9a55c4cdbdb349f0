"""Abuse a directly exposed server meets: oversized and slow request heads, bodies that never
end, oversized WebSocket handshakes. Each is answered (or cut) promptly, with an HTTP error
where there is someone to tell, and nobody else's requests suffer."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.support import LiveServer, auth, create_session, token

WS_PATH = "/api/sessions/00000000-0000-0000-0000-000000000000/status/ws"
HANDSHAKE = (
    f"GET {WS_PATH} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
).encode()


@pytest.fixture(scope="module")
def exposed(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    live = LiveServer(
        module_database_url,
        tmp_path_factory.mktemp("exposed"),
        env={"LEDGER_HEADER_TIMEOUT_SECONDS": "1", "LEDGER_BODY_TIMEOUT_SECONDS": "1"},
    ).start()
    yield live
    live.stop()


def answer(live: LiveServer, request: bytes, wait: float = 10) -> bytes:
    """What the server says to these bytes (b"" when it just closes)."""
    with socket.create_connection(("127.0.0.1", live.port), timeout=wait) as conn:
        conn.sendall(request)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
            if b"\r\n\r\n" in received and (received.startswith(b"HTTP/1.1 4")):
                break
        return received


def status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("a 9 KiB header line", b"X-Big: " + b"a" * 9000 + b"\r\n"),
        ("200 headers", b"".join(b"X-H%d: v\r\n" % i for i in range(200))),
        ("a 100 KB token", b"Authorization: Bearer " + b"a" * 100_000 + b"\r\n"),
    ],
)
def test_an_oversized_websocket_handshake_is_answered_431(
    exposed: LiveServer, name: str, extra: bytes
) -> None:
    reply = answer(exposed, HANDSHAKE + extra + b"\r\n")
    assert status(reply) == 431, (name, reply[:200])


def test_an_oversized_request_head_is_431_and_a_big_one_within_the_limit_is_served(
    exposed: LiveServer,
) -> None:
    huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
    assert status(answer(exposed, huge)) == 431
    never_ends = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000
    assert status(answer(exposed, never_ends)) == 431  # refused before it ends
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    assert status(answer(exposed, big)) == 200


def test_a_refused_handshake_is_not_logged_as_an_error(exposed: LiveServer) -> None:
    before = exposed.log().count('"level": "error"')
    reply = answer(exposed, HANDSHAKE + b"\r\n")  # no token: 401 before the upgrade
    assert status(reply) == 401
    time.sleep(0.2)
    assert exposed.log().count('"level": "error"') == before


def slow_connections(live: LiveServer, count: int) -> list[socket.socket]:
    conns = []
    for _ in range(count):
        conn = socket.create_connection(("127.0.0.1", live.port), timeout=10)
        conn.sendall(b"GET /healthz HTTP/1.1\r\n")
        conns.append(conn)
    return conns


def closed(conn: socket.socket) -> bool:
    """Whether the server has closed it (it may have said 408 first)."""
    try:
        conn.sendall(b"X")
        conn.settimeout(0.05)
        conn.recv(4096)  # the end, or the 408 before it
    except TimeoutError:
        return False  # still waiting for the rest of the head
    except OSError:
        return True
    return True


def test_slow_heads_are_cut_and_others_are_served_meanwhile(exposed: LiveServer) -> None:
    conns = slow_connections(exposed, 50)
    try:
        with exposed.client() as client:
            assert client.get("/healthz").status_code == 200
        deadline = time.monotonic() + 15
        open_ = list(conns)
        while open_ and time.monotonic() < deadline:
            time.sleep(0.25)  # a byte every quarter second: slower than a head may take
            open_ = [c for c in open_ if not closed(c)]
        assert open_ == []
    finally:
        for conn in conns:
            conn.close()


def test_a_silent_connection_is_closed(exposed: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", exposed.port), timeout=10) as conn:
        assert conn.recv(100) == b""  # closed by the server, before the socket timeout


def test_a_body_that_never_ends_is_408_and_stores_nothing(
    exposed: LiveServer, module_database_url: str
) -> None:
    import psycopg

    with exposed.client() as client:
        session_id = create_session(client)
    head = (
        f"POST /api/sessions/{session_id}/events HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token('service', 'slow')}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        '5\r\n{"sta\r\n'
    ).encode()
    reply = answer(exposed, head)
    assert status(reply) == 408
    with psycopg.connect(module_database_url) as db:
        row = db.execute("SELECT count(*) FROM events WHERE session_id = %s", (session_id,))
        assert row.fetchone() == (0,)
    with exposed.client() as client:  # the server is fine
        listed = client.get("/api/sessions", headers=auth("admin"))
        assert listed.status_code == 200


def test_a_body_nobody_reads_does_not_hold_the_connection(exposed: LiveServer) -> None:
    """A GET answered before its body ended: the rest could trickle in forever."""
    with socket.create_connection(("127.0.0.1", exposed.port), timeout=10) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nx")
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
        assert received.startswith(b"HTTP/1.1 200")  # answered, then closed (recv ended)


def test_requests_pipelined_behind_a_refused_head_are_not_served(exposed: LiveServer) -> None:
    huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
    after = b"GET /api/sessions HTTP/1.1\r\nHost: x\r\n\r\n"
    reply = answer(exposed, huge + after)
    assert status(reply) == 431
    assert reply.count(b"HTTP/1.1") == 1


def test_a_second_content_type_does_not_hide_a_duplicate_key(exposed: LiveServer) -> None:
    with exposed.client() as client:
        session_id = create_session(client)
    body = b'{"status": "queued", "status": "processed"}'
    request = (
        f"POST /api/sessions/{session_id}/events HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token('service', 'dup')}\r\n"
        "Content-Type: application/json\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    assert status(answer(exposed, request)) == 422
