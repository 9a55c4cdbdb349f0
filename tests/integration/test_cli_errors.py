"""What a person meets at the command line: one line for every mistake (naming the variable
or value and what was expected), a clean stop, the server's key found from anywhere in its
checkout, and the short ids the dashboard shows."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ledger.database_url import parts
from ledger.testing import ServerProcess, free_port, wait_for_http
from tests.support import JWT_SECRET, LiveServer, append, auth, create_session


def ledger(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``ledger ARGS`` as a person runs it: no test settings unless given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    return subprocess.run(
        [sys.executable, "-m", "ledger", *args],
        env={**clean, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The failure, which must be a single line on stderr and no traceback."""
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if not line.startswith(("WARNING", "{"))]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("ledger: ")
    return lines[0]


def test_a_bad_setting_names_the_variable_and_what_was_expected(tmp_path: Path) -> None:
    line = one_line(ledger("serve", env={"LEDGER_PORT": "99999"}, cwd=tmp_path))
    assert "LEDGER_PORT='99999'" in line
    assert "less than or equal to 65535" in line
    line = one_line(ledger("migrate", env={"LEDGER_DATABASE_URL": "mysql://u@h/db"}, cwd=tmp_path))
    assert "LEDGER_DATABASE_URL" in line
    assert "postgresql://user@host:5432/dbname" in line
    # A URL that cannot be read is not echoed: it may hold a password.
    for secret in (
        "postgresql+psycopg://u:hunter2@h/db",
        "postgresql://u:hunter2%zz@h/db",
        "postgresql://u:hunter2@h:abc/db",
    ):
        line = one_line(ledger("migrate", env={"LEDGER_DATABASE_URL": secret}, cwd=tmp_path))
        assert "LEDGER_DATABASE_URL" in line
        assert "hunter2" not in line


def test_an_unreachable_database_is_one_line_and_serve_gives_up(tmp_path: Path) -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/ledger"
    line = one_line(ledger("migrate", env={"LEDGER_DATABASE_URL": nowhere}, cwd=tmp_path))
    assert "cannot reach the database at 127.0.0.1:" in line
    assert "Connection refused" in line
    started = time.monotonic()
    done = ledger(
        "serve",
        env={
            "LEDGER_DATABASE_URL": nowhere,
            "LEDGER_DATABASE_WAIT_SECONDS": "1",
            "LEDGER_JWT_SECRET": JWT_SECRET,
        },
        cwd=tmp_path,
    )
    assert "cannot reach the database" in one_line(done)
    assert done.returncode == 1
    assert time.monotonic() - started < 50  # it gave up instead of serving 503s forever


def test_serve_checks_what_it_can_before_it_serves(
    module_database_url: str, tmp_path: Path
) -> None:
    base = {"LEDGER_DATABASE_URL": module_database_url, "LEDGER_JWT_SECRET": JWT_SECRET}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        line = one_line(ledger("serve", "--port", port, env=base, cwd=tmp_path))
    assert f"cannot listen on 127.0.0.1:{port}" in line
    line = one_line(ledger("serve", env={**base, "LEDGER_JWT_ALGORITHM": "RS256"}, cwd=tmp_path))
    assert "RS256 needs LEDGER_JWT_PUBLIC_KEY" in line
    # A refusal that waiting cannot change (no such database) is not waited on.
    missing = module_database_url.rsplit("/", 1)[0] + "/no_such_database"
    started = time.monotonic()
    line = one_line(ledger("serve", env={**base, "LEDGER_DATABASE_URL": missing}, cwd=tmp_path))
    assert 'database "no_such_database" does not exist' in line
    assert time.monotonic() - started < 20  # LEDGER_DATABASE_WAIT_SECONDS is 30


