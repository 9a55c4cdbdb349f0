"""Faults with real parts: a killed listener, a PostgreSQL restart, a killed server process."""

from __future__ import annotations

import json
import os
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from ledger.live.listener import LISTENER_NAME
from ledger.storage.migrations import upgrade
from ledger.storage.pool import still_open
from tests.support import (
    Follower,
    LiveServer,
    append,
    append_retrying,
    auth,
    backends,
    create_session,
    event_messages,
    iter_sse,
    metric,
    stream,
    table_versions,
    take,
    wait_until,
    with_database,
)


def progress(n: int) -> dict[str, Any]:
    return {"status": "transcribing", "progress": n}


def assert_exactly_the_table(follower: Follower, database_url: str, session_id: str) -> None:
    received = [e["version"] for e in follower.result()]
    assert received == table_versions(database_url, session_id)
    assert received == list(range(1, len(received) + 1))


def test_listener_terminated_mid_stream(
    server_factory: Callable[..., LiveServer], database_url: str
) -> None:
    live = server_factory()
    with live.client() as client:
        session_id = create_session(client)
        append(client, session_id, progress(1))
    follower = Follower([live.base_url], session_id)
    follower.start()
    assert wait_until(lambda: len(follower.events) == 1)
    with psycopg.connect(database_url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s"
            " AND datname = current_database()",
            (LISTENER_NAME,),
        ).fetchall()
    assert killed == [(True,)]
    # Appended while the listener is gone or reconnecting: their notifications are lost.
    for n in range(2, 7):
        append_retrying(live.base_url, session_id, progress(n), key=f"p{n}")
    append_retrying(live.base_url, session_id, {"status": "processed"}, key="done")
    assert_exactly_the_table(follower, database_url, session_id)
    assert follower.connections == 1  # the stream itself survived the listener's death
    assert metric(live, "ledger_listener_reconnects_total") >= 2


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[tuple[Any, str]]:
    """A PostgreSQL of this test's own, so the test may restart it."""
    import pgserver

    server = pgserver.get_server(tmp_path / "pgdata", cleanup_mode="stop")
    with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:
        conn.execute("CREATE DATABASE ledger")
    url = with_database(server.get_uri("postgres"), "ledger")
    upgrade(url)
    yield server, url
    server.cleanup()
    # pgserver stops the postmaster it started; one restarted by the test is another
    # process: stop whatever runs on this data directory, by its pid file.
    pid_file = tmp_path / "pgdata" / "postmaster.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
        deadline = time.monotonic() + 30
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    assert not pid_file.exists(), "the private PostgreSQL is still running"


def test_postgres_restart_mid_stream(private_postgres: tuple[Any, str], tmp_path: Path) -> None:
    import pgserver

    server, url = private_postgres
    live = LiveServer(url, tmp_path / "server").start()
    try:
        with live.client() as client:
            session_id = create_session(client)
            append(client, session_id, [progress(1), progress(2)])
        follower = Follower([live.base_url], session_id)
        follower.start()
        assert wait_until(lambda: len(follower.events) == 2)

        pgserver.pg_ctl(
            ["-w", "-m", "fast", "restart"], pgdata=server.pgdata, user=server.system_user
        )

        for n in range(3, 8):
            append_retrying(live.base_url, session_id, progress(n), key=f"p{n}")
        append_retrying(live.base_url, session_id, {"status": "processed"}, key="done")
        assert_exactly_the_table(follower, url, session_id)
        assert wait_until(lambda: metric(live, "ledger_listener_reconnects_total") >= 2)
        assert wait_until(lambda: metric(live, "ledger_listener_up") == 1)
    finally:
        live.stop()


def test_an_unreachable_database_is_a_prompt_503_and_nothing_is_lost(
    private_postgres: tuple[Any, str], tmp_path: Path
) -> None:
    """PostgreSQL stopped under a running server: an append answers 503 with Retry-After
    within the pool's wait (not after minutes), readiness says so, a follower's stream stays
    open on heartbeats, and once PostgreSQL is back the idempotent retry stores it once and
    the follower has every event."""
    import pgserver

    server, url = private_postgres
    live = LiveServer(url, tmp_path / "server", env={"LEDGER_POOL_TIMEOUT_SECONDS": "2"}).start()
    try:
        with live.client() as client:
            session_id = create_session(client)
            append(client, session_id, [progress(1)])
        follower = Follower([live.base_url], session_id)
        follower.start()
        assert wait_until(lambda: len(follower.events) == 1)
        pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        with httpx.Client(base_url=live.base_url, timeout=15) as client:
            response = append(client, session_id, progress(2), {"Idempotency-Key": "p2"})
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"] == "1"
            assert client.get("/readyz").status_code == 503
        # restart on a stopped server starts it with the options it last ran with
        pgserver.pg_ctl(["-w", "restart"], pgdata=server.pgdata, user=server.system_user)
        append_retrying(live.base_url, session_id, progress(2), key="p2")
        append_retrying(live.base_url, session_id, {"status": "processed"}, key="done")
        assert_exactly_the_table(follower, url, session_id)
        assert follower.connections == 1  # the stream stayed open through the outage
    finally:
        live.stop()


def test_server_killed_client_resumes_on_another(
    server_factory: Callable[..., LiveServer], database_url: str
) -> None:
    first, second = server_factory(), server_factory()
    with first.client() as client:
        session_id = create_session(client)
        append(client, session_id, [progress(1), progress(2), progress(3)])
    follower = Follower([first.base_url, second.base_url], session_id)
    follower.start()
    assert wait_until(lambda: len(follower.events) == 3)
    append_retrying(second.base_url, session_id, progress(4), key="p4")  # B -> subscriber on A
    assert wait_until(lambda: len(follower.events) == 4)
    first.kill()
    for n in range(5, 9):
        append_retrying(second.base_url, session_id, progress(n), key=f"p{n}")
    append_retrying(second.base_url, session_id, {"status": "failed", "error": "x"}, key="end")
    assert_exactly_the_table(follower, database_url, session_id)
    assert follower.connections >= 2


