"""Analytics on timelines with known timestamps: exact figures, edge cases, and the views."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.support import LiveServer, auth

BASE = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@dataclass(frozen=True)
class Step:
    status: str
    at: float  # seconds after the session's start
    error: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class Timeline:
    start: datetime
    steps: list[Step]


TIMELINES: dict[str, Timeline] = {
    "completed": Timeline(
        BASE,
        [
            Step("uploaded", 0),
            Step("transcribing", 10),
            Step("transcribing", 20),  # progress within one visit
            Step("diarizing", 40),
            Step("analyzing", 70),
            Step("processed", 100),
        ],
    ),
    "completed later": Timeline(
        BASE + timedelta(hours=1), [Step("uploaded", 0), Step("processed", 200)]
    ),
    "failed after a retry": Timeline(
        BASE + timedelta(seconds=120),
        [
            Step("uploaded", 0),
            Step("transcribing", 5),
            Step("queued", 15),
            Step("transcribing", 20),
            Step("failed", 50, error="codec"),
        ],
    ),
    "failed at once": Timeline(
        BASE + timedelta(hours=2), [Step("uploaded", 0), Step("failed", 30, error="codec")]
    ),
    "failed without error": Timeline(
        BASE + timedelta(hours=2, seconds=100),
        [Step("uploaded", 0), Step("failed", 60, message="timeout")],
    ),
    "running": Timeline(
        BASE + timedelta(seconds=200), [Step("uploaded", 0), Step("transcribing", 30)]
    ),
    "single event": Timeline(BASE + timedelta(seconds=300), [Step("uploaded", 0)]),
    "the day before": Timeline(BASE - DAY, [Step("uploaded", 0), Step("processed", 500)]),
}


def event_type(status: str) -> str:
    return {"processed": "complete", "failed": "error"}.get(status, "progress")


def insert(db: psycopg.Connection[Any], timeline: Timeline) -> uuid.UUID:
    """Rows as an append would store them, at chosen times (hashes are not the point here)."""
    session_id = uuid.uuid4()
    db.execute(
        "INSERT INTO sessions (id, patient_id, created_at) VALUES (%s, 'p', %s)",
        (session_id, timeline.start),
    )
    for version, step in enumerate(timeline.steps, start=1):
        db.execute(
            """
            INSERT INTO events (session_id, version, type, status, progress, message, error,
                                actor, recorded_at, prev_hash, hash)
            VALUES (%s, %s, %s, %s, 0, %s, %s, 'pipeline', %s, repeat('0', 64), repeat('1', 64))
            """,
            (
                session_id,
                version,
                event_type(step.status),
                step.status,
                step.message,
                step.error,
                timeline.start + timedelta(seconds=step.at),
            ),
        )
    return session_id


@pytest.fixture
def analytics(
    db: psycopg.Connection[Any], server_factory: Callable[..., LiveServer]
) -> Callable[..., dict[str, Any]]:
    for timeline in TIMELINES.values():
        insert(db, timeline)
    db.execute(
        "INSERT INTO sessions (id, patient_id) VALUES (%s, 'registered only')", (uuid.uuid4(),)
    )
    live = server_factory()

    def get(what: str, start: datetime, end: datetime, **params: str) -> dict[str, Any]:
        with live.client() as client:
            response = client.get(
                f"/api/analytics/{what}",
                params={"from": start.isoformat(), "to": end.isoformat(), **params},
                headers=auth("auditor"),
            )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    return get


def percentile_cont(values: list[float], fraction: float) -> float:
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def visits(timeline: Timeline) -> list[tuple[str, float, float | None]]:
    """(status, entered second, left second or None): runs of one status."""
    runs: list[tuple[str, float]] = []
    for step in timeline.steps:
        if not runs or runs[-1][0] != step.status:
            runs.append((step.status, step.at))
    return [
        (status, entered, runs[i + 1][1] if i + 1 < len(runs) else None)
        for i, (status, entered) in enumerate(runs)
    ]


def test_summary_exact_figures(analytics: Callable[..., dict[str, Any]]) -> None:
    body = analytics("summary", BASE, BASE + DAY)
    assert body["sessions_started"] == 7  # the day before and the registered-only one are out
    assert body["sessions_completed"] == 2
    assert body["sessions_failed"] == 3
    assert body["failure_rate"] == pytest.approx(0.6)
    assert body["time_to_completion_seconds"] == {
        "p50": pytest.approx(150.0),
        "p95": pytest.approx(195.0),
        "p99": pytest.approx(199.0),
    }
    assert body["top_failure_reasons"] == [
        {"reason": "codec", "count": 2},
        {"reason": "timeout", "count": 1},
    ]


def test_completion_times_are_the_distribution_of_the_summarys_durations(
    analytics: Callable[..., dict[str, Any]],
) -> None:
    # Completed in the day: 100 s and 200 s (the failed and running ones are not counted).
    body = analytics("completion-times", BASE, BASE + DAY, bins="4")
    assert [(b["from_seconds"], b["to_seconds"], b["sessions"]) for b in body["bins"]] == [
        (100.0, 125.0, 1),
        (125.0, 150.0, 0),
        (150.0, 175.0, 0),
        (175.0, 200.0, 1),
    ]
    # Widened to the day before: 500 s joins; the counts add up to the summary's.
    wider = analytics("completion-times", BASE - DAY, BASE + DAY, bins="2")
    assert [b["sessions"] for b in wider["bins"]] == [2, 1]
    summary = analytics("summary", BASE - DAY, BASE + DAY)
    assert sum(b["sessions"] for b in wider["bins"]) == summary["sessions_completed"]
    # Nothing completed: no bins.
    empty = analytics("completion-times", BASE - 2 * DAY, BASE - DAY - timedelta(hours=1))
    assert empty["bins"] == []


def test_summary_edges(analytics: Callable[..., dict[str, Any]]) -> None:
    empty = analytics("summary", BASE + 10 * DAY, BASE + 11 * DAY)
    assert empty["sessions_started"] == empty["sessions_completed"] == empty["sessions_failed"] == 0
    assert empty["failure_rate"] is None
    assert empty["time_to_completion_seconds"] == {"p50": None, "p95": None, "p99": None}
    assert empty["top_failure_reasons"] == []
    point = analytics("summary", BASE, BASE)  # an empty range, not an error
    assert point["sessions_started"] == 0
    # Only the first hour: one session completed (100 s); the later one is outside.
    hour = analytics("summary", BASE, BASE + timedelta(hours=1))
    assert hour["sessions_completed"] == 1
    assert hour["time_to_completion_seconds"]["p99"] == pytest.approx(100.0)
    assert hour["sessions_failed"] == 1


def test_stage_durations_from_consecutive_events(analytics: Callable[..., dict[str, Any]]) -> None:
    body = analytics("stages", BASE, BASE + DAY)
    expected: dict[str, list[float]] = {}
    for name, timeline in TIMELINES.items():
        if name == "the day before":
            continue
        for status, entered, left in visits(timeline):
            if left is not None:
                expected.setdefault(status, []).append(left - entered)
    assert expected["uploaded"] == [10, 200, 5, 30, 60, 30]  # the reference, checked by hand
    assert expected["transcribing"] == [30, 10, 30]  # a retry is a second visit
    got = {stage["status"]: stage for stage in body["stages"]}
    assert (
        set(got)
        == set(expected)
        == {"uploaded", "transcribing", "queued", "diarizing", "analyzing"}
    )
    for status, durations in expected.items():
        assert got[status]["visits"] == len(durations)
        assert got[status]["mean_seconds"] == pytest.approx(sum(durations) / len(durations))
        assert got[status]["p50_seconds"] == pytest.approx(percentile_cont(durations, 0.5))
        assert got[status]["p95_seconds"] == pytest.approx(percentile_cont(durations, 0.95))
    assert analytics("stages", BASE + 10 * DAY, BASE + 11 * DAY)["stages"] == []


def test_throughput_buckets(analytics: Callable[..., dict[str, Any]]) -> None:
    hours = analytics("throughput", BASE, BASE + timedelta(hours=3), bucket="hour")["buckets"]
    assert [(b["start"], b["events"], b["completed"], b["failed"]) for b in hours] == [
        ("2026-03-02T09:00:00+00:00", 14, 1, 1),
        ("2026-03-02T10:00:00+00:00", 2, 1, 0),
        ("2026-03-02T11:00:00+00:00", 4, 0, 2),
    ]
    # Mar 1 09:00 to Mar 3 00:00: two UTC days, each bucket starting at midnight.
    days = analytics("throughput", BASE - DAY, BASE + timedelta(hours=15), bucket="day")["buckets"]
    assert [(b["start"][:10], b["events"], b["completed"]) for b in days] == [
        ("2026-03-01", 2, 1),
        ("2026-03-02", 20, 2),
    ]
    quiet = analytics("throughput", BASE + 10 * DAY, BASE + 10 * DAY + timedelta(hours=2))
    assert [b["events"] for b in quiet["buckets"]] == [0, 0]


def test_bad_ranges(
    analytics: Callable[..., dict[str, Any]], server_factory: Callable[..., LiveServer]
) -> None:
    analytics("summary", BASE, BASE + DAY)  # the server is up
    live = server_factory()
    with live.client() as client:
        for what in ("summary", "stages", "throughput"):
            backwards = client.get(
                f"/api/analytics/{what}",
                params={"from": (BASE + DAY).isoformat(), "to": BASE.isoformat()},
                headers=auth("admin"),
            )
            assert backwards.status_code == 400
            assert backwards.json() == {"detail": "'from' is after 'to'"}
            assert (
                client.get(
                    f"/api/analytics/{what}", params={"from": "yesterday"}, headers=auth("admin")
                ).status_code
                == 422
            )
            assert (
                client.get(f"/api/analytics/{what}", headers=auth("patient", "p")).status_code
                == 403
            )
            # Near year 1 the default week would start before it (this was a 500).
            early = client.get(
                f"/api/analytics/{what}",
                params={"to": "0001-01-02T08:16:52Z"},
                headers=auth("admin"),
            )
            assert early.status_code == 200, early.text
            assert early.json()["range"]["from"].startswith("0001-01-01T00:00:00")
        for path in ("/api/analytics/throughput", "/api/events"):
            for bound in ("from", "to"):
                # Year 1 at +14:00 is year 0 in UTC: no Python datetime holds it.
                beyond = client.get(
                    path, params={bound: "0001-01-01T00:00:00+14:00"}, headers=auth("admin")
                )
                assert beyond.status_code == 400, beyond.text
                assert beyond.json() == {
                    "detail": f"'{bound}' is outside the years 1 to 9999 in UTC"
                }
        too_many = client.get(
            "/api/analytics/throughput",
            params={"from": "2000-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z", "bucket": "hour"},
            headers=auth("admin"),
        )
        assert too_many.status_code == 400
        assert (
            client.get(
                "/api/analytics/throughput", params={"bucket": "week"}, headers=auth("admin")
            ).status_code
            == 422
        )
        default = client.get("/api/analytics/summary", headers=auth("admin")).json()
        assert default["range"]["to"] > default["range"]["from"]


def test_views_give_the_same_figures(
    analytics: Callable[..., dict[str, Any]], db: psycopg.Connection[Any]
) -> None:
    outcomes = dict(
        db.execute("SELECT outcome, count(*) FROM session_outcomes GROUP BY outcome").fetchall()
    )
    assert outcomes == {"processed": 3, "failed": 3, "running": 2, "registered": 1}
    in_range = db.execute(
        """
        SELECT outcome, seconds_to_end, failure_reason FROM session_outcomes
        WHERE ended_at >= %s AND ended_at < %s ORDER BY seconds_to_end
        """,
        (BASE, BASE + DAY),
    ).fetchall()
    assert [tuple(row) for row in in_range] == [
        ("failed", 30.0, "codec"),
        ("failed", 50.0, "codec"),
        ("failed", 60.0, "timeout"),
        ("processed", 100.0, None),
        ("processed", 200.0, None),
    ]
    api = {s["status"]: s for s in analytics("stages", BASE, BASE + DAY)["stages"]}
    from_view = db.execute(
        """
        SELECT status, count(*), avg(seconds) FROM stage_durations
        WHERE entered_at >= %s AND entered_at < %s AND left_at IS NOT NULL GROUP BY status
        """,
        (BASE, BASE + DAY),
    ).fetchall()
    assert {row[0]: (row[1], pytest.approx(row[2])) for row in from_view} == {
        status: (figures["visits"], figures["mean_seconds"]) for status, figures in api.items()
    }
    timeline = db.execute(
        "SELECT status, next_status, seconds_to_next FROM session_timeline"
        " WHERE recorded_at = %s ORDER BY version",
        (BASE,),
    ).fetchall()
    assert [tuple(row) for row in timeline] == [("uploaded", "transcribing", 10.0)]
