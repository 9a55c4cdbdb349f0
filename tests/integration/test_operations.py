"""Operations: several workers, Prometheus series that move, JSON logs, bounded shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg

from ledger.cli.sockets import inherited_socket
from ledger.live.listener import LISTENER_NAME
from ledger.testing import free_port
from tests.support import (
    JWT_SECRET,
    LiveServer,
    append,
    auth,
    backends,
    create_session,
    iter_sse,
    metric,
    stream,
    take,
    wait_until,
)


def serve_two_workers(database_url: str, tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``ledger serve --workers 2`` on a free port, logging to ``workers.log``."""
    port = free_port()
    env = {
        **os.environ,
        "LEDGER_DATABASE_URL": database_url,
        "LEDGER_JWT_SECRET": JWT_SECRET,
        "LEDGER_DATA_DIR": str(tmp_path),
    }
    log = (tmp_path / "workers.log").open("wb")
    parent = subprocess.Popen(
        [sys.executable, "-m", "ledger", "serve", "--workers", "2", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return parent, port


def test_workers_share_a_port_each_with_one_listener(database_url: str, tmp_path: Path) -> None:
    parent, port = serve_two_workers(database_url, tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: backends(database_url, LISTENER_NAME) == 2, timeout=30)
        with httpx.Client(base_url=base, timeout=10) as client:
            session_id = create_session(client)
            assert all(client.get("/readyz").status_code == 200 for _ in range(10))
            # Whichever worker holds the stream, an append through any worker reaches it.
            with stream(
                LiveServer(database_url, tmp_path, port=port),
                f"/api/sessions/{session_id}/status/stream",
            ) as response:
                messages = iter_sse(response)
                next(messages)
                appended = append(client, session_id, {"status": "queued"}).json()[0]
                got = take((m for m in messages if m.data), 1)[0]
                assert json.loads(got.data or "") == appended
            text = client.get("/metrics").text
        assert "ledger_listener_up 2.0" in text  # summed over the workers
    finally:
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(30) == 0
    assert wait_until(lambda: backends(database_url, LISTENER_NAME) == 0)


def test_a_killed_worker_is_replaced_while_the_other_serves(
    database_url: str, tmp_path: Path
) -> None:
    """SIGKILL one of two workers under load: the port stays open, every request is
    answered by the survivor meanwhile, and a new worker (with its own listener) takes the
    dead one's place."""
    parent, port = serve_two_workers(database_url, tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: backends(database_url, LISTENER_NAME) == 2, timeout=30)
        workers = [
            int(pid)
            for pid in subprocess.run(
                ["pgrep", "-P", str(parent.pid)], capture_output=True, text=True, check=True
            ).stdout.split()
        ]
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        with httpx.Client(base_url=base, timeout=10) as client:
            session_id = create_session(client)
            for n in range(30):  # the survivor answers while the dead one is replaced
                append(client, session_id, {"status": "transcribing", "progress": n})
            assert parent.poll() is None, (tmp_path / "workers.log").read_text()
            assert wait_until(lambda: backends(database_url, LISTENER_NAME) == 2, timeout=30)
            assert all(client.get("/readyz").status_code == 200 for _ in range(10))
        assert "Traceback" not in (tmp_path / "workers.log").read_text()
    finally:
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(30) == 0


def series(live: LiveServer) -> Callable[..., float]:
    def read(name: str, labels: str = "") -> float:
        return metric(live, name, labels)

    return read


def test_a_worker_sees_the_inherited_socket_as_tcp() -> None:
    """What the supervisor hands down is a TCP listener, and the worker must know it: as a
    UNIX socket (uvicorn's own `fd`), accepted connections got no TCP_NODELAY and every
    answer waited ~40 ms for the client's delayed ACK."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        worker_side = inherited_socket(os.dup(listener.fileno()))
        with worker_side:
            assert worker_side.family == socket.AF_INET
            assert worker_side.type == socket.SOCK_STREAM
            assert worker_side.getsockname() == listener.getsockname()


def test_metrics_move(server_factory: Callable[..., LiveServer], database_url: str) -> None:
    live = server_factory()
    read = series(live)
    with live.client() as client:
        session_id = create_session(client)
    before = {
        "appended": read("ledger_events_appended_total"),
        "delivered": read("ledger_events_delivered_total", 'transport="sse"'),
        "catchup": read("ledger_catchup_reads_total"),
        "reconnects": read("ledger_listener_reconnects_total"),
        "notifications": read("ledger_notifications_total"),
    }
    assert before["reconnects"] >= 1
    assert read("ledger_listener_up") == 1
    with stream(live, f"/api/sessions/{session_id}/status/stream") as response:
        messages = iter_sse(response)
        next(messages)
        assert wait_until(lambda: read("ledger_subscribers", 'transport="sse"') == 1)
        with live.client() as client:
            append(client, session_id, [{"status": "queued"}, {"status": "transcribing"}])
        take((m for m in messages if m.data), 2)
    assert wait_until(lambda: read("ledger_subscribers", 'transport="sse"') == 0)
    assert read("ledger_events_appended_total") == before["appended"] + 2
    assert read("ledger_events_delivered_total", 'transport="sse"') >= before["delivered"] + 2
    assert read("ledger_catchup_reads_total") > before["catchup"]
    assert read("ledger_notifications_total") > before["notifications"]
    assert read("ledger_delivery_lag_seconds_count") >= 1
    assert read("ledger_db_statements_total") > 0
    route = 'method="POST",route="/api/sessions/{session_id}/events",status="201"'
    assert read("ledger_request_seconds_count", route) == 1
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (LISTENER_NAME,),
        )
    assert wait_until(lambda: read("ledger_listener_reconnects_total") == before["reconnects"] + 1)


def test_logs_are_json_with_request_ids(server: LiveServer) -> None:
    with server.client() as client:
        response = client.get("/api/events", headers={**auth("admin"), "X-Request-ID": "trace-42"})
        assert response.headers["x-request-id"] == "trace-42"
        bad = client.get("/api/events", headers={"X-Request-ID": "not valid!"})
        assert len(bad.headers["x-request-id"]) == 32  # replaced, not echoed
    assert wait_until(lambda: "trace-42" in server.log())
    lines: list[dict[str, Any]] = [json.loads(line) for line in server.log().splitlines() if line]
    mine = [line for line in lines if line.get("request_id") == "trace-42"]
    assert mine[0]["http"]["route"] == "/api/events"
    assert mine[0]["http"]["status"] == 200
    assert {"ts", "level", "logger", "message"} <= set(mine[0])
