"""``ledger serve`` as a child process on a real socket: for benchmarks and tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_http(
    process: subprocess.Popen[bytes],
    url: str,
    *,
    name: str,
    log: Callable[[], str],
    timeout: float,
    ready: Callable[[httpx.Response], bool] = lambda response: True,
) -> None:
    """Until ``url`` answers (as ``ready`` wants); a process that exits fails at once, with
    its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited early:\n{log()}")
        try:
            if ready(httpx.get(url, timeout=1)):
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{name} not ready in {timeout}s:\n{log()}")


@dataclass
class ServerProcess:
    """``python -m ledger serve`` in its own process, ready once ``/readyz`` says so."""

    database_url: str
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    # More `ledger serve` options, such as ("--workers", "2").
    options: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def base_env(self) -> dict[str, str]:
        """Variables every start sets (subclasses add their defaults); ``env`` wins."""
        return {"LEDGER_DATABASE_URL": self.database_url, "LEDGER_DATA_DIR": str(self.data_dir)}

    def start(self, timeout: float = 30.0) -> Self:
        env = {**os.environ, **self.base_env(), **self.env}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"server-{self.port}.log"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ledger", "serve", "--port", str(self.port), *self.options],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.process is not None
        wait_for_http(
            self.process,
            f"{self.base_url}/readyz",
            name="server",
            log=self.log,
            timeout=timeout,
            ready=lambda response: response.status_code == 200,
        )

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