def test_event_appended_on_one_process_reaches_another(
    server_factory: Callable[..., LiveServer],
) -> None:
    writer, reader = server_factory(), server_factory()
    with writer.client() as client:
        session_id = create_session(client)
        with stream(reader, f"/api/sessions/{session_id}/status/stream") as response:
            messages = iter_sse(response)
            next(messages)  # the retry hint: subscribed
            appended = append(client, session_id, progress(9)).json()[0]
            got = take(event_messages(messages), 1)[0]
    assert json.loads(got.data or "") == appended


def test_sigterm_closes_streams_cleanly(server_factory: Callable[..., LiveServer]) -> None:
    live = server_factory()
    with live.client() as client:
        session_id = create_session(client)
    with stream(live, f"/api/sessions/{session_id}/status/stream") as response:
        messages = iter_sse(response)
        next(messages)
        assert live.terminate() == 0
        # The response ends properly (a broken chunked stream would raise here).
        remaining = list(messages)
    assert all(m.data is None for m in remaining)


def test_pooled_connections_killed_under_the_server(
    server_factory: Callable[..., LiveServer], database_url: str
) -> None:
    """Connections the database dropped (a restart, an operator's pg_terminate_backend) are
    noticed when taken from the pool and replaced: the next requests succeed, not 503."""
    live = server_factory(LEDGER_POOL_SIZE="4")
    with live.client() as client:
        session_id = create_session(client)
        for n in range(1, 9):  # warm every pooled connection
            assert append(client, session_id, progress(n)).status_code == 201
        with psycopg.connect(database_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND application_name <> %s",
                (LISTENER_NAME,),
            ).fetchone()
        assert killed is not None
        assert killed[0] >= 4
        assert wait_until(lambda: backends(database_url) == 1)  # the listener alone
        for n in range(9, 13):
            response = append(client, session_id, progress(n))
            assert response.status_code == 201, response.text
        status = client.get(f"/api/sessions/{session_id}/status", headers=auth("admin"))
        assert status.status_code == 200, status.text
        assert status.json()["version"] == 12
    assert table_versions(database_url, session_id) == list(range(1, 13))


async def test_the_pool_check_works_past_descriptor_1024(database_url: str) -> None:
    """A server holding thousands of streams gives its pooled connections descriptors past
    1024, where select() refuses to look: the check on checkout must still work (with
    select, every checkout failed, and the pool churned through new connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    filler = [os.dup(0) for _ in range(1100)]
    try:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            assert conn.fileno() > 1024
            await still_open(conn)  # idle and healthy: no error, no round trip needed
            assert not conn.closed
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_failover_to_a_synchronous_standby_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """Design section 12. Idempotent appenders and resuming followers on four sessions; the
    primary is killed mid-load and the synchronous standby promoted. Afterwards every
    acknowledged append is on the new primary, none is stored twice, every follower's view
    equals the table, and the listener follows the new primary."""
    from tests.replica import ReplicatedPostgres

    databases = ReplicatedPostgres().start()
    try:
        upgrade(databases.url(databases.primary_port))
        live = LiveServer(
            databases.failover_url,
            tmp_path / "server",
            env={"LEDGER_POOL_TIMEOUT_SECONDS": "2"},
        ).start()
        try:
            with live.client() as client:
                sessions = [create_session(client, f"failover-{i}") for i in range(4)]
            followers = [Follower([live.base_url], s, deadline=120) for s in sessions]
            for follower in followers:
                follower.start()
            acknowledged: dict[str, list[Any]] = {}
            lock = threading.Lock()
            halfway = threading.Barrier(len(sessions) + 1)

            def appender(session_id: str) -> None:
                for n in range(1, 41):
                    key = f"{session_id}-{n}"
                    stored = append_retrying(live.base_url, session_id, progress(n), key, 600)
                    with lock:
                        acknowledged[key] = stored
                    if n == 15:
                        halfway.wait(60)
                stored = append_retrying(
                    live.base_url, session_id, {"status": "processed"}, f"{session_id}-end", 600
                )
                with lock:
                    acknowledged[f"{session_id}-end"] = stored

            writers = [threading.Thread(target=appender, args=(s,)) for s in sessions]
            for writer in writers:
                writer.start()
            halfway.wait(60)
            databases.crash_primary()  # mid-load: appends are in flight
            time.sleep(0.5)
            databases.promote_standby()
            for writer in writers:
                writer.join(180)
            new_primary = databases.url(databases.standby_port)
            assert len(acknowledged) == len(sessions) * 41
            with psycopg.connect(new_primary) as db:
                for key, stored in acknowledged.items():
                    session_id = key.rsplit("-", 1)[0]
                    rows = db.execute(
                        "SELECT version, position FROM events"
                        " WHERE session_id = %s AND idempotency_key = %s",
                        (session_id, key),
                    ).fetchall()
                    # Stored exactly once, as acknowledged (a replayed answer is the same).
                    assert [(e["version"], e["position"]) for e in stored] == rows, key
            for follower, session_id in zip(followers, sessions, strict=True):
                assert_exactly_the_table(follower, new_primary, session_id)
                assert len(follower.result()) == 41
            assert wait_until(lambda: metric(live, "ledger_listener_reconnects_total") >= 2)
            assert wait_until(lambda: live.client().get("/readyz").status_code == 200)
        finally:
            live.stop()
    finally:
        databases.stop()