def test_a_multi_host_url_reaches_the_host_that_answers(module_database_url: str) -> None:
    """libpq's multi-host form (design section 12): the first host is down."""
    found = parts(module_database_url)
    user, host, port = found["user"], found.get("host", ""), found.get("port", "5432")
    if host.startswith("/"):  # the embedded server's socket directory: the query spelling
        hosts = f"@/{found['dbname']}?host=127.0.0.1,{host}&port={free_port()},{port}&"
    else:
        hosts = f"@127.0.0.1:{free_port()},{host}:{port}/{found['dbname']}?"
    multi = f"postgresql://{user}{hosts}target_session_attrs=read-write"
    done = ledger("migrate", env={"LEDGER_DATABASE_URL": multi})
    assert done.returncode == 0, done.stderr
    done = ledger("verify", env={"LEDGER_DATABASE_URL": multi})
    assert done.returncode == 0, done.stderr


def test_tail_names_an_unknown_session_and_an_absent_server(server: LiveServer) -> None:
    env = {"LEDGER_JWT_SECRET": JWT_SECRET}
    line = one_line(ledger("tail", "5e6e3aa1", "--url", server.base_url, env=env))
    assert "no session you may read starts with '5e6e3aa1'" in line
    line = one_line(ledger("tail", "not-hex", "--url", server.base_url, env=env))
    assert "'not-hex' is not the start of a session id (hex digits)" in line
    nobody = f"http://127.0.0.1:{free_port()}"
    line = one_line(ledger("tail", "5e6e3aa1", "--url", nobody, env=env))
    assert f"cannot reach {nobody}" in line


def test_tail_and_verify_take_the_short_id_the_dashboard_shows(
    server: LiveServer, module_database_url: str
) -> None:
    with server.client() as client:
        session_id = create_session(client)
        append(client, session_id, [{"status": "queued"}, {"status": "processed"}])
    short = session_id[:8]
    env = {"LEDGER_JWT_SECRET": JWT_SECRET}
    done = ledger("tail", short, "--from-start", "--url", server.base_url, env=env)
    assert done.returncode == 0, done.stderr
    assert "processed" in done.stdout
    done = ledger(
        "verify", "--session", short, env={**env, "LEDGER_DATABASE_URL": module_database_url}
    )
    assert done.returncode == 0, done.stderr
    assert "1 sessions, 2 events" in done.stderr
    line = one_line(
        ledger("verify", "--session", "0000", env={"LEDGER_DATABASE_URL": module_database_url})
    )
    assert "no session id starts with '0000'" in line


def test_the_cli_finds_the_servers_key_from_anywhere_in_its_directory(
    module_database_url: str, tmp_path: Path
) -> None:
    """No LEDGER_DATA_DIR: the server keeps its key in ./.ledger; the CLI run from a
    subdirectory finds it, and run elsewhere says why it cannot (it never makes a second)."""
    project = tmp_path / "project"
    (project / "sub" / "dir").mkdir(parents=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")} | {
        "LEDGER_DATABASE_URL": module_database_url,
        "LEDGER_PORT": str(port),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "ledger", "serve"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_http(
            process, f"http://127.0.0.1:{port}/readyz", name="server", log=str, timeout=30
        )
        assert (project / ".ledger" / "jwt-secret").exists()
        done = ledger("token", "--role", "admin", "--sub", "me", cwd=project / "sub" / "dir")
        assert done.returncode == 0, done.stderr
        answer = httpx.get(
            f"http://127.0.0.1:{port}/api/sessions",
            headers={"Authorization": f"Bearer {done.stdout.strip()}"},
        )
        assert answer.status_code == 200
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        line = one_line(ledger("token", "--role", "admin", "--sub", "me", cwd=elsewhere))
        assert f"no development secret at {elsewhere / '.ledger' / 'jwt-secret'}" in line
        assert not (elsewhere / ".ledger").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_is_clean_and_one_line(
    module_database_url: str, tmp_path: Path, signum: signal.Signals
) -> None:
    live = ServerProcess(
        module_database_url,
        tmp_path,
        env={"LEDGER_JWT_SECRET": JWT_SECRET, "LEDGER_LOG_LEVEL": "WARNING"},
    ).start()
    assert live.process is not None
    with live.client() as client:
        assert client.get("/api/sessions", headers=auth("admin")).status_code == 200
    live.process.send_signal(signum)
    assert live.process.wait(20) == 0
    output = live.log()
    assert "Traceback" not in output
    assert output.strip().splitlines()[-1] == "ledger: stopped"
