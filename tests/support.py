"""Test helpers: databases copied from a migrated template, real server processes, SSE."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from ledger.auth import Role, TokenVerifier, load_keys
from ledger.db import libpq_url, sqlalchemy_url
from ledger.settings import Settings

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
        from ledger.migrate import upgrade

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LiveServer:
    """``python -m ledger serve`` in its own process, on a real socket."""

    database_url: str
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> LiveServer:
        env = {
            **os.environ,
            "LEDGER_DATABASE_URL": self.database_url,
            "LEDGER_JWT_SECRET": JWT_SECRET,
            "LEDGER_DATA_DIR": str(self.data_dir),
            "LEDGER_HEARTBEAT_SECONDS": "1",
            "LEDGER_LISTENER_PROBE_SECONDS": "1",
            "LEDGER_JWT_LEEWAY_SECONDS": "1",
            **self.env,
        }
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"server-{self.port}.log"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ledger", "serve", "--port", str(self.port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=10, **kwargs)


@dataclass
class SseMessage:
    id: str | None = None
    event: str | None = None
    data: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)


def iter_sse(response: httpx.Response) -> Iterator[SseMessage]:
    """A small SSE parser that, unlike most clients, also reports comments (heartbeats)."""
    message = SseMessage()
    data: list[str] = []
    for line in response.iter_lines():
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
    """A session's stored events as domain objects, to check chains with the real verifier."""
    from ledger.domain import Event, EventType, Status

    rows = db.execute(
        """
        SELECT session_id, version, position, type, status, progress, message, error, data,
               actor, recorded_at, prev_hash, hash
        FROM events WHERE session_id = %s ORDER BY version
        """,
        (session_id,),
    ).fetchall()
    return [
        Event(
            r[0],
            r[1],
            r[2],
            EventType(r[3]),
            Status(r[4]),
            r[5],
            r[6],
            r[7],
            r[8],
            r[9],
            r[10],
            r[11],
            r[12],
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
    params: dict[str, str] | None = None,
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
