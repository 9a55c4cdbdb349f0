"""The dashboard in a real headless Chromium: live progress, reconnects, and the end."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from ledger.api.admission import WAITING_PER_SLOT
from tests.support import (
    LiveServer,
    append,
    append_retrying,
    create_session,
    metric,
    signed_size,
    stream_status,
    table_versions,
    tables_locked,
    token,
    wait_until,
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


# Counts the page's EventSources: how many were made, to which paths, and the most that
# were ever open (not CLOSED) at once.
COUNT_EVENT_SOURCES = """
(() => {
  const Native = window.EventSource;
  const seen = { made: 0, paths: [], mostOpen: 0, all: [] };
  window.eventSources = seen;
  const count = () => {
    const open = seen.all.filter((source) => source.readyState !== Native.CLOSED).length;
    seen.mostOpen = Math.max(seen.mostOpen, open);
  };
  window.EventSource = class extends Native {
    constructor(url, init) {
      super(url, init);
      seen.made += 1;
      seen.paths.push(new URL(url, location.href).pathname);
      seen.all.push(this);
      count();
      for (const name of ["open", "error"]) this.addEventListener(name, count);
    }
  };
})();
"""


def test_a_patient_follows_ten_sessions_on_one_stream_through_a_killed_server(
    browser: Any,
    server_factory: Callable[..., LiveServer],
    database_url: str,
    tmp_path: Path,
) -> None:
    """Ten running sessions on one page, one EventSource (a browser allows six HTTP/1.1
    connections per host); SIGKILL and a restart: every session ends with its exact
    history, each event received once, in order."""
    live = server_factory()
    with live.client() as client:
        sessions = [create_session(client, patient_id="e2e") for _ in range(10)]
        for session_id in sessions:
            append(client, session_id, {"status": "uploaded", "progress": 1})
    context = browser.new_context()
    context.add_init_script(COUNT_EVENT_SOURCES)
    page = signed_in_page(context, live.base_url, role="patient")
    page.wait_for_selector("#live.on")
    with live.client() as client:
        for session_id in sessions:
            append(client, session_id, {"status": "transcribing", "progress": 30})
    for session_id in sessions:
        page.wait_for_selector(f"tr[data-session='{session_id}'] >> text=transcribing")

    live.kill()
    page.wait_for_selector("#live.down")
    again = LiveServer(database_url, tmp_path / "again", port=live.port).start()
    try:
        for n, session_id in enumerate(sessions):  # appended while the page reconnects
            append_retrying(
                again.base_url, session_id, {"status": "analyzing", "progress": 80}, f"a{n}"
            )
            end = {"status": "processed"} if n % 3 else {"status": "failed", "error": "codec"}
            append_retrying(again.base_url, session_id, end, f"e{n}")
        for n, session_id in enumerate(sessions):
            ended = "processed" if n % 3 else "failed"
            page.wait_for_selector(
                f"tr[data-session='{session_id}'] >> text={ended}", timeout=30_000
            )
        page.wait_for_selector("#live.on")
        events: list[list[Any]] = page.evaluate("window.ledgerDashboard.events")
        for session_id in sessions:
            streamed = [version for sid, version in events if sid == session_id]
            # Version 1 came with the list; every later one on the stream, once, in order.
            assert streamed == table_versions(database_url, session_id)[1:] == [2, 3, 4]
        counted = page.evaluate(
            "({ made: eventSources.made, paths: eventSources.paths, most: eventSources.mostOpen })"
        )
        assert counted["most"] == 1, counted
        assert set(counted["paths"]) == {"/api/events/stream"}, counted
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-patient-list.png"), full_page=True)
    finally:
        again.stop()
        context.close()


def test_follow_all_reopens_with_a_fresh_token_from_its_cursor(
    browser: Any, server: LiveServer
) -> None:
    """ledger-client.js's followAll, narrowed to one of a patient's two sessions: its token
    expires, the browser gives up on the 401, the stream asks again with a fresh token and
    reopens from the cursor (an opaque string, handed back as it is): what was appended
    while it was away arrives once."""
    with server.client() as client:
        followed, other = create_session(client, "js-all"), create_session(client, "js-all")
    page = browser.new_page()
    page.goto(server.base_url + "/static/index.html")
    page.evaluate(
        """async ([followed, shortLived]) => {
          const { followAll } = await import("/static/ledger-client.js");
          window.all = { token: shortLived, events: [], gaps: 0 };
          window.all.stream = followAll({
            sessionIds: [followed],
            tokenProvider: () => window.all.token,
            onEvent: (e) => window.all.events.push([e.session_id, e.version]),
            onGap: () => { window.all.gaps += 1; },
          });
        }""",
        [followed, token("patient", "js-all", ttl=2)],
    )
    page.wait_for_function("window.all.stream.opens === 1")
    page.evaluate("(fresh) => { window.all.token = fresh; }", token("patient", "js-all"))
    with server.client() as client:
        append(client, other, {"status": "queued"})  # not followed
        append(client, followed, {"status": "queued"})
        page.wait_for_function("window.all.events.length === 1")
        page.wait_for_function(
            "window.all.stream.readyState === EventSource.CLOSED", timeout=15_000
        )
        append(client, followed, {"status": "transcribing"})  # while it is away
    page.wait_for_function("window.all.stream.opens === 2", timeout=15_000)
    with server.client() as client:
        append(client, followed, {"status": "processed"})  # a session's end: it stays open
    page.wait_for_function("window.all.events.length >= 3", timeout=15_000)
    assert page.evaluate("window.all.events") == [[followed, 1], [followed, 2], [followed, 3]]
    assert page.evaluate("typeof window.all.stream.lastEventId") == "string"
    assert page.evaluate("window.all.gaps") == 0
    assert page.evaluate("window.all.stream.readyState") != 2


def test_follow_all_lets_a_cursor_this_database_lacks_go_and_follows_from_now(
    browser: Any, server: LiveServer
) -> None:
    """A cursor from another database (a restore): 404, so the stream reopens from now and
    says so (onGap) instead of giving up as it would on a session it may not read."""
    with server.client() as client:
        session_id = create_session(client, "js-restored")
    page = browser.new_page()
    page.goto(server.base_url + "/static/index.html")
    page.evaluate(
        """async (token) => {
          const { followAll } = await import("/static/ledger-client.js");
          window.restored = { events: [], gaps: 0, closed: null };
          window.restored.stream = followAll({
            token, lastEventId: "999999999999",
            onEvent: (e) => window.restored.events.push(e.version),
            onGap: () => { window.restored.gaps += 1; },
            onClosed: (status) => { window.restored.closed = status; },
          });
        }""",
        token("patient", "js-restored"),
    )
    page.wait_for_function("window.restored.stream.opens === 1", timeout=15_000)
    with server.client() as client:
        append(client, session_id, {"status": "queued"})
    page.wait_for_function("window.restored.events.length === 1", timeout=15_000)
    assert page.evaluate("[window.restored.gaps, window.restored.closed]") == [1, None]


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


def test_the_list_follows_sessions_to_their_ends_and_says_when_it_is_stale(
    browser: Any,
    server_factory: Callable[..., LiveServer],
    database_url: str,
    tmp_path: Path,
) -> None:
    """Several sessions end, some failing: the list keeps following all of them (one
    session's end is not the stream's), a session registered after the page opened shows
    its first event, the live indicator goes out while the server is down and comes back
    with it, and the full id can be copied."""
    live = server_factory()
    with live.client() as client:
        early = [create_session(client, patient_id=f"list-{i}") for i in range(3)]
        for session_id in early:
            append(client, session_id, {"status": "transcribing", "progress": 45})
    context = browser.new_context()
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.base_url)
    page = context.new_page()
    page.goto(live.base_url + "/")
    page.fill("#token", token("admin", "e2e"))
    page.click("#sign-in-form button")
    page.wait_for_selector("#live.on")
    assert page.locator("#live-text").inner_text() == "live"

    def row_status(session_id: str) -> str:
        text: str = page.locator(f"tr[data-session='{session_id}'] .status").inner_text()
        return text

    with live.client() as client:
        append(client, early[0], {"status": "processed"})
        append(client, early[1], {"status": "failed", "error": "codec"})
        late = create_session(client, patient_id="list-late")
        append(client, late, {"status": "uploaded", "progress": 1})
        append(client, early[2], {"status": "diarizing", "progress": 60})
    page.wait_for_selector(f"tr[data-session='{late}'] >> text=uploaded")
    page.wait_for_selector(f"tr[data-session='{early[2]}'] >> text=diarizing")
    assert row_status(early[0]) == "processed"
    assert row_status(early[1]) == "failed"
    with live.client() as client:
        append(client, early[2], {"status": "failed", "error": "GPU lost"})
        append(client, late, {"status": "processed"})
    page.wait_for_selector(f"tr[data-session='{late}'] >> text=processed")
    page.wait_for_selector(f"tr[data-session='{early[2]}'] >> text=failed")
    assert page.locator("#live.on").count() == 1  # still following after four ends

    page.locator(f"tr[data-session='{late}'] button.copy").click()
    assert page.evaluate("navigator.clipboard.readText()") == late

    # The server goes away: the indicator must not claim the list is live.
    live.kill()
    page.wait_for_selector("#live.down")
    assert "stale" in page.locator("#live-text").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-list-stale.png"), full_page=True)
    again = LiveServer(database_url, tmp_path / "again", port=live.port).start()
    try:
        with again.client() as client:
            after = create_session(client, patient_id="list-after")
            append(client, after, {"status": "queued", "progress": 2})
        page.wait_for_selector("#live.on", timeout=30_000)
        page.wait_for_selector(f"tr[data-session='{after}'] >> text=queued", timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "dashboard-list.png"), full_page=True)
    finally:
        again.stop()
        context.close()


def test_a_sessions_stages_are_drawn_to_scale_with_retries_and_the_failure(
    browser: Any, server: LiveServer
) -> None:
    with server.client() as client:
        session_id = create_session(client, patient_id="stages-patient")
        for step in (
            {"status": "uploaded"},
            {"status": "transcribing", "progress": 10},
            {"status": "queued", "progress": 10, "message": "retrying"},
            {"status": "transcribing", "progress": 30},
            {"status": "diarizing", "progress": 60},
            {"status": "failed", "error": "GPU lost"},
        ):
            append(client, session_id, step)
            time.sleep(0.05)  # visible spans
    page = signed_in_page(browser, server.base_url, role="auditor")
    page.goto(f"{server.base_url}/#/session/{session_id}")
    page.wait_for_selector("#timeline-end.failed", state="attached")
    bars = page.locator("#stage-chart rect.bar")
    statuses = [bars.nth(i).get_attribute("data-status") for i in range(bars.count())]
    assert sorted(statuses) == sorted(
        ["uploaded", "transcribing", "queued", "transcribing", "diarizing"]
    )
    assert page.locator("#stage-chart rect.bar.retry").count() == 1  # transcribing's second visit
    labels = page.locator("#stage-chart text.label").all_text_contents()
    assert labels == ["uploaded", "queued", "transcribing", "diarizing"]  # pipeline order
    assert "failed: GPU lost" in (page.locator("#stage-chart").text_content() or "")
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#stage-chart").screenshot(path=str(ARTIFACTS / "dashboard-stages.png"))


def test_analytics_draws_throughput_and_the_distribution_of_completion_times(
    browser: Any, server: LiveServer
) -> None:
    with server.client() as client:
        for i in range(4):
            session_id = create_session(client, patient_id=f"chart-{i}")
            append(client, session_id, {"status": "transcribing", "progress": 20})
            time.sleep(0.02 * i)
            end = {"status": "processed"} if i < 3 else {"status": "failed", "error": "codec"}
            append(client, session_id, end)
    page = signed_in_page(browser, server.base_url, role="admin")
    page.goto(f"{server.base_url}/#/analytics")
    page.wait_for_selector("#completion-chart svg rect.bar")
    # 24 hours of hourly buckets (25 when the range does not start on the hour).
    labels = page.locator("#throughput-chart svg rect.bar").count()
    assert labels >= 1
    hours = page.evaluate(
        "fetch('/api/analytics/throughput?bucket=hour&from=' + encodeURIComponent("
        "new Date(Date.now() - 864e5).toISOString()), {headers: {Authorization: "
        "'Bearer ' + sessionStorage.getItem('ledger.token')}}).then(r => r.json())"
        ".then(b => b.buckets.length)"
    )
    assert hours in (24, 25)
    assert page.locator("#throughput-chart svg rect.bar.failed").count() >= 1
    summary = page.locator("#summary").inner_text()
    assert "p50" in summary
    assert not any(len(part) > 6 for part in summary.replace(",", " ").split() if "." in part)
    drawn = page.locator("#throughput-chart svg").get_attribute("data-items")
    assert drawn == str(hours)  # every hour of the range, not the last twelve
    stage_labels = page.locator("#stages-chart svg text.tick").all_text_contents()
    pipeline = ["uploaded", "queued", "transcribing", "diarizing", "analyzing"]
    named = [label for label in stage_labels if label in pipeline]
    assert named == sorted(named, key=pipeline.index)  # pipeline order, not alphabetical
    assert "transcribing" in named
    page.wait_for_selector("#failure-reasons >> text=codec")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-analytics.png"), full_page=True)


def test_a_new_sessions_first_event_is_not_lost_while_the_list_is_read_again(
    browser: Any, server: LiveServer
) -> None:
    """Events of sessions the list does not know arrive while it reads the list again (made
    slow here): each session's first event still shows, none is left "waiting"."""
    page = signed_in_page(browser, server.base_url, role="admin")
    page.wait_for_selector("#live.on")

    def slow_list(route: Any) -> None:
        time.sleep(1.0)  # the list answers late; events keep coming meanwhile
        route.continue_()

    page.route("**/api/sessions?limit=50", slow_list)
    with server.client() as client:
        first = create_session(client, patient_id="race-1")
        append(client, first, {"status": "uploaded", "progress": 1})
        time.sleep(0.3)  # the page is reading the list again now
        second = create_session(client, patient_id="race-2")
        append(client, second, {"status": "queued", "progress": 2})
    page.wait_for_selector(f"tr[data-session='{first}'] >> text=uploaded", timeout=15_000)
    page.wait_for_selector(f"tr[data-session='{second}'] >> text=queued", timeout=15_000)


