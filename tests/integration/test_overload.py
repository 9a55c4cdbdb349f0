"""Overload is shed, not queued into timeouts: stream opens past a per-process bound wait
their turn without asking the database anything, and past a queue get a prompt 503 with a
spread Retry-After; a storm of timeouts is one warning. The database is held still by a
table lock, so that requests pile up exactly where a saturated server piles them."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from ledger.api.admission import WAITING_PER_SLOT
from tests.support import (
    LiveServer,
    auth,
    create_session,
    metric,
    stream_status,
    tables_locked,
    token,
    wait_until,
)


def test_stream_opens_past_the_bound_wait_then_are_refused_before_any_work(
    server_factory: Callable[..., LiveServer], database_url: str
) -> None:
    # Two may be opening at once and 16 (WAITING_PER_SLOT each) wait their turn.
    live = server_factory(LEDGER_MAX_OPENING_STREAMS="2")
    with live.client() as client:
        session_id = create_session(client)
    path = f"/api/sessions/{session_id}/status/stream"
    admitted = 2 + 2 * WAITING_PER_SLOT
    with (
        ThreadPoolExecutor(admitted) as threads,
        tables_locked(database_url, "sessions", "events") as waiting,
    ):
        held: list[Future[int]] = [
            threads.submit(stream_status, live.base_url, path) for _ in range(admitted)
        ]
        assert wait_until(lambda: waiting() == 2)  # two opens are inside, at the database
        assert wait_until(lambda: metric(live, "ledger_streams_waiting_to_open") == admitted - 2)
        with live.client() as client:
            for _ in range(5):
                refused = client.get(path, headers=auth("admin", "storm"))
                assert refused.status_code == 503
                assert 1 <= int(refused.headers["Retry-After"]) <= 10
                assert "too many streams opening at once" in refused.json()["detail"]
            everyone = client.get("/api/events/stream", headers=auth("admin", "another"))
            assert everyone.status_code == 503  # the bound is the process's, for every stream
            url = live.base_url.replace("http", "ws") + f"/api/sessions/{session_id}/status/ws"
            with pytest.raises(InvalidStatus) as denied:
                connect(f"{url}?access_token={token('admin', 'storm')}").close()
            assert denied.value.response.status_code == 503
            assert denied.value.response.headers["Retry-After"]
            # What is not a stream is not held back by the bound.
            assert client.get("/healthz").status_code == 200
            assert waiting() == 2  # neither the parked nor the refused opens asked the database
    assert [future.result() for future in held] == [200] * admitted  # the parked, in turn
    assert metric(live, "ledger_limited_total", 'limit="opening"') == 7
    assert metric(live, "ledger_streams_waiting_to_open") == 0
    assert stream_status(live.base_url, path) == 200  # the slots came back


def test_a_storm_of_timeouts_is_one_warning_not_a_storm(
    server_factory: Callable[..., LiveServer], database_url: str
) -> None:
    # One connection, held at a lock: the other reads wait a second for it, then 503.
    live = server_factory(LEDGER_POOL_SIZE="1", LEDGER_POOL_TIMEOUT_SECONDS="1")
    with live.client() as client:
        session_id = create_session(client)

    def read(_: int) -> httpx.Response:
        return httpx.get(
            f"{live.base_url}/api/sessions/{session_id}/status", headers=auth("admin"), timeout=60
        )

    with ThreadPoolExecutor(6) as threads:
        with tables_locked(database_url, "events") as waiting:
            answers = [threads.submit(read, n) for n in range(6)]
            assert wait_until(lambda: sum(future.done() for future in answers) == 5, 30)
            assert waiting() == 1
            for future in answers:
                if future.done():
                    timed_out = future.result()
                    assert timed_out.status_code == 503
                    assert timed_out.json() == {"detail": "database unavailable, retry shortly"}
                    assert timed_out.headers["Retry-After"] == "1"
        codes = sorted(future.result().status_code for future in answers)
    assert codes == [200] + [503] * 5
    assert live.log().count("database unavailable") == 1, live.log()
