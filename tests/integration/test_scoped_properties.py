"""Hypothesis, stateful: many writers (some holding a transaction open across others'
commits), readers of every kind on SSE and WebSocket that disconnect at random points,
mid-message too, and resume by header or query. Every reader sees each session of its scope
exactly as the table has it: in order, nothing twice, nothing missing."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from websockets.sync.client import ClientConnection, connect

from tests.support import LiveServer, append, auth, create_session, table_versions, token

PATH = "/api/events/stream"


@dataclass
class Reader:
    """One reader: who it is, what it may see, and what it has seen."""

    role: str
    sub: str
    params: tuple[tuple[str, str], ...]
    transport: str
    scope: set[str]
    seen: dict[str, int] = field(default_factory=dict)
    cursor: str = "0"
    # What holds the connection open (either transport's), and its reading end.
    sse: contextlib.ExitStack | None = None
    lines: Iterator[str] | None = None
    ws: ClientConnection | None = None

    @property
    def connected(self) -> bool:
        return self.sse is not None


class ScopedStreams(RuleBasedStateMachine):
    server: LiveServer
    database_url: str
    delivered = 0

    def __init__(self) -> None:
        super().__init__()
        self.http = self.server.client()
        p, q = f"p-{uuid.uuid4()}", f"q-{uuid.uuid4()}"
        therapist = f"t-{uuid.uuid4()}"
        for patient in (p, q):
            self.http.put(f"/api/care-assignments/{therapist}/{patient}", headers=auth("admin"))
        self.fast = [create_session(self.http, p) for _ in range(2)]
        self.fast += [create_session(self.http, q) for _ in range(2)]
        self.slow = [create_session(self.http, p), create_session(self.http, q)]
        self.patient_of = dict(zip(self.fast + self.slow, [p, p, q, q, p, q], strict=True))
        self.committed: dict[str, int] = dict.fromkeys(self.fast + self.slow, 0)
        self.finished: set[str] = set()
        self.open_tx: dict[str, psycopg.Connection[Any]] = {}
        everything = set(self.fast + self.slow)
        of_p = {s for s, owner in self.patient_of.items() if owner == p}
        self.readers = [
            Reader("patient", p, (), "sse", of_p),
            Reader("patient", p, (), "ws", of_p),
            Reader("therapist", therapist, (), "sse", everything),
            Reader("admin", "root", (("patient_id", p), ("patient_id", q)), "ws", everything),
            Reader(
                "admin",
                "root",
                (("session_id", self.fast[0]), ("session_id", self.slow[1])),
                "sse",
                {self.fast[0], self.slow[1]},
            ),
        ]

    # -- writers ---------------------------------------------------------------------------

    @rule(index=st.integers(0, 3), count=st.integers(1, 3), finish=st.booleans())
    def append_over_http(self, index: int, count: int, finish: bool) -> None:
        session = self.fast[index]
        if session in self.finished:
            return
        body: list[dict[str, Any]] = [
            {"status": "transcribing", "progress": i} for i in range(count)
        ]
        if finish and self.committed[session] + count >= 3:
            body[-1] = {"status": "processed"}
            self.finished.add(session)
        response = append(self.http, session, body)
        assert response.status_code == 201, response.text
        self.committed[session] += count

    @rule(index=st.integers(0, 1))
    def hold_a_transaction_open(self, index: int) -> None:
        """A writer takes a version (and a position) and keeps its transaction open."""
        session = self.slow[index]
        if session in self.open_tx:
            return
        conn = psycopg.connect(self.database_url)
        version = self.committed[session] + 1
        conn.execute(
            """
            INSERT INTO events (session_id, version, type, status, progress, actor,
                                recorded_at, prev_hash, hash)
            VALUES (%s, %s, 'progress', 'queued', 0, 'slow', clock_timestamp(),
                    repeat('0', 64), repeat('f', 64))
            """,
            (session, version),
        )
        conn.execute("SELECT pg_notify('ledger_events', %s)", (f"{session} {version} {version}",))
        self.open_tx[session] = conn

    @precondition(lambda self: bool(self.open_tx))
    @rule(data=st.data())
    def commit_the_held_transaction(self, data: st.DataObject) -> None:
        session = data.draw(st.sampled_from(sorted(self.open_tx)))
        conn = self.open_tx.pop(session)
        conn.commit()
        conn.close()
        self.committed[session] += 1

    # -- readers ---------------------------------------------------------------------------

    def pending(self, reader: Reader) -> int:
        return sum(self.committed[s] - reader.seen.get(s, 0) for s in reader.scope)

    @rule(index=st.integers(0, 4), by_query=st.booleans())
    def connect_reader(self, index: int, by_query: bool) -> None:
        reader = self.readers[index]
        if reader.connected:
            return
        if reader.transport == "ws":
            credentials = (("access_token", token(reader.role, reader.sub)),)
            query = httpx.QueryParams(
                (*reader.params, *credentials, ("last_event_id", reader.cursor))
            )
            stack = contextlib.ExitStack()
            url = f"ws://127.0.0.1:{self.server.port}/api/events/ws?{query}"
            reader.ws = stack.enter_context(connect(url))
            reader.sse = stack
            return
        params = reader.params
        headers = auth(reader.role, reader.sub)
        if by_query:
            params = (*params, ("last_event_id", reader.cursor))
        else:
            headers["Last-Event-ID"] = reader.cursor
        client = httpx.Client(base_url=self.server.base_url, timeout=httpx.Timeout(10, read=20))
        stack = contextlib.ExitStack()
        stack.enter_context(client)
        response = stack.enter_context(client.stream("GET", PATH, params=params, headers=headers))
        assert response.status_code == 200, response.read()
        reader.sse = stack
        reader.lines = response.iter_lines()
        # The retry hint, with the cursor the stream starts from.
        opening = [next(reader.lines) for _ in range(3)]
        assert opening[0] == f"id: {reader.cursor}" or opening[0].startswith("id: ")

    @rule(index=st.integers(0, 4), data=st.data())
    def read_and_maybe_drop(self, index: int, data: st.DataObject) -> None:
        """Read some of what is pending; then perhaps cut the connection, for SSE perhaps in
        the middle of the next message."""
        reader = self.readers[index]
        if not reader.connected:
            return
        pending = self.pending(reader)
        count = data.draw(st.integers(0, pending), label="messages")
        for _ in range(count):
            self.receive(reader)
        if data.draw(st.booleans(), label="disconnect"):
            if reader.lines is not None and count < pending:
                for _ in range(data.draw(st.integers(0, 3), label="lines of the next")):
                    line = next(reader.lines)
                    if line.startswith(":"):  # a heartbeat: not part of a message
                        next(reader.lines)
            self.disconnect(reader)

    def receive(self, reader: Reader) -> None:
        if reader.ws is not None:
            while True:
                message = json.loads(reader.ws.recv(timeout=20))
                if message["event"] != "heartbeat":
                    break
            self.check(reader, message["id"], message["data"])
            return
        assert reader.lines is not None
        fields: dict[str, str] = {}
        for line in reader.lines:
            if line == "":
                if "data" in fields:
                    break
                fields = {}
                continue
            name, _, value = line.partition(": ")
            if name:
                fields[name] = value
        self.check(reader, fields["id"], json.loads(fields["data"]))

    def check(self, reader: Reader, cursor: str, event: dict[str, Any]) -> None:
        session, version = event["session_id"], event["version"]
        assert session in reader.scope, (reader.role, session)
        assert version == reader.seen.get(session, 0) + 1, (reader.role, session, version)
        reader.seen[session] = version
        reader.cursor = cursor
        ScopedStreams.delivered += 1
        assert len(cursor) <= 1024

    def disconnect(self, reader: Reader) -> None:
        if reader.sse is not None:
            reader.sse.close()
            reader.sse, reader.lines, reader.ws = None, None, None

    @invariant()
    def nothing_seen_that_is_not_committed(self) -> None:
        for reader in self.readers:
            for session, version in reader.seen.items():
                assert version <= self.committed[session]

    def teardown(self) -> None:
        """Commit what is held, then every reader catches up and matches the table."""
        try:
            for session, conn in list(self.open_tx.items()):
                conn.commit()
                conn.close()
                self.committed[session] += 1
            self.open_tx.clear()
            for reader in self.readers:
                if not reader.connected:
                    self.connect_reader(self.readers.index(reader), by_query=False)
                while self.pending(reader):
                    self.receive(reader)
                self.disconnect(reader)
                for session in reader.scope:
                    assert list(range(1, reader.seen.get(session, 0) + 1)) == table_versions(
                        self.database_url, session
                    )
        finally:
            for reader in self.readers:
                self.disconnect(reader)
            for conn in self.open_tx.values():
                conn.close()
            self.http.close()


@pytest.mark.timeout(300)
def test_scoped_streams_deliver_each_scope_exactly(
    server: LiveServer, module_database_url: str
) -> None:
    ScopedStreams.server = server
    ScopedStreams.database_url = module_database_url
    ScopedStreams.TestCase.settings = settings(
        max_examples=10,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    ScopedStreams.TestCase().runTest()
    assert ScopedStreams.delivered > 0
