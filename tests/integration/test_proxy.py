"""Two backends behind a real nginx (deploy/nginx.conf): streaming, failover, rolling restart."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from ledger.testing import free_port
from tests.support import (
    Follower,
    LiveServer,
    append,
    append_retrying,
    auth,
    create_session,
    iter_sse,
    metric,
    table_versions,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

pytestmark = pytest.mark.skipif(
    not Path(NGINX).exists(), reason="nginx is not installed (.ci/run installs it)"
)


class Nginx:
    """nginx in the foreground on a loopback port, with the shipped configuration."""

    def __init__(self, directory: Path, backends: list[int]) -> None:
        self.directory = directory
        self.port = free_port()
        shipped = (REPO / "deploy" / "nginx.conf").read_text()
        site = (
            shipped.replace("127.0.0.1:8001", f"127.0.0.1:{backends[0]}")
            .replace("127.0.0.1:8002", f"127.0.0.1:{backends[1]}")
            .replace("listen 8080;", f"listen 127.0.0.1:{self.port};")
            .replace("/var/log/nginx/ledger.access.log", str(directory / "access.log"))
        )
        (directory / "ledger.conf").write_text(site)
        temp = {name: directory / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
        for path in temp.values():
            path.mkdir(exist_ok=True)
        (directory / "nginx.conf").write_text(
            f"""
            daemon off;
            user root;
            worker_processes 1;
            pid {directory / "nginx.pid"};
            error_log {directory / "error.log"} info;
            events {{ worker_connections 4096; }}
            http {{
                client_body_temp_path {temp["body"]};
                proxy_temp_path {temp["proxy"]};
                fastcgi_temp_path {temp["fastcgi"]};
                uwsgi_temp_path {temp["uwsgi"]};
                scgi_temp_path {temp["scgi"]};
                include {directory / "ledger.conf"};
            }}
            """
        )
        self.process = subprocess.Popen(
            [NGINX, "-c", str(directory / "nginx.conf"), "-p", str(directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert wait_until(self._up), (directory / "error.log").read_text()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _up(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def cluster(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> Iterator[tuple[Nginx, list[LiveServer]]]:
    backends = [server_factory(), server_factory()]
    proxy = Nginx(tmp_path, [b.port for b in backends])
    yield proxy, backends
    proxy.stop()
    assert "access_token" not in (tmp_path / "access.log").read_text()


def test_streams_through_the_proxy_are_not_buffered(
    cluster: tuple[Nginx, list[LiveServer]],
) -> None:
    proxy, _ = cluster
    with httpx.Client(base_url=proxy.base_url, timeout=httpx.Timeout(5, read=5)) as client:
        session_id = create_session(client)
        url = f"/api/sessions/{session_id}/status/stream"
        with client.stream(
            "GET", url, params={"access_token": auth("admin")["Authorization"][7:]}
        ) as response:
            assert response.status_code == 200
            messages = iter_sse(response)
            assert next(messages).retry is not None  # a few bytes, not held in a buffer
            assert next(messages).comments == ["heartbeat"]  # LEDGER_HEARTBEAT_SECONDS=1
            appended = append(client, session_id, {"status": "queued", "progress": 3}).json()[0]
            event = next(m for m in messages if m.data is not None)
            assert json.loads(event.data or "") == appended
        # The request id given by nginx reaches the app and comes back.
        assert len(client.get("/healthz").headers["x-request-id"]) == 32


def test_the_proxy_refuses_oversized_heads_itself(
    cluster: tuple[Nginx, list[LiveServer]],
) -> None:
    """deploy/nginx.conf's own limits: a header line over 16 KiB never reaches a backend."""
    proxy, _ = cluster
    with httpx.Client(base_url=proxy.base_url, timeout=5) as client:
        # The app itself would serve it (its limit is 128 KiB): a 400 is nginx's refusal.
        refused = client.get("/healthz", headers={"X-Big": "a" * 20_000})
        assert refused.status_code == 400
        # nginx's default (8 KiB buffers) would refuse this one: the shipped 16 KiB serve it.
        assert client.get("/healthz", headers={"X-Big": "a" * 12_000}).status_code == 200


def test_websocket_through_the_proxy(cluster: tuple[Nginx, list[LiveServer]]) -> None:
    from websockets.sync.client import connect

    proxy, _ = cluster
    with httpx.Client(base_url=proxy.base_url) as client:
        session_id = create_session(client)
        append(client, session_id, {"status": "processed"})
    token = auth("admin")["Authorization"][7:]
    url = f"ws://127.0.0.1:{proxy.port}/api/sessions/{session_id}/status/ws?access_token={token}"
    with connect(url) as ws:
        assert json.loads(ws.recv(timeout=5))["event"] == "complete"


