"""Audit: tampering is named exactly, the app's role cannot rewrite history, exports stream."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.readme import block
from tests.support import (
    LiveServer,
    append,
    auth,
    create_session,
    signed_size,
    wait_until,
    with_database,
)

REPO = Path(__file__).resolve().parents[2]


def readme_recipe() -> Callable[[str, dict[str, Any]], str]:
    """The README's hash recipe, exactly as printed there: no ledger code involved."""
    namespace: dict[str, Any] = {}
    exec(block("Hash chain", "python"), namespace)
    recipe: Callable[[str, dict[str, Any]], str] = namespace["event_hash"]
    return recipe


readme_event_hash = readme_recipe()


def seed(server: LiveServer, count: int = 5) -> str:
    with server.client() as client:
        session_id = create_session(client)
        body = [
            {"status": "transcribing", "progress": i * 10, "message": f"step {i}", "data": {"i": i}}
            for i in range(1, count)
        ]
        assert append(client, session_id, body).status_code == 201
        assert (
            append(client, session_id, {"status": "failed", "error": "gpu gone"}).status_code == 201
        )
    return session_id


def verify_api(server: LiveServer, session_id: str) -> dict[str, Any]:
    with server.client() as client:
        response = client.get(f"/api/sessions/{session_id}/verify", headers=auth("auditor"))
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