def test_an_auditor_sees_the_checkpoint_and_proves_an_event_in_the_browser(
    browser: Any, server_factory: Callable[..., LiveServer], database_url: str
) -> None:
    live = server_factory(LEDGER_CHECKPOINT_SECONDS="0.2")
    with live.client() as client:
        session_id = create_session(client, patient_id="audited")
        body = [{"status": "uploaded"}, {"status": "transcribing", "progress": 40}]
        assert append(client, session_id, body).status_code == 201
    assert wait_until(lambda: signed_size(live) == 2)
    page = signed_in_page(browser, live.base_url)
    page.wait_for_selector("#checkpoint[data-size='2']")
    summary = page.text_content("#checkpoint") or ""
    assert summary.startswith("2 events, root ")
    assert "signature good" in summary  # Chromium's Web Crypto has Ed25519
    page.goto(f"{live.base_url}/#/session/{session_id}")
    page.wait_for_selector("tr[data-version='2']")
    page.click("tr[data-version='2'] button.prove")
    page.wait_for_selector("#proof-2.ok")
    assert "leaf 1 of the checkpoint of 2 events" in (page.text_content("#proof-2") or "")
    # A patient sees no proofs, and the page does not ask for them.
    patient = browser.new_page()
    patient.goto(live.base_url + "/")
    patient.fill("#token", token("patient", "audited"))
    patient.click("#sign-in-form button")
    patient.wait_for_selector("h1:has-text('Sessions')")
    assert patient.locator("#checkpoint").count() == 0


