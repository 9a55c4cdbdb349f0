"""Two real PostgreSQL servers of the test's own: a primary and a synchronous standby.

Built as an operator would (design section 12): ``initdb``; streaming replication with
``synchronous_standby_names`` and ``synchronous_commit = on``; the standby made by
``pg_basebackup -R``. The binaries are the ones the pgserver wheel ships; as root they run
as pgserver's system user, since PostgreSQL refuses to run as root. Stopped by process id.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from pgserver._commands import POSTGRES_BIN_PATH
from pgserver.utils import ensure_user_exists

from ledger.testing import free_port

SYSTEM_USER = "pgserver" if os.geteuid() == 0 else None


def run(*command: str) -> None:
    subprocess.run(
        [str(POSTGRES_BIN_PATH / command[0]), *command[1:]],
        check=True,
        capture_output=True,
        user=SYSTEM_USER,
        timeout=120,
    )


class ReplicatedPostgres:
    def __init__(self) -> None:
        # Not under pytest's root-only tmp_path: the servers run as pgserver's user.
        self.directory = Path(tempfile.mkdtemp(prefix="ledger-replica-"))
        self.primary = self.directory / "primary"
        self.standby = self.directory / "standby"
        self.sockets = self.directory / "sockets"
        self.primary_port = free_port()
        self.standby_port = free_port()

    def url(self, *ports: int, database: str = "ledger", options: str = "") -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
        return f"postgresql://postgres@{hosts}/{database}{options}"

    @property
    def failover_url(self) -> str:
        """libpq's multi-host form: whichever of the two accepts writes."""
        return self.url(
            self.primary_port, self.standby_port, options="?target_session_attrs=read-write"
        )

    def start(self) -> ReplicatedPostgres:
        if SYSTEM_USER is not None:
            ensure_user_exists(SYSTEM_USER)
        self.sockets.mkdir(exist_ok=True)
        if SYSTEM_USER is not None:
            for path in (self.directory, self.sockets):
                shutil.chown(path, SYSTEM_USER)
        run("initdb", "-D", str(self.primary), "--auth=trust", "-U", "postgres", "-E", "utf8")
        self._configure(
            self.primary,
            self.primary_port,
            "wal_level = replica",
            "max_wal_senders = 5",
            "synchronous_standby_names = 'standby1'",
            "synchronous_commit = on",
        )
        self._start(self.primary)
        run(
            "pg_basebackup",
            "-D",
            str(self.standby),
            "-R",
            "-X",
            "stream",
            "-d",
            f"host=127.0.0.1 port={self.primary_port} user=postgres application_name=standby1",
        )
        self._configure(self.standby, self.standby_port)
        self._start(self.standby)
        deadline = time.monotonic() + 60
        while self._sync_state() != "sync":
            if time.monotonic() > deadline:
                raise TimeoutError("the standby never became synchronous")
            time.sleep(0.2)
        with psycopg.connect(
            self.url(self.primary_port, database="postgres"), autocommit=True
        ) as db:
            db.execute("CREATE DATABASE ledger")
        return self

    def _configure(self, pgdata: Path, port: int, *lines: str) -> None:
        settings = [
            f"port = {port}",
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{self.sockets}'",
            *lines,
        ]
        with (pgdata / "postgresql.conf").open("a") as conf:
            conf.write("\n" + "\n".join(settings) + "\n")

    def _start(self, pgdata: Path) -> None:
        run("pg_ctl", "-D", str(pgdata), "-l", str(pgdata / "server.log"), "-w", "start")

    def _sync_state(self) -> str | None:
        with psycopg.connect(self.url(self.primary_port, database="postgres")) as db:
            row = db.execute(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'"
            ).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def _pid(pgdata: Path) -> int | None:
        pid_file = pgdata / "postmaster.pid"
        if not pid_file.exists():
            return None
        return int(pid_file.read_text().split()[0])

    def crash_primary(self) -> None:
        """SIGKILL the primary's postmaster: no shutdown, no checkpoint, as when it dies."""
        pid = self._pid(self.primary)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

    def promote_standby(self) -> None:
        """Promote, then stop waiting for a synchronous standby it does not have (until a
        new one attaches every commit would wait): what Patroni or an operator's runbook
        does (deploy/postgresql-replication.md)."""
        run("pg_ctl", "-D", str(self.standby), "-w", "promote")
        url = self.url(self.standby_port, database="postgres")
        with psycopg.connect(url, autocommit=True) as db:
            db.execute("ALTER SYSTEM SET synchronous_standby_names = ''")
            db.execute("SELECT pg_reload_conf()")

    def stop(self) -> None:
        """Stop whatever still runs, by process id, and wait for it."""
        for pgdata in (self.primary, self.standby):
            pid = self._pid(pgdata)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGQUIT)  # immediate shutdown
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        shutil.rmtree(self.directory, ignore_errors=True)
