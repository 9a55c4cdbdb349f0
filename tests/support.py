"""Test helpers: databases copied from a migrated template, real server processes, SSE."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from ledger.auth import Role, TokenVerifier, load_keys
from ledger.settings import Settings
from ledger.storage.database import libpq_url, sqlalchemy_url
from ledger.testing import ServerProcess

CHECKOUT = Path(__file__).resolve().parents[1]
JWT_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
TEST_SETTINGS = Settings(jwt_secret=JWT_SECRET)
VERIFIER = TokenVerifier(TEST_SETTINGS, load_keys(TEST_SETTINGS))


def token(role: str | Role, sub: str = "someone", ttl: int = 3600) -> str:
    return VERIFIER.mint(Role(role), sub, ttl)


def auth(role: str | Role, sub: str = "someone", ttl: int = 3600) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(role, sub, ttl)}"}


def with_database(url: str, name: str) -> str:
    return libpq_url(sqlalchemy_url(url).set(database=name))


class DatabaseFactory:
    """Clean databases in milliseconds: ``CREATE DATABASE … TEMPLATE`` of a migrated one."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.template = f"ledger_tpl_{uuid.uuid4().hex[:10]}"
        self.created: list[str] = []

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.server_url, autocommit=True)

    def build_template(self) -> None:
        from ledger.storage.migrations import upgrade

        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{self.template}"')
        upgrade(with_database(self.server_url, self.template))

    def create(self) -> str:
        name = f"ledger_t_{uuid.uuid4().hex[:12]}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.created.append(name)
        return with_database(self.server_url, name)

    def drop_all(self) -> None:
        with self.admin() as conn:
            for name in [*self.created, self.template]:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class LiveServer(ServerProcess):
    """A server process with the test suite's secret and short timers."""

    def base_env(self) -> dict[str, str]:
        return {
            **super().base_env(),
            "LEDGER_JWT_SECRET": JWT_SECRET,
            "LEDGER_HEARTBEAT_SECONDS": "1",
            "LEDGER_LISTENER_PROBE_SECONDS": "1",
            "LEDGER_JWT_LEEWAY_SECONDS": "1",
            # The suite's clients share a handful of subjects; test_quotas tests the limits.
            "LEDGER_MAX_STREAMS_PER_SUBJECT": "0",
            "LEDGER_MAX_APPENDS_PER_SECOND_PER_SUBJECT": "0",
        }


@dataclass
class SseMessage:
    id: str | None = None
    event: str | None = None
    data: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)


def iter_sse(response: httpx.Response) -> Iterator[SseMessage]:
    return parse_sse(response.iter_lines())


def parse_sse(lines: Iterable[str]) -> Iterator[SseMessage]:
    """A small SSE parser that, unlike most clients, also reports comments (heartbeats).

    As in EventSource, a message cut off before its blank line is never dispatched.
    """
    message = SseMessage()
    data: list[str] = []
    for line in lines:
        if line == "":
            if (
                data
                or message.event
                or message.id is not None
                or message.retry is not None
                or message.comments
            ):
                message.data = "\n".join(data) if data else None
                yield message
            message, data = SseMessage(), []
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "":
            message.comments.append(value)
        elif name == "data":
            data.append(value)
        elif name == "event":
            message.event = value
        elif name == "id":
            message.id = value
        elif name == "retry":
            message.retry = int(value)


def create_session(client: httpx.Client, patient_id: str = "patient-1") -> str:
    response = client.post(
        "/api/sessions", json={"patient_id": patient_id}, headers=auth("service", "pipeline")
    )
    assert response.status_code == 201, response.text
    session_id: str = response.json()["id"]
    return session_id


