"""The WebSocket stream: the same semantics as SSE, as JSON messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.support import LiveServer, append, create_session, receive_all, token


def ws_url(server: LiveServer, session_id: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"ws://127.0.0.1:{server.port}/api/sessions/{session_id}/status/ws?{query}"


def test_ws_replay_live_and_close(server: LiveServer) -> None:
    with server.client() as client:
        session_id = create_session(client)
        append(client, session_id, [{"status": "queued"}, {"status": "transcribing"}])
        url = ws_url(server, session_id, access_token=token("admin"), last_event_id="0")
        with connect(url) as ws:
            first = [json.loads(ws.recv(timeout=10)) for _ in range(2)]
            assert [(m["id"], m["event"]) for m in first] == [(1, "progress"), (2, "progress")]
            assert first[1]["data"]["status"] == "transcribing"
            append(client, session_id, {"status": "processed"})
            rest = receive_all(ws)
            assert [(m["id"], m["event"]) for m in rest] == [(3, "complete")]
            assert ws.close_code == 1000


def test_ws_resume_and_already_finished(server: LiveServer) -> None:
    with server.client() as client:
        session_id = create_session(client)
        append(client, session_id, [{"status": "queued"}, {"status": "failed", "error": "x"}])
    with connect(ws_url(server, session_id, access_token=token("admin"), last_event_id="1")) as ws:
        assert [(m["id"], m["event"]) for m in receive_all(ws)] == [(2, "error")]
    with connect(ws_url(server, session_id, access_token=token("admin"), last_event_id="2")) as ws:
        assert receive_all(ws) == []
        assert ws.close_code == 1000


def test_ws_fresh_connect_and_reset(server: LiveServer) -> None:
    with server.client() as client:
        session_id = create_session(client)
        append(client, session_id, [{"status": "queued"}, {"status": "analyzing", "progress": 80}])
    with connect(ws_url(server, session_id, access_token=token("admin"))) as ws:
        latest = json.loads(ws.recv(timeout=10))
        assert (latest["id"], latest["data"]["progress"]) == (2, 80)
    with connect(ws_url(server, session_id, access_token=token("admin"), last_event_id="9")) as ws:
        reset = json.loads(ws.recv(timeout=10))
        assert (reset["event"], reset["id"]) == ("reset", 2)
        heartbeat = json.loads(ws.recv(timeout=10))  # LEDGER_HEARTBEAT_SECONDS=1 in tests
        assert heartbeat == {"event": "heartbeat"}


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({}, 401),
        ({"access_token": "garbage"}, 401),
        ({"access_token": "PATIENT_OTHER"}, 403),
        ({"access_token": "ADMIN", "last_event_id": "x"}, 400),
    ],
)
def test_ws_refusals_are_http_answers(
    server: LiveServer, params: dict[str, str], status: int
) -> None:
    with server.client() as client:
        session_id = create_session(client, patient_id="frank")
    names = {"PATIENT_OTHER": token("patient", "grace"), "ADMIN": token("admin")}
    resolved = {k: names.get(v, v) for k, v in params.items()}
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(server, session_id, **resolved))
    assert refused.value.response.status_code == status
    assert "frank" not in refused.value.response.body.decode()


def test_ws_unknown_session_is_404(server: LiveServer) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(server, "00000000-0000-4000-8000-000000000000", access_token=token("admin")))
    assert refused.value.response.status_code == 404


def test_ws_closes_when_the_token_expires(server: LiveServer) -> None:
    with server.client() as client:
        session_id = create_session(client)
    with connect(ws_url(server, session_id, access_token=token("admin", ttl=1))) as ws:
        assert receive_all(ws) == []  # only heartbeats, until the server closes
        assert ws.close_code == 1008
        assert (ws.close_reason or "").startswith("token expired")


def test_ws_compression_is_off_unless_configured(
    server: LiveServer, module_database_url: str, tmp_path: Path
) -> None:
    """A stream's messages are small JSON, and permessage-deflate's zlib state cost 46 KiB
    per open socket: offered by the client (browsers always offer it), it is declined
    unless LEDGER_WS_DEFLATE is set."""
    with server.client() as client:
        session_id = create_session(client)
        append(client, session_id, {"status": "queued"})
    url = ws_url(server, session_id, access_token=token("admin"))
    with connect(url, compression="deflate") as ws:
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert json.loads(ws.recv(timeout=10))["id"] == 1
    deflating = LiveServer(
        module_database_url, tmp_path / "deflate", env={"LEDGER_WS_DEFLATE": "true"}
    ).start()
    try:
        url = ws_url(deflating, session_id, access_token=token("admin"))
        with connect(url, compression="deflate") as ws:
            assert ws.response is not None
            extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
            assert "permessage-deflate" in extensions
            assert json.loads(ws.recv(timeout=10))["id"] == 1
    finally:
        deflating.stop()
