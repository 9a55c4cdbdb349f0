"""`make run`'s default: no database configured, an embedded PostgreSQL under the data dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from ledger.settings import Settings
from ledger.testing import free_port
from tests.support import LiveServer


class EmbeddedServer(LiveServer):
    def start(self, timeout: float = 60.0) -> EmbeddedServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
        env["LEDGER_DATA_DIR"] = str(self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "ledger", "migrate"], env=env, check=True, timeout=120
        )
        self.log_path = self.data_dir / "server.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ledger", "serve", "--port", str(self.port)],
            env=env,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        self.wait_ready(timeout)
        return self


def token(data_dir: Path, role: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env["LEDGER_DATA_DIR"] = str(data_dir)
    out = subprocess.run(
        [sys.executable, "-m", "ledger", "token", "--role", role, "--sub", "cli"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def test_embedded_default_serves_and_keeps_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "ledger-data"
    first = EmbeddedServer("", data_dir).start()
    try:
        assert (data_dir / "pgdata" / "PG_VERSION").exists()
        headers = {"Authorization": f"Bearer {token(data_dir, 'admin')}"}
        with httpx.Client(base_url=first.base_url, headers=headers) as client:
            session = client.post("/api/sessions", json={"patient_id": "p"}).json()
            appended = client.post(
                f"/api/sessions/{session['id']}/events", json={"status": "queued", "progress": 5}
            )
            assert appended.status_code == 201
    finally:
        assert first.terminate() == 0  # a clean exit: the embedded PostgreSQL stops too
    # The generated secret and the data survive a restart.
    second = EmbeddedServer("", data_dir, port=free_port()).start()
    try:
        headers = {"Authorization": f"Bearer {token(data_dir, 'auditor')}"}
        with httpx.Client(base_url=second.base_url, headers=headers) as client:
            status = client.get(f"/api/sessions/{session['id']}/status").json()
        assert status["version"] == 1
        assert status["progress"] == 5
    finally:
        second.stop()
    assert Settings().data_dir == Path(".ledger")
