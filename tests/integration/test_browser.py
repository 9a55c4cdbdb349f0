"""The dashboard in a real headless Chromium: live progress, reconnects, and the end."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from tests.support import (
    LiveServer,
    append,
    append_retrying,
    create_session,
    table_versions,
    token,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Chromium is not installed (.ci/run installs it)"
)


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


def signed_in_page(browser: Any, base_url: str, role: str = "auditor") -> Any:
    page = browser.new_page()
    page.goto(base_url + "/")
    page.fill("#token", token(role, "e2e"))
    page.click("#sign-in-form button")
    page.wait_for_selector("h1:has-text('Sessions')")
    return page


def received(page: Any) -> list[int]:
    versions: list[int] = page.evaluate("window.ledgerDashboard.received")
    return versions


def test_dashboard_follows_a_session_through_a_server_restart(
    browser: Any,
    server_factory: Callable[..., LiveServer],
    database_url: str,
    tmp_path: Path,
) -> None:
    live = server_factory()
    with live.client() as client:
        session_id = create_session(client, patient_id="e2e-patient")
        append(client, session_id, [{"status": "uploaded"}, {"status": "queued", "progress": 2}])
    page = signed_in_page(browser, live.base_url)
    assert page.locator(f"tr[data-session='{session_id}']").count() == 1
    page.goto(f"{live.base_url}/#/session/{session_id}")
    page.wait_for_selector("tr[data-version='2']")
    with live.client() as client:
        append(
            client,
            session_id,
            {"status": "transcribing", "progress": 30, "message": "10 of 30 min"},
        )
    page.wait_for_selector("tr[data-version='3']")
    assert page.locator("#session-progress").get_attribute("value") == "30"

    # Cut the stream: kill the server; the page's native EventSource must come back alone.
    live.kill()
    page.wait_for_selector("#live:not(.on)")
    again = LiveServer(database_url, tmp_path / "again", port=live.port).start()
    try:
        for n, progress in enumerate((50, 70, 90), start=4):
            append_retrying(
                again.base_url, session_id, {"status": "analyzing", "progress": progress}, f"p{n}"
            )
        append_retrying(again.base_url, session_id, {"status": "processed"}, "done")
        page.wait_for_selector("tr[data-version='7']", timeout=30_000)
        page.wait_for_selector("#chain.ok")
        assert received(page) == table_versions(database_url, session_id) == list(range(1, 8))
        assert page.locator("#session-status").inner_text() == "processed"
        # After `complete` the EventSource is closed and stays closed.
        assert page.evaluate("window.ledgerDashboard.session.readyState") == 2
        opens = page.evaluate("window.ledgerDashboard.session.opens")
        assert opens >= 2  # it did reconnect after the kill
        time.sleep(3)  # longer than the retry hint: a reconnect would have happened by now
        assert page.evaluate("window.ledgerDashboard.session.opens") == opens
        assert received(page) == list(range(1, 8))
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-session.png"), full_page=True)
    finally:
        again.stop()


def test_dashboard_list_and_analytics(browser: Any, server: LiveServer) -> None:
    with server.client() as client:
        session_id = create_session(client, patient_id="list-patient")
    page = signed_in_page(browser, server.base_url, role="admin")
    row = page.locator(f"tr[data-session='{session_id}']")
    assert row.count() == 1
    with server.client() as client:
        append(client, session_id, {"status": "diarizing", "progress": 64})
    page.wait_for_selector(f"tr[data-session='{session_id}'] >> text=diarizing")  # live
    with server.client() as client:
        append(client, session_id, {"status": "failed", "error": "codec"})
    page.goto(f"{server.base_url}/#/analytics")
    page.wait_for_selector("#stages-chart svg rect")
    page.wait_for_selector("text=codec: 1")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-analytics.png"), full_page=True)


def test_a_bad_token_is_refused_at_sign_in(browser: Any, server: LiveServer) -> None:
    page = browser.new_page()
    page.goto(server.base_url + "/")
    page.fill("#token", "not-a-token")
    page.click("#sign-in-form button")
    page.wait_for_selector("text=That token is not accepted.")