def verify_cli(database_url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LEDGER_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "ledger", "verify", *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def as_superuser_without_trigger(db: psycopg.Connection[Any], statement: str, *args: Any) -> None:
    with db.transaction():
        db.execute("ALTER TABLE events DISABLE TRIGGER events_append_only")
        db.execute(statement, args)
        db.execute("ALTER TABLE events ENABLE TRIGGER events_append_only")


def test_intact_chains_verify(server_factory: Callable[..., LiveServer], database_url: str) -> None:
    live = server_factory()
    session_id = seed(live)
    report = verify_api(live, session_id)
    assert report["ok"] is True
    assert report["events"] == 5
    assert report["first_bad_version"] is None
    done = verify_cli(database_url)
    assert done.returncode == 0, done.stderr
    assert "every chain intact" in done.stderr


@pytest.mark.parametrize(
    ("statement", "version", "reason"),
    [
        ("UPDATE events SET progress = 99 WHERE session_id = %s AND version = 3", 3, "content"),
        ("UPDATE events SET actor = 'mallory' WHERE session_id = %s AND version = 2", 2, "content"),
        (
            "UPDATE events SET data = '{\"i\": 7}' WHERE session_id = %s AND version = 4",
            4,
            "content",
        ),
        ("DELETE FROM events WHERE session_id = %s AND version = 2", 2, "missing"),
        ("DELETE FROM events WHERE session_id = %s AND version = 1", 1, "missing"),
    ],
)
def test_tampering_is_named_exactly(
    server_factory: Callable[..., LiveServer],
    database_url: str,
    db: psycopg.Connection[Any],
    statement: str,
    version: int,
    reason: str,
) -> None:
    live = server_factory()
    session_id = seed(live)
    untouched = seed(live)
    as_superuser_without_trigger(db, statement, session_id)

    report = verify_api(live, session_id)
    assert report["ok"] is False
    assert report["first_bad_version"] == version
    assert reason in report["reason"]
    assert verify_api(live, untouched)["ok"] is True

    done = verify_cli(database_url)
    assert done.returncode == 1
    assert f"session {session_id}: version {version}" in done.stderr
    assert untouched not in done.stderr
    only_other = verify_cli(database_url, "--session", untouched)
    assert only_other.returncode == 0


def test_verify_needs_an_auditor(server: LiveServer) -> None:
    with server.client() as client:
        session_id = create_session(client, patient_id="kim")
        url = f"/api/sessions/{session_id}/verify"
        assert client.get(url, headers=auth("patient", "kim")).status_code == 403
        assert client.get(url, headers=auth("admin")).json()["events"] == 0
        assert (
            client.get(f"/api/sessions/{uuid.uuid4()}/verify", headers=auth("admin")).status_code
            == 404
        )


def apply_grants(db: psycopg.Connection[Any], role: str) -> None:
    script = (REPO / "deploy" / "app-role.sql").read_text()
    lines = [line for line in script.splitlines() if not line.startswith("--")]
    for statement in "\n".join(lines).split(";"):
        if statement.strip():
            db.execute(statement.replace(':"app"', sql.Identifier(role).as_string(db)))


def test_the_app_role_cannot_rewrite_history(
    database_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    role = f"ledger_app_{uuid.uuid4().hex[:8]}"
    db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        apply_grants(db, role)
        app_url = with_database(database_url, db.info.dbname).replace("postgres:@", f"{role}:@", 1)
        app_url = app_url.replace("postgres@", f"{role}@", 1)
        live = LiveServer(
            app_url, tmp_path / "app-role", env={"LEDGER_CHECKPOINT_SECONDS": "0.2"}
        ).start()
        try:
            session_id = seed(live)  # the app works with exactly these grants
            assert verify_api(live, session_id)["ok"] is True
            # ... and grows the tree and signs its head with them
            assert wait_until(lambda: signed_size(live) == 5)
        finally:
            live.stop()
        with psycopg.connect(app_url, autocommit=True) as app:
            assert app.info.parameter_status("session_authorization") == role
            for attack in (
                "ALTER TABLE events DISABLE TRIGGER events_append_only",
                "DROP TRIGGER events_append_only ON events",
                "ALTER TABLE events DISABLE TRIGGER ALL",
                "UPDATE events SET progress = 1",
                "DELETE FROM events",
                "TRUNCATE events",
                "DROP TABLE events",
                "CREATE TABLE shadow (id int)",
                "UPDATE merkle_nodes SET hash = sha256('x')",
                "DELETE FROM merkle_batches",
                "TRUNCATE checkpoints",
                "ALTER TABLE checkpoints DISABLE TRIGGER checkpoints_append_only",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    app.execute(attack)
    finally:
        db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_exports_carry_everything_an_auditor_needs(server: LiveServer) -> None:
    session_id = seed(server, count=8)
    with server.client() as client:
        headers = auth("auditor")
        ndjson = client.get(
            f"/api/sessions/{session_id}/events", params={"format": "ndjson"}, headers=headers
        )
        assert ndjson.headers["content-type"] == "application/x-ndjson"
        records = [json.loads(line) for line in ndjson.text.splitlines()]
        as_csv = client.get(
            f"/api/sessions/{session_id}/events", params={"format": "csv"}, headers=headers
        )
        assert as_csv.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(as_csv.text)))
        page = client.get(f"/api/sessions/{session_id}/events", headers=headers).json()["events"]
        everything = client.get(
            "/api/events",
            params={"format": "ndjson", "from": "2000-01-01T00:00:00Z"},
            headers=headers,
        )
        assert everything.status_code == 200
    assert [r["version"] for r in records] == list(range(1, 9))
    assert [{k: v for k, v in r.items() if k not in ("prev_hash", "hash")} for r in records] == page
    prev = "0" * 64
    for record in records:  # recomputed with the README's ten lines
        assert record["prev_hash"] == prev
        assert readme_event_hash(prev, record) == record["hash"]
        prev = record["hash"]
    assert [int(r["version"]) for r in rows] == list(range(1, 9))
    assert [r["hash"] for r in rows] == [r["hash"] for r in records]
    assert json.loads(rows[2]["data"]) == records[2]["data"]
    exported_ids = {json.loads(line)["session_id"] for line in everything.text.splitlines()}
    assert session_id in exported_ids


def test_ledger_export_cli(server: LiveServer, module_database_url: str, tmp_path: Path) -> None:
    session_id = seed(server, count=6)
    out = tmp_path / "export.csv"
    env = {**os.environ, "LEDGER_DATABASE_URL": module_database_url}
    command = ["export", "--session", session_id, "--format", "csv", "-o", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "ledger", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(out.open()))
    assert [int(r["version"]) for r in rows] == list(range(1, 7))
    assert rows[-1]["status"] == "failed"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def read_chunked(sock: socket.socket) -> tuple[bytes, int]:
    """Read an HTTP/1.1 chunked body; return it and how many chunks it came in."""
    stream = sock.makefile("rb")
    while stream.readline() not in (b"\r\n", b""):
        pass  # headers
    body, chunks = bytearray(), 0
    while True:
        size = int(stream.readline().split(b";")[0], 16)
        if size == 0:
            return bytes(body), chunks
        body += stream.read(size)
        stream.read(2)
        chunks += 1


def test_export_streams_in_constant_memory(server_factory: Callable[..., LiveServer]) -> None:
    live = server_factory(LEDGER_MAX_BODY_BYTES=str(1 << 20))
    assert live.process is not None
    total = 30_000
    with live.client() as client:
        session_id = create_session(client)
        filler = "x" * 200
        for _ in range(total // 1000):
            batch = [{"status": "transcribing", "progress": 1, "message": filler}] * 1000
            assert append(client, session_id, batch).status_code == 201
    path = f"/api/sessions/{session_id}/events?format=ndjson"
    before = rss_kib(live.process.pid)
    with socket.create_connection(("127.0.0.1", live.port)) as sock:
        headers = "".join(f"{k}: {v}\r\n" for k, v in auth("auditor").items())
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode()
        )
        body, chunks = read_chunked(sock)
    after = rss_kib(live.process.pid)
    lines = body.splitlines()
    assert len(lines) == total
    assert json.loads(lines[-1])["version"] == total
    # Written as it was read, a database batch at a time, not assembled first...
    assert chunks >= total // 1000
    # ...so the server grew by a small fraction of what it sent.
    exported_kib = len(body) // 1024
    assert after - before < exported_kib / 4, (before, after, exported_kib)
