"""The Python client, `ledger tail` in a real terminal, `ledger demo`, and session listing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from ledger.client import LedgerClientError, Reporter, follow, follow_all
from ledger.domain import verify_chain
from tests.support import (
    LiveServer,
    append,
    append_retrying,
    auth,
    create_session,
    load_events,
    table_versions,
    token,
    wait_until,
)


def test_follow_survives_a_server_killed_and_restarted(
    server_factory: Callable[..., LiveServer], database_url: str, tmp_path: Path
) -> None:
    first = server_factory()
    with first.client() as client:
        session_id = create_session(client)
        append(client, session_id, [{"status": "uploaded"}, {"status": "queued"}])
    received: list[dict[str, Any]] = []

    async def watch() -> None:
        async for event in follow(first.base_url, session_id, token("auditor"), last_event_id=0):
            received.append(event)

    watcher = threading.Thread(target=lambda: asyncio.run(watch()))
    watcher.start()
    assert wait_until(lambda: len(received) == 2)
    first.kill()
    second = LiveServer(database_url, tmp_path / "again", port=first.port).start()
    try:
        for n in range(3, 8):
            append_retrying(
                second.base_url, session_id, {"status": "transcribing", "progress": n}, f"k{n}"
            )
        append_retrying(second.base_url, session_id, {"status": "processed"}, "done")
        watcher.join(60)
        assert not watcher.is_alive()
    finally:
        second.stop()
    assert [e["version"] for e in received] == table_versions(database_url, session_id)
    assert received[-1]["type"] == "complete"


class Flaky(httpx.BaseTransport):
    """Injects the failures a pipeline meets: refused connections, lost answers, 503s."""

    def __init__(self, plan: list[str]) -> None:
        self.inner = httpx.HTTPTransport()
        self.plan = plan
        self.calls = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        fault = self.plan[self.calls % len(self.plan)]
        self.calls += 1
        if fault == "refuse":
            raise httpx.ConnectError("injected: connection refused", request=request)
        if fault == "unavailable":
            return httpx.Response(503, json={"detail": "injected"}, request=request)
        response = self.inner.handle_request(request)
        if fault == "lose-answer":  # the server did the work; the client never hears of it
            response.read()
            raise httpx.ReadTimeout("injected: answer lost", request=request)
        return response


def test_reporter_retries_without_duplicates(
    server: LiveServer, server_db: psycopg.Connection[Any]
) -> None:
    with server.client() as client:
        session_id = create_session(client)
    flaky = Flaky(["lose-answer", "refuse", "ok", "unavailable", "lose-answer", "ok", "ok"])
    with Reporter(
        server.base_url, token("service"), session_id, backoff=0.01, transport=flaky
    ) as reporter:
        first = reporter.report("uploaded", 0, message="received")
        batch = reporter.report_many([{"status": "transcribing", "progress": 10}] * 3)
        for progress in (20, 30, 40, 50):
            reporter.report("transcribing", progress)
        last = reporter.report("processed")
    assert flaky.calls > 8  # the faults really happened
    stored = load_events(server_db, session_id)
    assert [e.version for e in stored] == list(range(1, 10))  # 1 + 3 + 4 + 1, nothing twice
    assert first["version"] == 1
    assert [e["version"] for e in batch] == [2, 3, 4]
    assert last["version"] == 9
    assert verify_chain(stored) is None


class Busy:
    """Answers the first ``count`` requests itself, as a server shedding load does."""

    def __init__(self, count: int) -> None:
        self.count = count

    def answer(self, request: httpx.Request) -> httpx.Response | None:
        if self.count <= 0:
            return None
        self.count -= 1
        return httpx.Response(
            503, json={"detail": "server busy"}, headers={"Retry-After": "1"}, request=request
        )


class BusyTransport(httpx.BaseTransport):
    def __init__(self, count: int) -> None:
        self.busy, self.inner = Busy(count), httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.busy.answer(request) or self.inner.handle_request(request)


class AsyncBusyTransport(httpx.AsyncBaseTransport):
    def __init__(self, count: int) -> None:
        self.busy, self.inner = Busy(count), httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return self.busy.answer(request) or await self.inner.handle_async_request(request)


def test_the_clients_wait_as_long_as_retry_after_asks(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []
    real_sleep, real_async_sleep = time.sleep, asyncio.sleep

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        real_sleep(seconds)

    async def async_sleep(seconds: float, *args: Any) -> Any:
        waits.append(seconds)
        return await real_async_sleep(seconds, *args)

    monkeypatch.setattr("ledger.client.time.sleep", sleep)
    with server.client() as client:
        session_id = create_session(client)
    with Reporter(
        server.base_url, token("service"), session_id, backoff=0.01, transport=BusyTransport(1)
    ) as reporter:
        assert reporter.report("processed")["version"] == 1
    assert waits == [1.0]  # Retry-After, not the 0.01 s backoff

    waits.clear()
    monkeypatch.setattr("ledger.client.asyncio.sleep", async_sleep)

    async def watch() -> list[int]:
        versions = []
        async for event in follow(
            server.base_url,
            session_id,
            token("auditor"),
            last_event_id=0,
            transport=AsyncBusyTransport(2),
        ):
            versions.append(event["version"])
        return versions

    assert asyncio.run(watch()) == [1]
    assert waits[:2] == [1.0, 1.0]


def test_reporter_register_and_refusals(server: LiveServer) -> None:
    with Reporter.register(server.base_url, token("service"), "zoe") as reporter:
        assert reporter.report("queued")["version"] == 1
        again = Reporter.register(
            server.base_url, token("service"), "zoe", session_id=reporter.session_id
        )
        again.close()
    with (
        Reporter(server.base_url, token("patient", "zoe"), reporter.session_id) as bad,
        pytest.raises(LedgerClientError) as refused,
    ):
        bad.report("queued")
    assert refused.value.status_code == 403


def run_in_terminal(
    command: list[str], env: dict[str, str], on_output: Callable[[str], None]
) -> tuple[int, str]:
    """Run a command with a real pty as its terminal; return its exit code and screen text."""
    main, secondary = pty.openpty()
    process = subprocess.Popen(
        command, stdin=secondary, stdout=secondary, stderr=secondary, env=env
    )
    os.close(secondary)
    seen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
            on_output(seen.decode(errors="replace"))
        elif process.poll() is not None:
            break
    os.close(main)
    return process.wait(10), seen.decode(errors="replace")


@pytest.mark.parametrize(
    ("final", "code", "shown"),
    [
        ({"status": "processed"}, 0, "processed"),
        ({"status": "failed", "error": "gpu lost"}, 1, "gpu lost"),
    ],
)
def test_tail_in_a_terminal(
    server: LiveServer, final: dict[str, Any], code: int, shown: str
) -> None:
    with server.client() as client:
        session_id = create_session(client)
    appended = threading.Event()

    def drive(screen: str) -> None:
        if "waiting" in screen and not appended.is_set():
            appended.set()
            with server.client() as client:
                step = {"status": "transcribing", "progress": 40, "message": "12 of 30 min"}
                append(client, session_id, step)
                append(client, session_id, final)

    command = [sys.executable, "-m", "ledger", "tail", session_id, "--from-start"]
    command += ["--url", server.base_url, "--token", token("auditor")]
    env = {**os.environ, "COLUMNS": "100", "TERM": "xterm"}
    exit_code, raw = run_in_terminal(command, env, drive)
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)  # what a person sees
    assert exit_code == code, screen
    assert "v1    transcribing  12 of 30 min" in screen
    assert shown in screen
    assert "━" in screen  # the progress bar
    assert ("100%" if code == 0 else "40%") in screen


def test_demo_runs_pipelines(server: LiveServer, server_db: psycopg.Connection[Any]) -> None:
    before = server_db.execute("SELECT count(*) FROM sessions").fetchone()
    options = ["--sessions", "4", "--pace", "0", "--fail-rate", "0.5", "--seed", "7"]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledger",
            "demo",
            *options,
            "--url",
            server.base_url,
            "--token",
            token("service"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "processed" in done.stdout
    rows = server_db.execute(
        "SELECT id FROM sessions WHERE patient_id LIKE 'demo-patient-%'"
        " ORDER BY created_at DESC LIMIT 4"
    ).fetchall()
    after = server_db.execute("SELECT count(*) FROM sessions").fetchone()
    assert before is not None
    assert after is not None
    assert after[0] - before[0] == 4
    for (session_id,) in rows:
        stored = load_events(server_db, str(session_id))
        assert stored[-1].is_terminal
        assert verify_chain(stored) is None


def test_session_listing_is_scoped(server: LiveServer) -> None:
    with server.client() as client:
        mine = create_session(client, patient_id="lena")
        other = create_session(client, patient_id="omar")
        append(client, mine, {"status": "transcribing", "progress": 30})
        client.put("/api/care-assignments/dr-list/omar", headers=auth("admin"))

        def ids(role: str, sub: str) -> list[str]:
            response = client.get("/api/sessions", params={"limit": 500}, headers=auth(role, sub))
            assert response.status_code == 200
            return [s["id"] for s in response.json()["sessions"]]

        assert ids("patient", "lena") == [mine]
        assert ids("therapist", "dr-list") == [other]
        everyone = ids("auditor", "a")
        assert everyone.index(other) < everyone.index(mine)  # newest first
        listed = client.get("/api/sessions", headers=auth("patient", "lena")).json()["sessions"][0]
        assert listed["state"]["progress"] == 30
        assert client.get("/api/sessions", headers=auth("service")).status_code == 403


def test_follow_all_keeps_ten_sessions_exact_across_a_killed_server(
    server_factory: Callable[..., LiveServer], database_url: str, tmp_path: Path
) -> None:
    """One stream for a patient's ten sessions; the server is SIGKILLed and another takes
    its port: every session ends with its exact history, nothing twice."""
    first = server_factory()
    patient = "patient-of-ten"
    with first.client() as client:
        sessions = [create_session(client, patient) for _ in range(10)]
        for session_id in sessions:
            append(client, session_id, {"status": "queued"})
    received: list[dict[str, Any]] = []
    cursors: list[str] = []
    stop = threading.Event()

    async def watch() -> None:
        events = follow_all(
            first.base_url,
            token("patient", patient),
            last_event_id="0",
            on_cursor=cursors.append,
        )
        async with contextlib.aclosing(events):
            async for event in events:
                received.append(event)
                if stop.is_set() and len(received) == 30:
                    return

    watcher = threading.Thread(target=lambda: asyncio.run(watch()))
    watcher.start()
    assert wait_until(lambda: len(received) == 10)
    first.kill()
    second = LiveServer(database_url, tmp_path / "again", port=first.port).start()
    try:
        for n, session_id in enumerate(sessions):
            append_retrying(second.base_url, session_id, {"status": "transcribing"}, f"t{n}")
        stop.set()
        for n, session_id in enumerate(sessions):
            append_retrying(second.base_url, session_id, {"status": "processed"}, f"p{n}")
        watcher.join(60)
        assert not watcher.is_alive()
    finally:
        second.stop()
    for session_id in sessions:
        versions = [e["version"] for e in received if e["session_id"] == session_id]
        assert versions == table_versions(database_url, session_id) == [1, 2, 3]
    # Each event's cursor is told once the consumer is done with it: the last one was not,
    # since the consumer stopped while holding it.
    assert len(cursors) == len(received) - 1