def test_a_stream_refused_with_503_reopens_alone_and_misses_nothing(
    browser: Any, server_factory: Callable[..., LiveServer], database_url: str
) -> None:
    # One stream may be opening at a time and 8 may wait: openers held at a table lock take
    # the slot and the queue.
    live = server_factory(LEDGER_MAX_OPENING_STREAMS="1")
    with live.client() as client:
        session_id = create_session(client, patient_id="shed")
        append(client, session_id, {"status": "uploaded"})
    page = browser.new_page()
    page.goto(live.base_url + "/static/index.html")
    path = f"/api/sessions/{session_id}/status/stream"
    with ThreadPoolExecutor(1 + WAITING_PER_SLOT) as threads:
        with tables_locked(database_url, "sessions", "events") as waiting:
            held = [
                threads.submit(stream_status, live.base_url, path)
                for _ in range(1 + WAITING_PER_SLOT)
            ]
            assert wait_until(lambda: waiting() == 1)
            assert wait_until(
                lambda: metric(live, "ledger_streams_waiting_to_open") == WAITING_PER_SLOT
            )
            page.evaluate(
                """async ([path, token]) => {
                  const { LedgerStream } = await import("/static/ledger-client.js");
                  window.shed = { refused: 0, events: [] };
                  window.shed.stream = new LedgerStream(path, {
                    token, lastEventId: 0,
                    onConnectionError: () => { window.shed.refused += 1; },
                    onEvent: (e) => window.shed.events.push(e.version),
                  });
                }""",
                [path, token("admin", "browser")],
            )
            # Refused (503) and closed by the browser, then refused again when it asks after
            # a backoff: the reopen waits.
            assert wait_until(lambda: metric(live, "ledger_limited_total", 'limit="opening"') >= 2)
            assert page.evaluate("window.shed.refused") == 1  # one EventSource gave up
            assert page.evaluate("window.shed.stream.opens") == 0
        assert [future.result() for future in held] == [200] * (1 + WAITING_PER_SLOT)
    with live.client() as client:  # appended while the browser waits to reopen
        append(client, session_id, {"status": "processed"})
    page.wait_for_function("window.shed.events.length === 2", timeout=30_000)
    assert page.evaluate("window.shed.events") == [1, 2]
    assert page.evaluate("window.shed.stream.opens") == 1
    assert metric(live, "ledger_limited_total", 'limit="opening"') >= 2


def test_a_stream_refused_for_good_is_not_reopened(browser: Any, server: LiveServer) -> None:
    with server.client() as client:
        session_id = create_session(client, patient_id="someone-elses")
    page = browser.new_page()
    page.goto(server.base_url + "/static/index.html")
    page.evaluate(
        """async ([path, token]) => {
          const { LedgerStream } = await import("/static/ledger-client.js");
          window.closedWith = null;
          window.refused = new LedgerStream(path, {
            token, onClosed: (status) => { window.closedWith = status; },
          });
        }""",
        # Another patient's session: 403, which no retry changes.
        [f"/api/sessions/{session_id}/status/stream", token("patient", "not-the-patient")],
    )
    page.wait_for_function("window.closedWith !== null", timeout=15_000)
    assert page.evaluate("window.closedWith") == 403
    assert page.evaluate("window.refused.finished") is True
    asked = server.log().count(f"/api/sessions/{session_id}/status/stream 403")
    assert asked == 2  # the EventSource, then the one look at the status
    time.sleep(3)  # longer than the first backoffs: another try would have happened by now
    assert server.log().count(f"/api/sessions/{session_id}/status/stream 403") == asked
