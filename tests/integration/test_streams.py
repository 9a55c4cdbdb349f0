"""The session stream over a real socket: start, resume, end, heartbeat, reset."""

from __future__ import annotations

import itertools
import json
import threading
import time
from typing import Any

import httpx
import psycopg
import pytest

from tests.support import (
    LiveServer,
    SseMessage,
    append,
    auth,
    create_session,
    event_messages,
    iter_sse,
    stream,
    take,
    token,
)


def path(session_id: str) -> str:
    return f"/api/sessions/{session_id}/status/stream"


def versions(messages: list[SseMessage]) -> list[int]:
    return [int(m.id or -1) for m in messages]


def test_headers_and_retry_hint(server: LiveServer) -> None:
    with server.client() as client:
        session_id = create_session(client)
        append(client, session_id, {"status": "queued"})
    with stream(server, path(session_id)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        messages = iter_sse(response)
        first = next(messages)
        assert first.retry == 2000
        event = next(messages)
        assert (event.id, event.event) == ("1", "progress")


def test_fresh_connect_gets_latest_then_live(server: LiveServer) -> None:
    with server.client() as client:
        session_id = create_session(client)
        append(
            client, session_id, [{"status": "queued"}, {"status": "transcribing", "progress": 5}]
        )
        with stream(server, path(session_id)) as response:
            messages = event_messages(iter_sse(response))
            latest = next(messages)
            assert latest.id == "2"
            assert json.loads(latest.data or "")["progress"] == 5
            append(client, session_id, {"status": "diarizing", "progress": 50})
            append(client, session_id, {"status": "processed"})
            rest = list(messages)  # the server closes after the terminal event
        assert versions(rest) == [3, 4]
        assert [m.event for m in rest] == ["progress", "complete"]
        data = json.loads(rest[-1].data or "")
        assert data["status"] == "processed"
        assert data["version"] == 4


def test_replay_all_and_resume(server: LiveServer) -> None:
    with server.client() as client:
        session_id = create_session(client)
        append(client, session_id, [{"status": "queued", "progress": p} for p in range(5)])
        with stream(server, path(session_id), params={"last_event_id": "0"}) as response:
            assert versions(take(event_messages(iter_sse(response)), 5)) == [1, 2, 3, 4, 5]
        with stream(server, path(session_id), headers={"Last-Event-ID": "3"}) as response:
            assert versions(take(event_messages(iter_sse(response)), 2)) == [4, 5]
        # The header wins over the query parameter (a browser reconnecting to the same URL).
        with stream(
            server, path(session_id), params={"last_event_id": "0"}, headers={"Last-Event-ID": "4"}
        ) as response:
            messages = event_messages(iter_sse(response))
            assert versions(take(messages, 1)) == [5]
            append(client, session_id, {"status": "failed", "error": "disk full"})
            final = list(messages)
        assert [(m.id, m.event) for m in final] == [("6", "error")]
        assert json.loads(final[0].data or "")["error"] == "disk full"


def test_session_without_events_waits(server: LiveServer) -> None:
    with server.client() as client:
        session_id = create_session(client)

        def later() -> None:
            time.sleep(0.5)
            with server.client() as writer:
                append(writer, session_id, [{"status": "uploaded"}, {"status": "processed"}])

        thread = threading.Thread(target=later)
        with stream(server, path(session_id)) as response:
            thread.start()
            received = list(event_messages(iter_sse(response)))
        thread.join()
        assert versions(received) == [1, 2]


def test_204_once_the_terminal_event_was_seen(server: LiveServer) -> None:
    with server.client() as client:
        session_id = create_session(client)
        append(client, session_id, [{"status": "queued"}, {"status": "processed"}])
        for headers, params in (({"Last-Event-ID": "2"}, {}), ({}, {"last_event_id": "2"})):
            response = client.get(
                path(session_id),
                headers={**headers, "Authorization": f"Bearer {token('admin')}"},
                params=params,
            )
            assert response.status_code == 204
        # Not yet seen: the terminal event is sent, then the stream closes.
        with stream(server, path(session_id), headers={"Last-Event-ID": "1"}) as response:
            assert [(m.id, m.event) for m in event_messages(iter_sse(response))] == [
                ("2", "complete")
            ]
        # A fresh connect to a finished session sends the final state and closes.
        with stream(server, path(session_id)) as response:
            assert versions(list(event_messages(iter_sse(response)))) == [2]


@pytest.mark.parametrize("bad", ["abc", "-1", "1.5", "", "1e3", "\uff11", "99999999999999999999"])
def test_bad_last_event_id_is_400(server: LiveServer, bad: str) -> None:
    with server.client() as client:
        session_id = create_session(client)
        auth_header = {"Authorization": f"Bearer {token('admin')}"}
        raw_headers = [
            (b"Authorization", auth_header["Authorization"].encode()),
            (b"Last-Event-ID", bad.encode("utf-8")),
        ]
        by_header = client.get(path(session_id), headers=raw_headers)
        assert by_header.status_code == 400, bad
        by_query = client.get(path(session_id), headers=auth_header, params={"last_event_id": bad})
        assert by_query.status_code == 400, bad


def test_id_beyond_history_gets_a_reset(server: LiveServer) -> None:
    with server.client() as client:
        session_id = create_session(client)
        append(
            client, session_id, [{"status": "queued"}, {"status": "transcribing", "progress": 7}]
        )
        with stream(server, path(session_id), headers={"Last-Event-ID": "40"}) as response:
            messages = event_messages(iter_sse(response))
            reset = next(messages)
            assert (reset.event, reset.id) == ("reset", "2")
            assert json.loads(reset.data or "")["progress"] == 7
            append(client, session_id, {"status": "processed"})
            assert [(m.id, m.event) for m in messages] == [("3", "complete")]

        empty = create_session(client)
        with stream(server, path(empty), headers={"Last-Event-ID": "5"}) as response:
            reset = next(event_messages(iter_sse(response)))
            assert (reset.event, reset.id) == ("reset", "0")
            assert json.loads(reset.data or "")["status"] is None


def test_heartbeat_when_silent(server: LiveServer) -> None:
    """The test server runs with LEDGER_HEARTBEAT_SECONDS=1."""
    with server.client() as client:
        session_id = create_session(client)
    with stream(server, path(session_id)) as response:
        messages = iter_sse(response)
        seen = [next(messages) for _ in range(3)]
    assert seen[0].retry is not None
    assert seen[1].comments == ["heartbeat"]
    assert seen[2].comments == ["heartbeat"]


def test_stream_ends_when_the_token_expires(server: LiveServer) -> None:
    with server.client() as client:
        session_id = create_session(client)
    short = token("admin", "reader", ttl=2)
    with httpx.Client(base_url=server.base_url, timeout=httpx.Timeout(10, read=20)) as client:
        with client.stream("GET", path(session_id), params={"access_token": short}) as response:
            assert response.status_code == 200
            started = time.monotonic()
            list(iter_sse(response))  # returns only because the server closed the stream
            assert time.monotonic() - started < 19  # closed by the server, not the read timeout
        reconnect = client.get(path(session_id), params={"access_token": short})
        assert reconnect.status_code == 401


def test_stream_authorization(server: LiveServer) -> None:
    with server.client() as client:
        session_id = create_session(client, patient_id="dana")
        url = path(session_id)
        assert client.get(url).status_code == 401
        assert client.get(url, params={"access_token": "forged"}).status_code == 401
        other = token("patient", "eve")
        denied = client.get(url, params={"access_token": other})
        assert denied.status_code == 403
        assert "dana" not in denied.text
        client.cookies.set("access_token", token("patient", "dana"))
        append(client, session_id, {"status": "processed"})
        cookie = client.get(url)
        assert cookie.status_code == 200
        assert "event: complete" in cookie.text


def test_lean_stream_routes_answer_as_declared(server: LiveServer) -> None:
    """The SSE routes are served without FastAPI's request machinery (for memory), but
    answer as the declared routes do, and stay in the OpenAPI document."""
    with server.client() as client:
        bad = client.get("/api/sessions/not-a-uuid/status/stream", headers=auth("admin"))
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["path", "session_id"]
        unknown = "/api/sessions/00000000-0000-4000-8000-000000000000/status/stream"
        assert client.get(unknown, headers=auth("admin")).status_code == 404
        assert client.get(unknown).status_code == 401
        assert client.get("/api/events/stream", headers=auth("service")).status_code == 403
        bad_cursor = client.get(
            "/api/events/stream", headers={**auth("admin"), "Last-Event-ID": "x"}
        )
        assert bad_cursor.status_code == 400
        assert client.post("/api/events/stream", headers=auth("admin")).status_code == 405
        paths = client.get("/openapi.json").json()["paths"]
        assert "get" in paths["/api/sessions/{session_id}/status/stream"]
        assert "get" in paths["/api/events/stream"]


def test_an_unreadable_notification_sends_streams_to_the_table(
    server: LiveServer, server_db: psycopg.Connection[Any]
) -> None:
    """A notification in a format this process cannot read (another version's, say) may
    have announced anything: every stream catches up from the table instead of missing it."""
    with server.client() as client:
        session_id = create_session(client)
    with stream(server, path(session_id), read_timeout=5) as response:
        messages = iter_sse(response)
        next(messages)  # the retry hint: the subscription exists
        server_db.execute(
            """
            INSERT INTO events (session_id, version, type, status, progress, actor,
                                recorded_at, prev_hash, hash)
            VALUES (%s, 1, 'progress', 'queued', 0, 'elsewhere', clock_timestamp(),
                    repeat('0', 64), repeat('f', 64))
            """,
            (session_id,),
        )
        server_db.execute("SELECT pg_notify('ledger_events', 'a format from elsewhere')")
        # Heartbeats come every second: a missed event shows within ~20 of them.
        found = take(event_messages(itertools.islice(messages, 20)), 1)
    assert found, "the event never reached the stream"
    assert found[0].id == "1"
    assert json.loads(found[0].data or "")["actor"] == "elsewhere"
