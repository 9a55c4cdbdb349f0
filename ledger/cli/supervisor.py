"""``ledger serve --workers N``: N single-process servers on one listening socket.

The parent binds the socket once and hands it to each worker, so the kernel spreads
connections over them; every worker is a complete ``ledger serve`` with its own single
LISTEN connection and its own graceful shutdown. The parent resolves the database first
(starting the embedded PostgreSQL if needed, and keeping it up while workers run), makes
sure the development secret exists before any worker reads it, forwards SIGTERM and
SIGINT, restarts a worker that dies unexpectedly, and aggregates Prometheus metrics across
workers through a shared multiprocess directory.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from types import FrameType

from ledger.auth import load_keys
from ledger.cli.sockets import listening_socket
from ledger.settings import Settings
from ledger.storage.database import resolve_database_url, wait_for_database
from ledger.transparency.signing_key import load_signing_key

log = logging.getLogger(__name__)

SHUTDOWN_SECONDS = 20.0
RESTART_BACKOFF_SECONDS = 1.0


class Supervisor:
    def __init__(self, settings: Settings, host: str, port: int, workers: int) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.workers = workers
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False

    def run(self) -> int:
        url = resolve_database_url(self.settings)
        wait_for_database(url, self.settings.database_wait_seconds)
        load_keys(self.settings, create=True)  # the development secret, before any worker
        if self.settings.checkpoint_seconds:  # one checkpoint key for every worker
            load_signing_key(self.settings, create=True)
        sock = listening_socket(self.host, self.port)
        metrics_dir = tempfile.mkdtemp(prefix="ledger-metrics-")
        env = {
            **os.environ,
            "LEDGER_DATABASE_URL": url,
            "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
        }
        command = [sys.executable, "-m", "ledger", "serve", "--fd", str(sock.fileno())]
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        try:
            for slot in range(self.workers):
                self._spawn(slot, command, env, sock)
            log.info("serving on %s:%s with %d workers", self.host, self.port, self.workers)
            self._watch(command, env, sock)
        finally:
            self._shutdown()
            sock.close()
            shutil.rmtree(metrics_dir, ignore_errors=True)
        print("ledger: stopped", file=sys.stderr)
        return 0

    def _spawn(
        self, slot: int, command: list[str], env: dict[str, str], sock: socket.socket
    ) -> None:
        child = subprocess.Popen(command, env=env, pass_fds=[sock.fileno()])
        self.children[slot] = child

    def _watch(self, command: list[str], env: dict[str, str], sock: socket.socket) -> None:
        from prometheus_client import multiprocess

        while not self.stopping:
            time.sleep(0.2)
            for slot, child in list(self.children.items()):
                if child.poll() is None or self.stopping:
                    continue
                # The metrics directory is the workers' (their environment's), not ours.
                multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
                    child.pid, path=env["PROMETHEUS_MULTIPROC_DIR"]
                )
                log.warning("worker %d exited with %s; restarting", child.pid, child.returncode)
                time.sleep(RESTART_BACKOFF_SECONDS)
                if not self.stopping:
                    self._spawn(slot, command, env, sock)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _shutdown(self) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN_SECONDS
        for child in self.children.values():
            try:
                child.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