def append(
    client: httpx.Client, session_id: str, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    return client.post(
        f"/api/sessions/{session_id}/events",
        json=body,
        headers={**auth("service", "pipeline"), **(headers or {})},
    )


def load_events(db: psycopg.Connection[Any], session_id: str) -> list[Any]:
    """A session's stored events as domain objects, to check chains with the real verifier
    (decoded here by column name, not by the code under test)."""
    from psycopg.rows import dict_row

    from ledger.domain import Event, EventType, Status

    with db.cursor(row_factory=dict_row) as cursor:
        rows = cursor.execute(
            "SELECT * FROM events WHERE session_id = %s ORDER BY version", (session_id,)
        ).fetchall()
    return [
        Event(
            session_id=r["session_id"],
            version=r["version"],
            position=r["position"],
            type=EventType(r["type"]),
            status=Status(r["status"]),
            progress=r["progress"],
            message=r["message"],
            error=r["error"],
            data=r["data"],
            actor=r["actor"],
            recorded_at=r["recorded_at"],
            prev_hash=r["prev_hash"],
            hash=r["hash"],
        )
        for r in rows
    ]


@contextmanager
def stream(
    server: LiveServer,
    path: str,
    *,
    role: str = "admin",
    sub: str = "reader",
    headers: dict[str, str] | None = None,
    params: httpx.QueryParams | dict[str, Any] | None = None,
    read_timeout: float = 15.0,
) -> Iterator[httpx.Response]:
    """Open an SSE response as a reader with the given role."""
    timeout = httpx.Timeout(10.0, read=read_timeout)
    with (
        httpx.Client(base_url=server.base_url, timeout=timeout) as client,
        client.stream(
            "GET", path, headers={**auth(role, sub), **(headers or {})}, params=params
        ) as response,
    ):
        yield response


def event_messages(messages: Iterator[SseMessage]) -> Iterator[SseMessage]:
    """Only messages that carry data (events and resets), not retry hints or heartbeats."""
    for message in messages:
        if message.data is not None:
            yield message


def take(messages: Iterator[SseMessage], count: int) -> list[SseMessage]:
    taken: list[SseMessage] = []
    for message in messages:
        taken.append(message)
        if len(taken) == count:
            break
    return taken


def metric(server: LiveServer, name: str, labels: str = "") -> float:
    """A sample's value from the server's /metrics."""
    text = httpx.get(f"{server.base_url}/metrics", timeout=5).text
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


def wait_until(predicate: Any, timeout: float = 15.0, interval: float = 0.05) -> bool:
    """Poll a condition (never asserts time: only gives up eventually)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class Follower(threading.Thread):
    """Follows a session the way EventSource does, across failures and several servers.

    On any error or a stream that ends without the terminal event it reconnects (to the
    next base URL in turn) with ``Last-Event-ID``; it stops at the terminal event or a 204.
    """

    def __init__(self, base_urls: list[str], session_id: str, *, deadline: float = 90.0) -> None:
        super().__init__(daemon=True)
        self.base_urls = base_urls
        self.session_id = session_id
        self.deadline = time.monotonic() + deadline
        self.events: list[dict[str, Any]] = []
        self.connections = 0
        self.last_id = "0"
        self.error: BaseException | None = None
        self.streaming = threading.Event()

    def run(self) -> None:
        try:
            self._follow()
        except BaseException as exc:
            self.error = exc

    def _follow(self) -> None:
        path = f"/api/sessions/{self.session_id}/status/stream"
        attempt = 0
        while time.monotonic() < self.deadline:
            base = self.base_urls[attempt % len(self.base_urls)]
            attempt += 1
            self.connections += 1
            try:
                with (
                    httpx.Client(base_url=base, timeout=httpx.Timeout(5, read=10)) as client,
                    client.stream(
                        "GET",
                        path,
                        headers={**auth("admin", "follower"), "Last-Event-ID": self.last_id},
                    ) as response,
                ):
                    if response.status_code == 204:
                        return
                    if response.status_code != 200:
                        time.sleep(0.2)
                        continue
                    self.streaming.set()
                    for message in iter_sse(response):
                        if message.data is None:
                            continue
                        event = json.loads(message.data)
                        self.events.append(event)
                        self.last_id = message.id or self.last_id
                        if message.event in ("complete", "error"):
                            return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"gave up following after {self.connections} connections")

    def result(self, timeout: float = 120.0) -> list[dict[str, Any]]:
        self.join(timeout)
        if self.error is not None:
            raise self.error
        assert not self.is_alive(), "the follower is still running"
        return self.events


def append_retrying(base_url: str, session_id: str, body: Any, key: str, tries: int = 100) -> Any:
    """Append with an idempotency key, retrying through outages until it is acknowledged."""
    for _ in range(tries):
        try:
            with httpx.Client(base_url=base_url, timeout=5) as client:
                response = append(client, session_id, body, {"Idempotency-Key": key})
            if response.status_code == 201:
                return response.json()
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"append {key} never acknowledged")


def table_versions(database_url: str, session_id: str) -> list[int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT version FROM events WHERE session_id = %s ORDER BY version", (session_id,)
        ).fetchall()
    return [int(r[0]) for r in rows]


def receive_all(ws: ClientConnection) -> list[dict[str, Any]]:
    """Every non-heartbeat WebSocket message until the server closes the socket."""
    messages: list[dict[str, Any]] = []
    try:
        while True:
            message = json.loads(ws.recv(timeout=10))
            if message["event"] != "heartbeat":
                messages.append(message)
    except ConnectionClosed:
        return messages


def backends(database_url: str, application_name: str | None = None) -> int:
    """Connections other than this one to the database (only one application's, if given)."""
    query = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    params: tuple[str, ...] = ()
    if application_name is not None:
        query += " AND application_name = %s"
        params = (application_name,)
    with psycopg.connect(database_url) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def signed_size(server: LiveServer) -> int:
    """The tree size of the server's latest signed checkpoint (0 before the first)."""
    response = httpx.get(f"{server.base_url}/api/checkpoint", headers=auth("auditor"), timeout=10)
    if response.status_code == 404:
        return 0
    assert response.status_code == 200, response.text
    return int(response.text.split("\n")[1])


@contextmanager
def tables_locked(database_url: str, *tables: str) -> Iterator[Callable[[], int]]:
    """Hold an exclusive lock on ``tables``; yields how many statements wait on it."""
    with psycopg.connect(database_url) as holder, psycopg.connect(database_url) as probe:
        probe.autocommit = True
        holder.execute(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE")

        def waiting() -> int:
            row = probe.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).fetchone()
            return int(row[0]) if row else 0

        yield waiting
        holder.rollback()


def stream_status(base_url: str, path: str) -> int:
    """Open a stream as an admin, return its status code, close it."""
    with (
        httpx.Client(base_url=base_url, timeout=httpx.Timeout(30.0)) as client,
        client.stream("GET", path, headers=auth("admin", "storm")) as response,
    ):
        return response.status_code


def run_benchmark(database_url: str, module: str, *args: str) -> str:
    """``python -m <module> <args>`` as a user runs it, against ``database_url``; its
    output, once it has succeeded."""
    env = {**os.environ, "LEDGER_DATABASE_URL": database_url, "COLUMNS": "160"}
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=CHECKOUT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def quick_bench(database_url: str, output: Path, *groups: str) -> dict[str, Any]:
    """``python -m benchmarks --quick`` over ``groups`` (``--only``): its report."""
    only = [option for group in groups for option in ("--only", group)]
    stdout = run_benchmark(database_url, "benchmarks", "--quick", "--output", str(output), *only)
    report: dict[str, Any] = json.loads(output.read_text())
    report["stdout"] = stdout
    return report
