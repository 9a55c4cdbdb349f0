"""Two backends behind a real nginx (deploy/nginx.conf): streaming, failover, rolling restart,
and the file's commented TLS + HTTP/2 lines, uncommented and served with a throwaway CA."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import re
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
    token,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

pytestmark = pytest.mark.skipif(
    not Path(NGINX).exists(), reason="nginx is not installed (.ci/run installs it)"
)


@dataclass(frozen=True)
class Certificate:
    """PEM files: a throwaway CA (what clients trust) and the chain and key nginx serves."""

    authority: Path
    chain: Path
    key: Path

    def client_context(self, *alpn: str) -> ssl.SSLContext:
        """A verifying client context that trusts only the throwaway CA."""
        context = ssl.create_default_context(cafile=self.authority)
        if alpn:
            context.set_alpn_protocols(list(alpn))
        return context


def throwaway_certificate(directory: Path) -> Certificate:
    """A CA made for one test and a certificate it signs for 127.0.0.1 and localhost.

    A CA rather than one self-signed certificate: the client verifies a real chain, with
    the extensions strict verification asks for.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def usage(*, signs: bool) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=not signs,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=signs,
            crl_sign=signs,
            encipher_only=False,
            decipher_only=False,
        )

    def builder(
        subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
    ) -> x509.CertificateBuilder:
        now = datetime.now(UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )

    directory.mkdir(parents=True, exist_ok=True)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        builder(name("ledger throwaway CA"), name("ledger throwaway CA"), ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage(signs=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        builder(name("localhost"), ca.subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(signs=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    certificate = Certificate(
        directory / "ca.pem", directory / "fullchain.pem", directory / "privkey.pem"
    )
    certificate.authority.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    certificate.chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    certificate.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certificate


def replaced(text: str, old: str, new: str) -> str:
    """``str.replace`` that fails when the shipped file no longer has what a test rewrites."""
    assert old in text, f"deploy/nginx.conf has no {old!r}"
    return text.replace(old, new)


def with_tls(site: str, port: int, certificate: Certificate) -> str:
    """The shipped TLS lines uncommented, as an operator would, on a loopback port and the
    throwaway certificate: the tests serve exactly what the file ships."""
    head, start, rest = site.partition("# ---- TLS + HTTP/2: uncomment from here ----")
    block, end, tail = rest.partition("# ---- to here ----")
    assert end, "deploy/nginx.conf lost the rulers around its TLS lines"
    block = re.sub(r"(?m)^(\s*)# ", r"\1", block)
    block = replaced(block, "listen 443 ", f"listen 127.0.0.1:{port} ")
    block = replaced(block, "/etc/ssl/ledger/fullchain.pem", str(certificate.chain))
    block = replaced(block, "/etc/ssl/ledger/privkey.pem", str(certificate.key))
    return head + start + block + end + tail


class Nginx:
    """nginx in the foreground on a loopback port, with the shipped configuration (and, given
    a certificate, its TLS + HTTP/2 lines on a second port)."""

    def __init__(
        self, directory: Path, backends: list[int], certificate: Certificate | None = None
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.tls_port = free_port()
        self.certificate = certificate
        self.backend_logs: list[Path] = []
        shipped = (REPO / "deploy" / "nginx.conf").read_text()
        site = (
            shipped.replace("127.0.0.1:8001", f"127.0.0.1:{backends[0]}")
            .replace("127.0.0.1:8002", f"127.0.0.1:{backends[1]}")
            .replace("listen 8080;", f"listen 127.0.0.1:{self.port};")
            .replace("/var/log/nginx/ledger.access.log", str(directory / "access.log"))
        )
        if certificate is not None:
            site = with_tls(site, self.tls_port, certificate)
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

    @property
    def tls_url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    def _up(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)

    def logs(self, lines: int = 40) -> str:
        """The ends of nginx's error and access logs and of its backends' (for a failure)."""
        paths = [self.directory / "error.log", self.directory / "access.log", *self.backend_logs]
        return "\n".join(
            f"--- {path.name}:\n"
            + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            for path in paths
            if path.exists()
        )


@contextmanager
def proxying(
    directory: Path, backends: list[LiveServer], certificate: Certificate | None = None
) -> Iterator[Nginx]:
    """nginx in front of ``backends`` while the block runs; no token reaches its log."""
    proxy = Nginx(directory, [b.port for b in backends], certificate)
    proxy.backend_logs = [b.log_path for b in backends if b.log_path is not None]
    try:
        yield proxy
    finally:
        proxy.stop()
    assert "access_token" not in (directory / "access.log").read_text()


@pytest.fixture
def cluster(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> Iterator[tuple[Nginx, list[LiveServer]]]:
    backends = [server_factory(), server_factory()]
    with proxying(tmp_path, backends) as proxy:
        yield proxy, backends


@pytest.fixture(scope="module")
def tls_proxy(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Nginx]:
    """The TLS lines enabled, in front of two backends: one for the module, since its tests
    only read and append (no backend is stopped)."""
    directory = tmp_path_factory.mktemp("tls-proxy")
    with ExitStack() as stack:
        backends = []
        for _ in range(2):
            backend = LiveServer(module_database_url, tmp_path_factory.mktemp("backend"))
            stack.callback(backend.stop)
            backends.append(backend.start())
        certificate = throwaway_certificate(directory / "tls")
        yield stack.enter_context(proxying(directory, backends, certificate))


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


WEBSOCKETS = ["/api/sessions/{session_id}/status/ws", "/api/events/ws"]


def websocket_delivers(proxy: Nginx, path: str, *, tls: bool = False) -> None:
    """Upgrade through nginx, then receive an event appended after the upgrade.

    Over TLS the client offers only HTTP/1.1 in ALPN, as a browser does for wss:// when the
    server offers no WebSocket over HTTP/2 (nginx does not).
    """
    from websockets.sync.client import connect

    with httpx.Client(base_url=proxy.base_url, timeout=10) as client:
        session_id = create_session(client)
        query = httpx.QueryParams({"access_token": token("admin")})
        target = path.format(session_id=session_id)
        url, context = f"ws://127.0.0.1:{proxy.port}{target}?{query}", None
        if tls:
            assert proxy.certificate is not None
            url = f"wss://127.0.0.1:{proxy.tls_port}{target}?{query}"
            context = proxy.certificate.client_context("http/1.1")
        try:
            ws = connect(url, ssl=context)
        except TimeoutError as exc:  # the logs say which side held the handshake
            raise AssertionError(f"no handshake answer through nginx\n{proxy.logs()}") from exc
        with ws:
            appended = append(client, session_id, {"status": "processed"}).json()[0]
            received = (json.loads(ws.recv(timeout=5)) for _ in range(50))
            # The all-sessions route replays the module's other sessions first.
            event = next(m for m in received if m.get("data", {}).get("session_id") == session_id)
        assert event["event"] == "complete"
        assert event["data"] == appended


@pytest.mark.parametrize("path", WEBSOCKETS)
def test_websocket_through_the_proxy(cluster: tuple[Nginx, list[LiveServer]], path: str) -> None:
    """Both WebSocket routes upgrade (the all-sessions one used to fall into ``location /``)."""
    websocket_delivers(cluster[0], path)


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


def test_tls_http2_carries_ten_streams_on_one_connection(tls_proxy: Nginx) -> None:
    """Ten session streams open at once on one TLS connection, each receiving its event live.

    The pool may open no second connection: over HTTP/1.1 the second stream would wait for
    the first to end (a browser stops at six); HTTP/2, chosen by ALPN, multiplexes them.
    """
    assert tls_proxy.certificate is not None
    with (
        httpx.Client(
            base_url=tls_proxy.tls_url,
            http2=True,
            verify=tls_proxy.certificate.client_context(),
            limits=httpx.Limits(max_connections=1),
            timeout=httpx.Timeout(5, read=5),
        ) as client,
        ExitStack() as streams,
    ):
        sessions = [create_session(client) for _ in range(10)]
        responses = [
            streams.enter_context(
                client.stream(
                    "GET",
                    f"/api/sessions/{session_id}/status/stream",
                    params={"access_token": token("admin")},  # as EventSource sends it
                )
            )
            for session_id in sessions
        ]
        assert [(r.status_code, r.http_version) for r in responses] == [(200, "HTTP/2")] * 10
        connection = responses[0].extensions["network_stream"]
        assert all(r.extensions["network_stream"] is connection for r in responses)
        assert connection.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        followed = [iter_sse(r) for r in responses]
        for messages in followed:
            assert next(messages).retry is not None  # each stream's first bytes, not held
        for n, (session_id, messages) in enumerate(zip(sessions, followed, strict=True)):
            appended = append(client, session_id, {"status": "transcribing", "progress": n})
            event = next(m for m in messages if m.data is not None)
            assert json.loads(event.data or "") == appended.json()[0]


@pytest.mark.parametrize("path", WEBSOCKETS)
def test_websocket_over_tls(tls_proxy: Nginx, path: str) -> None:
    """wss:// upgrades on the TLS port over HTTP/1.1 and delivers."""
    websocket_delivers(tls_proxy, path, tls=True)
