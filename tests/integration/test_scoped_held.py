"""A scoped cursor that cannot name one more session (design section 10): the stream and
the pages hold back, like the global stream, until the transaction that holds the safe
point back ends, and then deliver the rest exactly, never an id longer than its bound.

Positions here are made far apart (the identity jumps between appends, as rolled-back
inserts make it jump), so that a few dozen sessions fill the cursor; the module has its
own database for that.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from ledger.cursor import MAX_CURSOR_LENGTH
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
)

PATH = "/api/events/stream"
SESSIONS = 70  # at 17 characters an entry, more than one cursor can name (~57)
JUMP = 10**15


def key(message: SseMessage) -> tuple[str, int]:
    found = json.loads(message.data or "")
    return found["session_id"], found["version"]


def append_far_apart(
    client: Any, db: psycopg.Connection[Any], sessions: list[str], body: dict[str, Any]
) -> None:
    for session in sessions:
        db.execute(
            "SELECT setval(pg_get_serial_sequence('events', 'position'),"
            " nextval(pg_get_serial_sequence('events', 'position')) + %s)",
            (JUMP,),
        )
        assert append(client, session, body).status_code == 201


@pytest.fixture
def holder(module_database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A transaction that holds an xid open, so no later commit is commit-safe."""
    with psycopg.connect(module_database_url) as conn:
        conn.execute("SELECT pg_current_xact_id()")
        yield conn


def test_a_full_cursor_holds_the_stream_back_then_it_delivers_the_rest_exactly(
    server: LiveServer, server_db: psycopg.Connection[Any], holder: psycopg.Connection[Any]
) -> None:
    patient = f"p-{uuid.uuid4()}"
    got: list[SseMessage] = []
    arrived = threading.Condition()
    with server.client() as client:
        sessions = [create_session(client, patient) for _ in range(SESSIONS)]
        with stream(server, PATH, role="patient", sub=patient) as response:
            assert response.status_code == 200

            def read() -> None:
                with contextlib.suppress(httpx.HTTPError):  # closed when the test is done
                    for message in event_messages(iter_sse(response)):
                        with arrived:
                            got.append(message)
                            arrived.notify_all()

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            append_far_apart(client, server_db, sessions, {"status": "queued"})
            with arrived:
                # Whatever the positions, 45 entries always fit: those go out live.
                assert arrived.wait_for(lambda: len(got) >= 45, timeout=15)
                # All of them cannot: the cursor would outgrow its bound.
                assert len(got) < SESSIONS
            holder.rollback()  # the safe point moves past every event appended
            assert append(client, sessions[0], {"status": "transcribing"}).status_code == 201
            with arrived:
                assert arrived.wait_for(lambda: len(got) == SESSIONS + 1, timeout=15), len(got)
    delivered = [key(m) for m in got]
    assert sorted(delivered) == sorted([(s, 1) for s in sessions] + [(sessions[0], 2)])
    assert delivered[-1] == (sessions[0], 2)
    assert all(m.id is not None and len(m.id) <= MAX_CURSOR_LENGTH for m in got)
    last = got[-1].id
    assert last is not None
    with server.client() as client:
        append(client, sessions[1], {"status": "transcribing"})
        with stream(
            server, PATH, role="patient", sub=patient, headers={"Last-Event-ID": last}
        ) as response:
            (only,) = take(event_messages(iter_sse(response)), 1)
    assert key(only) == (sessions[1], 2)


def test_pages_of_a_full_cursor_end_while_held_and_go_on_after(
    server: LiveServer, server_db: psycopg.Connection[Any], holder: psycopg.Connection[Any]
) -> None:
    patient = f"p-{uuid.uuid4()}"
    headers = auth("patient", patient)
    seen: list[tuple[str, int]] = []

    def walk(client: Any, after: str | None) -> str:
        """Follow the pages to their end; the cursor to go on from."""
        for _ in range(SESSIONS):  # far more pages than a correct walk needs
            params = {"limit": 25} if after is None else {"limit": 25, "after": after}
            page = client.get("/api/events", params=params, headers=headers)
            assert page.status_code == 200, page.text
            body = page.json()
            seen.extend((e["session_id"], e["version"]) for e in body["events"])
            assert len(body["cursor"]) <= MAX_CURSOR_LENGTH
            if body["next_after"] is None:
                return str(body["cursor"])
            after = body["next_after"]
        raise AssertionError("the pages never ended")

    with server.client() as client:
        sessions = [create_session(client, patient) for _ in range(SESSIONS)]
        append_far_apart(client, server_db, sessions, {"status": "queued"})
        cursor = walk(client, None)
        assert 45 <= len(seen) < SESSIONS  # held back: the rest are not commit-safe yet
        holder.rollback()
        # The safe point is the cluster's: a transaction of another module's (the suite runs
        # two at once on one PostgreSQL) may hold it back a moment longer. A reader goes on
        # from its cursor until it has them all; nothing may come twice.
        deadline = time.monotonic() + 30
        while len(seen) < SESSIONS and time.monotonic() < deadline:
            cursor = walk(client, cursor)
            time.sleep(0.2)
    assert sorted(seen) == sorted((s, 1) for s in sessions)
