"""The all-sessions stream: exactly once, even when transactions commit out of order."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg

from tests.support import (
    LiveServer,
    append,
    create_session,
    event_messages,
    iter_sse,
    stream,
    take,
)

PATH = "/api/events/stream"


def test_global_stream_resumes_by_position(server: LiveServer) -> None:
    with server.client() as client:
        a, b = create_session(client), create_session(client)
        first = append(client, a, {"status": "queued"}).json()[0]["position"]
        append(client, b, {"status": "queued"})
        with stream(server, PATH, headers={"Last-Event-ID": str(first)}) as response:
            messages = event_messages(iter_sse(response))
            got = take(messages, 1)
            assert json.loads(got[0].data or "")["session_id"] == b
            append(client, a, {"status": "processed"})
            live = take(messages, 1)
            assert json.loads(live[0].data or "")["session_id"] == a
            assert int(live[0].id or 0) > int(got[0].id or 0)
        auditor = client.get(PATH, headers={"Authorization": "Bearer x"})
        assert auditor.status_code == 401


def test_global_stream_is_for_admins_and_auditors(server: LiveServer) -> None:
    """Other readers get their scoped stream on this path (tests/integration/
    test_scoped_streams.py); a role that reads nothing gets neither."""
    with stream(server, PATH, role="service") as response:
        assert response.status_code == 403
    with stream(server, PATH, role="auditor", read_timeout=3) as response:
        assert response.status_code == 200
    with stream(server, PATH, headers={"Last-Event-ID": "999999999"}) as response:
        assert response.status_code == 404
    with stream(server, PATH, headers={"Last-Event-ID": "x"}) as response:
        assert response.status_code == 400


def insert_raw_event(conn: psycopg.Connection[Any], session_id: uuid.UUID) -> int:
    """What an append does, in a transaction the test controls (and keeps open)."""
    conn.execute("INSERT INTO sessions (id, patient_id) VALUES (%s, 'slow')", (session_id,))
    row = conn.execute(
        """
        INSERT INTO events (session_id, version, type, status, progress, actor, recorded_at,
                            prev_hash, hash)
        VALUES (%s, 1, 'progress', 'queued', 0, 'slow-writer', clock_timestamp(),
                repeat('0', 64), repeat('f', 64))
        RETURNING position
        """,
        (session_id,),
    ).fetchone()
    conn.execute("SELECT pg_notify('ledger_events', %s)", (f"{session_id} 1 1",))
    assert row is not None
    return int(row[0])


def test_late_commit_of_a_lower_position_is_not_skipped(
    server: LiveServer, module_database_url: str
) -> None:
    """A transaction takes a position, stays open while later ones commit, then commits.

    A reader asking for ``position > last`` would pass it by for good; the consumer here
    resumes from its last id several times and still receives every event exactly once.
    """
    slow_session = uuid.uuid4()
    with server.client() as client:
        fast = create_session(client)
        append(client, fast, {"status": "uploaded"})
        # A fresh connect starts at the present: it sends only what is appended from now on.
        with stream(server, PATH, read_timeout=20) as response:
            messages = event_messages(iter_sse(response))
            with psycopg.connect(module_database_url) as slow:
                slow_position = insert_raw_event(slow, slow_session)
                later = [
                    append(client, fast, {"status": "transcribing", "progress": p}).json()[0]
                    for p in range(1, 4)
                ]
                assert all(e["position"] > slow_position for e in later)
                slow.commit()
            received = take(messages, 4)
        ids = [(json.loads(m.data or "")["session_id"], int(m.id or 0)) for m in received]
        assert (str(slow_session), slow_position) in ids
        assert sorted(p for _, p in ids) == sorted([slow_position, *(e["position"] for e in later)])

        # Resume from each id in turn: never the same event twice, never one missed.
        slow2 = uuid.uuid4()
        with psycopg.connect(module_database_url) as slow:
            slow2_position = insert_raw_event(slow, slow2)
            more = [
                append(client, fast, {"status": "diarizing", "progress": p}).json()[0]["position"]
                for p in range(10, 13)
            ]
            cursor = str(later[-1]["position"])
            page = client.get(
                "/api/events",
                params={"after": cursor},
                headers={"Authorization": response.request.headers["Authorization"]},
            ).json()
            assert page["events"] == []  # held back behind the open transaction, not skipped
            slow.commit()
        seen: list[int] = []
        for _ in range(4):
            with stream(server, PATH, headers={"Last-Event-ID": cursor}) as resumed:
                got = take(event_messages(iter_sse(resumed)), 1)
                cursor = got[0].id or cursor
                seen.append(int(cursor))
        assert sorted(seen) == sorted([slow2_position, *more])
        assert len(set(seen)) == 4


def test_held_back_by_a_silent_transaction_still_arrives(
    server: LiveServer, module_database_url: str
) -> None:
    """An older writer that never notifies (here: a plain session insert) holds the event
    back; when it commits nobody is told, yet the event is delivered, with heartbeats
    flowing in the meantime (the test server's heartbeat is 1 s)."""
    with server.client() as client:
        fast = create_session(client)
        with stream(server, PATH, read_timeout=20) as response:
            messages = iter_sse(response)
            opening = next(messages)
            assert opening.retry is not None
            assert opening.id is not None  # a cursor at once, before any event
            with psycopg.connect(module_database_url) as silent:
                silent.execute(
                    "INSERT INTO sessions (id, patient_id) VALUES (%s, 'quiet')", (uuid.uuid4(),)
                )
                appended = append(client, fast, {"status": "uploaded"}).json()[0]
                held = client.get(
                    "/api/events",
                    params={"after": str(appended["position"])},
                    headers={"Authorization": response.request.headers["Authorization"]},
                )
                assert held.status_code == 409  # not a cursor a global reader hands out yet
                heartbeats = take(messages, 2)
                assert all(m.comments == ["heartbeat"] and m.data is None for m in heartbeats)
                silent.commit()
            got = take(event_messages(messages), 1)
        assert json.loads(got[0].data or "")["position"] == appended["position"]
