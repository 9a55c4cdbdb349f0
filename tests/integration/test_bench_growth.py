"""``python -m benchmarks --quick --only growth``: how cost grows with streams and writers
runs end to end (timings are not judged). A module of its own, so that the suite's two
workers run it beside the other groups' run."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import nchan
from tests.support import quick_bench


@pytest.mark.timeout(300)
def test_bench_quick_measures_how_cost_grows(pg_server_url: str, tmp_path: Path) -> None:
    results = quick_bench(pg_server_url, tmp_path / "bench-results.json", "growth")["results"]
    points = [r for r in results if r["scenario"].startswith("growth:") and "SSE" in r["scenario"]]
    # Four points, each with p50, p99, memory and CPU per delivery (and one ratio to Nchan).
    by_metric = {r["metric"]: [p for p in points if p["metric"] == r["metric"]] for r in points}
    for metric in ("p50_ms", "p99_ms", "server memory per stream"):
        assert len(by_metric[metric]) == 4
    assert all(r["value"] > 0 for r in by_metric["server memory per stream"])
    cpu = by_metric["server CPU seconds per 1,000 deliveries"]
    assert len(cpu) == 4
    assert all(r["value"] > 0 for r in cpu)
    # Nothing delivered twice, over one load generator or several (the largest point's
    # streams are split over two even in --quick).
    for r in by_metric["p99_ms"]:
        assert 0 < r["notes"]["received"] <= r["notes"]["expected"]
    assert [r["notes"]["load_generators"] for r in by_metric["p99_ms"]] == [1, 1, 1, 2]
    if nchan.available():
        assert all(r["baseline"] is not None for r in by_metric["p99_ms"])
        assert len(by_metric["p99 as a multiple of Nchan's"]) == 1
    writers = [r for r in results if "appenders" in r["scenario"] and r["unit"] == "ev/s"]
    assert len(writers) == 4
    assert all(r["value"] > 0 and r["baseline"] > 0 for r in writers)
