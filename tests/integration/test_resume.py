"""Random disconnects and resumes racing with appends: the client's view equals the table."""

from __future__ import annotations

import itertools
import json
import threading
import time
from typing import Any

import httpx
import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import LiveServer, append, auth, create_session, parse_sse


def follow(
    server: LiveServer, session_id: str, cuts: list[int], via_query: list[bool]
) -> tuple[list[dict[str, Any]], int]:
    """Read like EventSource: cut the connection after ``cuts[i]`` lines, resume, repeat.

    Returns the events received, in order, and the number of connections made.
    """
    received: list[dict[str, Any]] = []
    last_id = "0"
    connections = 0
    path = f"/api/sessions/{session_id}/status/stream"
    with httpx.Client(base_url=server.base_url, timeout=httpx.Timeout(10, read=20)) as client:
        for attempt in itertools.count():
            assert attempt < 200, "the stream never ended"
            connections += 1
            headers = auth("admin", "reader")
            params = {}
            if via_query[attempt % len(via_query)]:
                params["last_event_id"] = last_id
            else:
                headers["Last-Event-ID"] = last_id
            with client.stream("GET", path, headers=headers, params=params) as response:
                if response.status_code == 204:
                    return received, connections
                assert response.status_code == 200
                lines = response.iter_lines()
                if attempt < len(cuts):
                    lines = itertools.islice(lines, cuts[attempt])
                ended = attempt >= len(cuts)
                for message in parse_sse(lines):
                    if message.data is None:
                        continue
                    assert message.event in ("progress", "complete", "error"), message
                    event = json.loads(message.data)
                    assert str(event["version"]) == message.id
                    received.append(event)
                    last_id = message.id
                if ended:
                    return received, connections
    raise AssertionError("unreachable")


@settings(max_examples=20)
@given(
    batches=st.lists(st.integers(1, 6), min_size=1, max_size=8),
    pauses=st.lists(st.sampled_from([0.0, 0.001, 0.005, 0.02]), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 12), max_size=10),
    via_query=st.lists(st.booleans(), min_size=1, max_size=4),
    fail=st.booleans(),
)
def test_view_equals_table_across_random_resumes(
    server: LiveServer,
    server_db: psycopg.Connection[Any],
    batches: list[int],
    pauses: list[float],
    cuts: list[int],
    via_query: list[bool],
    fail: bool,
) -> None:
    with server.client() as client:
        session_id = create_session(client)

    def write() -> None:
        with server.client() as writer:
            progress = 0
            for index, size in enumerate(batches):
                body = []
                for _ in range(size):
                    progress = min(progress + 1, 99)
                    body.append({"status": "transcribing", "progress": progress})
                assert append(writer, session_id, body).status_code == 201
                time.sleep(pauses[index % len(pauses)])
            last = {"status": "failed", "error": "boom"} if fail else {"status": "processed"}
            assert append(writer, session_id, last).status_code == 201

    writer = threading.Thread(target=write)
    writer.start()
    try:
        received, _ = follow(server, session_id, cuts, via_query)
    finally:
        writer.join()

    table = server_db.execute(
        "SELECT version, status, progress, position FROM events"
        " WHERE session_id = %s ORDER BY version",
        (session_id,),
    ).fetchall()
    assert [(e["version"], e["status"], e["progress"], e["position"]) for e in received] == [
        tuple(row) for row in table
    ]
    assert received[-1]["type"] == ("error" if fail else "complete")