def serving(backends: list[LiveServer]) -> LiveServer:
    """The backend that holds the (one) open stream."""
    for backend in backends:
        if metric(backend, "ledger_subscribers", 'transport="sse"') == 1:
            return backend
    raise AssertionError("no backend holds the stream")


def test_sigkill_a_backend_the_client_resumes_through_the_proxy(
    cluster: tuple[Nginx, list[LiveServer]], database_url: str
) -> None:
    proxy, backends = cluster
    with httpx.Client(base_url=proxy.base_url) as client:
        session_id = create_session(client)
        append(client, session_id, [{"status": "queued"}, {"status": "transcribing"}])
    follower = Follower([proxy.base_url], session_id)
    follower.start()
    assert wait_until(lambda: len(follower.events) == 2)
    victim = serving(backends)
    victim.kill()
    for n in range(3, 9):
        append_retrying(
            proxy.base_url, session_id, {"status": "transcribing", "progress": n}, f"k{n}"
        )
    append_retrying(proxy.base_url, session_id, {"status": "processed"}, "done")
    received = [e["version"] for e in follower.result()]
    assert received == table_versions(database_url, session_id) == list(range(1, 10))
    assert follower.connections >= 2


async def follow_async(base_url: str, session_id: str, deadline: float) -> list[int]:
    """An EventSource-like follower: reconnects with Last-Event-ID until the terminal event."""
    versions: list[int] = []
    last = "0"
    path = f"/api/sessions/{session_id}/status/stream"
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10, read=20)) as client:
        while time.monotonic() < deadline:
            try:
                headers = {**auth("auditor", "follower"), "Last-Event-ID": last}
                async with client.stream("GET", path, headers=headers) as response:
                    if response.status_code == 204:
                        return versions
                    if response.status_code == 200:
                        event = None
                        async for line in response.aiter_lines():
                            if line.startswith("event: "):
                                event = line[7:]
                            elif line.startswith("id: "):
                                last = line[4:]
                                versions.append(int(last))
                                if event in ("complete", "error"):
                                    return versions
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05 + random.random() * 0.1)
    raise TimeoutError(f"{session_id}: no terminal event, last id {last}")


def test_rolling_restart_under_load(
    cluster: tuple[Nginx, list[LiveServer]], database_url: str
) -> None:
    proxy, backends = cluster
    sessions_count, followers_per_session = 20, 10
    with httpx.Client(base_url=proxy.base_url) as client:
        sessions = [create_session(client) for _ in range(sessions_count)]
    acknowledged: list[str] = []
    stop = threading.Event()

    def load() -> None:
        n = 0
        while not stop.is_set():
            key = f"load-{n}"
            body = {"status": "transcribing", "progress": n % 100}
            append_retrying(proxy.base_url, sessions[n % sessions_count], body, key)
            acknowledged.append(key)
            n += 1
            time.sleep(0.01)

    async def everyone() -> list[list[int]]:
        deadline = time.monotonic() + 180
        tasks = [
            follow_async(proxy.base_url, sid, deadline)
            for sid in sessions
            for _ in range(followers_per_session)
        ]
        return await asyncio.gather(*tasks)

    results: list[list[list[int]]] = []
    follower_thread = threading.Thread(target=lambda: results.append(asyncio.run(everyone())))
    follower_thread.start()
    writer = threading.Thread(target=load)
    writer.start()
    try:
        time.sleep(1)
        for index, old in enumerate(backends):
            assert old.terminate() == 0  # SIGTERM: streams close cleanly, clients move over
            backends[index] = LiveServer(old.database_url, old.data_dir, port=old.port).start()
            time.sleep(1)
    finally:
        stop.set()
        writer.join()
    for sid in sessions:
        append_retrying(proxy.base_url, sid, {"status": "processed"}, f"end-{sid}")
    follower_thread.join(200)
    assert results, "followers did not finish"
    for backend in backends:
        backend.stop()

    for index, sid in enumerate(sessions):
        table = table_versions(database_url, sid)
        assert table == list(range(1, len(table) + 1))
        for seen in results[0][index * followers_per_session : (index + 1) * followers_per_session]:
            assert seen == table  # every event once, in order, for every client
    with psycopg.connect(database_url) as conn:
        stored = {
            row[0]
            for row in conn.execute(
                "SELECT idempotency_key FROM events WHERE idempotency_key LIKE 'load-%'"
            )
        }
    assert set(acknowledged) <= stored  # no acknowledged append was lost
    assert len(acknowledged) > 50
