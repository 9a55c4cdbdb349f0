"""The README's snippets, run as a user pastes them, with only their placeholders filled in.

A server runs where the README says it does (127.0.0.1:8000, as `make run` serves), with a
data directory that the snippets' `ledger token` finds too, as in a checkout.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.testing import ServerProcess, free_port
from tests.integration.test_browser import CHROMIUM, FLAGS
from tests.readme import block

REPO = Path(__file__).resolve().parents[2]
PORT = 8000  # where the README's snippets look for the server
BASE = f"http://127.0.0.1:{PORT}"


@dataclass
class Readme:
    server: ServerProcess
    env: dict[str, str]
    page_port: int


@pytest.fixture(scope="module")
def readme(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Readme]:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            probe.bind(("127.0.0.1", PORT))
        except OSError:
            pytest.fail(f"port {PORT} is taken (is `make run` serving?): the README uses it")
    data_dir = tmp_path_factory.mktemp("readme") / ".ledger"
    page_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env["LEDGER_DATA_DIR"] = str(data_dir)
    server = ServerProcess(
        module_database_url,
        data_dir,
        port=PORT,
        env={
            "LEDGER_CORS_ORIGINS": f"http://127.0.0.1:{page_port}",
            "LEDGER_CHECKPOINT_SECONDS": "0.5",
        },
    ).start()
    try:
        yield Readme(server, env, page_port)
    finally:
        server.stop()


def minted(readme: Readme, role: str, sub: str) -> str:
    """A token as the README mints one (`ledger token`, the server's key)."""
    done = subprocess.run(
        [str(REPO / ".venv" / "bin" / "ledger"), "token", "--role", role, "--sub", sub],
        env=readme.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def client(readme: Readme, role: str = "service") -> httpx.Client:
    return httpx.Client(
        base_url=BASE, headers={"Authorization": f"Bearer {minted(readme, role, 'readme')}"}
    )


def create_session(api: httpx.Client, patient_id: str) -> str:
    response = api.post("/api/sessions", json={"patient_id": patient_id})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def append(api: httpx.Client, session_id: str, body: object) -> None:
    response = api.post(f"/api/sessions/{session_id}/events", json=body)
    assert response.status_code == 201, response.text


def pasted(readme: Readme, script: str) -> str:
    """What a shell prints for a README block pasted into it (which must succeed)."""
    done = subprocess.run(
        ["bash", "-c", script],
        env=readme.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_tour_works_as_pasted(readme: Readme) -> None:
    tour = block("A 60-second tour", "sh")
    # As in a terminal: the background stream prints until it closes after `processed`.
    out = pasted(readme, tour + "wait\n")
    assert '"status":"processed"' in out  # the status answer
    assert '"next_after":null' in out  # the history page
    assert "retry: 2000" in out
    assert "event: complete" in out
    # The README's picture of the stream has the lines the stream really sends.
    sample = block("A 60-second tour", "")
    for line in sample.splitlines():
        if line:
            assert line.split(": ", 1)[0] + ": " in out, line


def test_the_browser_snippet_works_as_pasted(readme: Readme) -> None:
    from playwright.sync_api import sync_playwright

    with client(readme) as api:
        session_id = create_session(api, "readme-browser")
    page_html = (
        block("In a browser", "html")
        .replace("…session id…", session_id)
        .replace("…a reader's token…", minted(readme, "admin", "readme"))
    )
    folder = Path(readme.server.data_dir) / "page"
    folder.mkdir(exist_ok=True)
    (folder / "index.html").write_text(f"<!doctype html><meta charset=utf-8>{page_html}")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    pages = http.server.ThreadingHTTPServer(("127.0.0.1", readme.page_port), handler)
    threading.Thread(target=pages.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{readme.page_port}/index.html")
            with client(readme) as api:
                append(api, session_id, {"status": "transcribing", "progress": 40})
                page.wait_for_function("document.getElementById('bar').value === 40")
                append(api, session_id, {"status": "processed"})
            page.wait_for_function("document.getElementById('status').textContent === 'processed'")
            assert page.evaluate("document.getElementById('bar').value") == 100
            browser.close()
    finally:
        pages.shutdown()
        pages.server_close()


def test_the_httpx_sse_snippet_works_as_pasted(readme: Readme) -> None:
    with client(readme) as api:
        session = create_session(api, "readme-httpx")
        append(api, session, [{"status": "transcribing", "progress": 40}])
        append(api, session, {"status": "processed"})
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(  # the README's lines, as written
            block("In Python (httpx-sse)", "python"),
            {"token": minted(readme, "auditor", "readme"), "session": session},
        )
    assert printed.getvalue().splitlines() == ["complete processed 100"]


@contextlib.contextmanager
def snippet_page(html: str, values: dict[str, str]) -> Iterator[tuple[Any, list[str]]]:
    """A page of the ledger's own origin running a README ``<script type="module">``
    block, with a reader's token in sessionStorage and ``values`` as page globals; and
    what the page logs (not the browser's own notes, such as a missing favicon)."""
    from playwright.sync_api import sync_playwright

    script = html.split(">", 1)[1].rsplit("</script>", 1)[0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        logged: list[str] = []
        page.on("console", lambda m: logged.append(m.text) if m.type == "log" else None)
        page.goto(f"{BASE}/healthz")
        page.evaluate(
            "(values) => { Object.assign(window, values);"
            " sessionStorage.setItem('token', values.token); }",
            values,
        )
        page.add_script_tag(content=script, type="module")
        try:
            yield page, logged
        finally:
            browser.close()


def wait_logged(page: Any, logged: list[str], line: str) -> None:
    deadline = time.monotonic() + 10
    while line not in logged and time.monotonic() < deadline:
        page.wait_for_timeout(50)  # lets the page's messages arrive


def test_the_javascript_client_snippet_works_as_pasted(readme: Readme) -> None:
    with client(readme) as api:
        session_id = create_session(api, "readme-js")
        append(api, session_id, {"status": "uploaded"})
    snippet = block("The dashboard and the clients", "html")
    token = minted(readme, "admin", "readme")
    with snippet_page(snippet, {"sessionId": session_id, "token": token}) as (page, logged):
        wait_logged(page, logged, "1 uploaded 0")
        with client(readme) as api:
            append(api, session_id, {"status": "processed"})
        wait_logged(page, logged, "processed")
    assert logged == ["1 uploaded 0", "2 processed 100", "processed"]


def test_the_follow_all_snippet_works_as_pasted(readme: Readme) -> None:
    """A patient's page follows both of its sessions on the one stream the snippet opens."""
    with client(readme) as api:
        first, second = create_session(api, "readme-all"), create_session(api, "readme-all")
        other = create_session(api, "readme-someone-else")
    snippet = block("The dashboard and the clients", "html", nth=1)
    token = minted(readme, "patient", "readme-all")
    with snippet_page(snippet, {"token": token}) as (page, logged):
        opened = 'ledger_subscribers{transport="sse"} 1.0'
        deadline = time.monotonic() + 10
        while opened not in httpx.get(f"{BASE}/metrics").text and time.monotonic() < deadline:
            page.wait_for_timeout(50)
        with client(readme) as api:
            append(api, other, {"status": "queued"})
            append(api, first, {"status": "queued"})
            append(api, second, {"status": "processed"})  # one session's end, not the stream's
            append(api, first, {"status": "transcribing"})
        wait_logged(page, logged, f"{first} 2 transcribing")
    assert logged == [f"{first} 1 queued", f"{second} 1 processed", f"{first} 2 transcribing"]


def test_the_python_client_snippet_works_as_pasted(readme: Readme) -> None:
    printed = io.StringIO()
    names: dict[str, Any] = {
        "service_token": minted(readme, "service", "pipeline-7"),
        "reader_token": minted(readme, "auditor", "readme"),
    }
    with contextlib.redirect_stdout(printed):
        exec(block("The dashboard and the clients", "python"), names)
    assert printed.getvalue().splitlines() == [
        "1 uploaded 0",
        "2 transcribing 40",
        "3 analyzing 90",
        "4 processed 100",
    ]


def test_the_auditors_steps_work_as_pasted(readme: Readme, tmp_path: Path) -> None:
    """Run where an auditor would: a directory of their own (the checkout's venv beside)."""
    with client(readme) as api:
        session_id = create_session(api, "audited")
        append(
            api, session_id, [{"status": "transcribing", "progress": 50}, {"status": "processed"}]
        )
    with client(readme, "auditor") as api:
        total = len(api.get("/api/events", params={"format": "ndjson"}).text.splitlines())

        def signed() -> int:
            return int(api.get("/api/checkpoint").text.split("\n")[1])

        deadline = time.monotonic() + 30
        while signed() < total and time.monotonic() < deadline:
            time.sleep(0.2)
        assert signed() >= total
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    steps = block("Signed checkpoints: the whole ledger, provable offline", "sh")
    done = subprocess.run(
        ["bash", "-e", "-c", steps],
        env=readme.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("(given with --key)") == 3
    assert "signature good; kept in kept.checkpoint" in done.stderr
    assert "extends it" in done.stderr
    assert "every chain intact" in done.stderr
    # The README's picture of a checkpoint has the shape of a real one.
    kept = (tmp_path / "kept.checkpoint").read_text().split("\n")
    shown = block("Signed checkpoints: the whole ledger, provable offline", "").split("\n")
    assert len(kept) == len(shown)
    for lines in (kept, shown):
        origin, size, root, blank, signature, end = lines
        assert (origin, blank, end) == ("ledger", "", "")
        assert size.isdigit()
        assert len(base64.b64decode(root, validate=True)) == 32
        assert signature.startswith("\u2014 ledger ")


def test_the_scoped_stream_snippet_works_as_pasted(readme: Readme) -> None:
    snippet = block("One stream for all the sessions a reader follows", "sh")
    stream_part, _, page_part = pasted(readme, snippet).rpartition("\n\n")
    assert stream_part.startswith("id: ")  # the opening message carries a cursor
    assert stream_part.count("event: progress") == 3
    page = json.loads(page_part)
    assert len({event["session_id"] for event in page["events"]}) == 3
    assert {event["version"] for event in page["events"]} == {1}
    assert page["next_after"] is None
    assert isinstance(page["cursor"], str)
