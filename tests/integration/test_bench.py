"""``python -m benchmarks --quick`` runs end to end and writes its report (timings are not
judged)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import nchan
from benchmarks.__main__ import GROUPS
from tests.support import quick_bench, run_benchmark


# The subprocess's own bound, not the suite's 120 s: a slow host takes more than two minutes.
@pytest.mark.timeout(300)
def test_bench_quick_writes_a_report(pg_server_url: str, tmp_path: Path) -> None:
    groups = [group for group in GROUPS if group != "growth"]  # growth: its own module
    report = quick_bench(pg_server_url, tmp_path / "bench-results.json", *groups)
    assert report["quick"] is True
    assert report["machine"]["cores"] >= 1
    metrics = {r["metric"] for r in report["results"]}
    assert {"GET /api/analytics/summary", "GET /api/analytics/stages"} <= metrics
    # Every figure was measured; only the idle statement rate may truly be zero.
    assert all(r["value"] > 0 for r in report["results"] if r["unit"] != "/s")
    assert all(r["value"] >= 0 for r in report["results"])
    # Streams deliver nothing twice (whether all arrived within the wait is timing).
    streamed = [r for r in report["results"] if "expected" in (r["notes"] or {})]
    assert len(streamed) == 5  # three on session streams, p50 and p99 on scoped ones
    assert all(0 < r["notes"]["received"] <= r["notes"]["expected"] for r in streamed)
    # The scoped streams' figures each stand beside the session streams' of the same run.
    scoped = [r for r in report["results"] if "scoped SSE streams" in r["scenario"]]
    assert len(scoped) == 4
    assert all(r["baseline"] is not None for r in scoped)
    # .ci/run installs nginx with the Nchan module: the comparison runs under the same load.
    if nchan.available():
        versus = [r for r in report["results"] if r["metric"] == "p99 as a multiple of Nchan's"]
        assert len(versus) == 2
        assert all(r["notes"]["nchan_received"] > 0 for r in versus)
        # And Nchan under the scoped streams' load: its own ratio between the two loads.
        ratios = [r["notes"].get("nchan_ratio") for r in scoped if r["unit"] == "ms"]
        assert len(ratios) == 2
        assert all(ratio is not None and ratio > 0 for ratio in ratios)
    assert "analytics over 100,000 events" in report["stdout"]
    # Idle streams over both transports, each measured on a server that served the fan-out.
    idle = [r for r in report["results"] if r["metric"] == "server memory per connection"]
    assert {r["scenario"].split(" idle ")[1] for r in idle} >= {
        "SSE connections",
        "WebSocket streams",
    }


@pytest.mark.timeout(300)
def test_a_short_soak_counts_every_delivery_exactly(pg_server_url: str, tmp_path: Path) -> None:
    """``make soak`` in miniature: a worker killed halfway, nothing lost or doubled."""
    output = tmp_path / "soak.json"
    run_benchmark(
        pg_server_url,
        "benchmarks.soak",
        *("--streams", "300", "--sessions", "30", "--seconds", "6", "--rate", "40"),
        *("--after-seconds", "1", "--output", str(output)),
    )
    soak = json.loads(output.read_text())["soak"]
    assert soak["fault"] == "kill-worker"
    assert soak["deliveries_expected"] == soak["deliveries_received"] > 300
    assert soak["lost"] == soak["doubled"] == soak["skipped_ids"] == 0
    assert soak["sessions_stored_differently"] == 0
    assert soak["streams_unfinished"] == 0
    assert soak["appends_acknowledged"] == soak["events_stored"]
