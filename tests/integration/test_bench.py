"""``python -m benchmarks --quick`` runs end to end and writes its report (timings are not
judged)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import nchan

CHECKOUT = Path(__file__).resolve().parents[2]


# The subprocess's own bound, not the suite's 120 s: a slow host takes more than two minutes.
@pytest.mark.timeout(300)
def test_bench_quick_writes_a_report(pg_server_url: str, tmp_path: Path) -> None:
    output = tmp_path / "bench-results.json"
    env = {**os.environ, "LEDGER_DATABASE_URL": pg_server_url, "COLUMNS": "160"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--output", str(output)],
        cwd=CHECKOUT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(output.read_text())
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
    assert "analytics over 100,000 events" in done.stdout


@pytest.mark.timeout(300)
def test_a_short_soak_counts_every_delivery_exactly(pg_server_url: str, tmp_path: Path) -> None:
    """``make soak`` in miniature: a worker killed halfway, nothing lost or doubled."""
    output = tmp_path / "soak.json"
    env = {**os.environ, "LEDGER_DATABASE_URL": pg_server_url, "COLUMNS": "160"}
    done = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.soak", "--streams", "300", "--sessions", "30"),
            *("--seconds", "6", "--rate", "40", "--after-seconds", "1", "--output", str(output)),
        ],
        cwd=CHECKOUT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    soak = json.loads(output.read_text())["soak"]
    assert soak["fault"] == "kill-worker"
    assert soak["deliveries_expected"] == soak["deliveries_received"] > 300
    assert soak["lost"] == soak["doubled"] == soak["skipped_ids"] == 0
    assert soak["sessions_stored_differently"] == 0
    assert soak["streams_unfinished"] == 0
    assert soak["appends_acknowledged"] == soak["events_stored"]
