"""How cost grows: live streams from 1,000 to 20,000, single-event writers from 1 to 64.

* Streams: N session streams over N/10 sessions at 100 appends/s, so each event reaches ten
  streams and every point carries the same 1,000 deliveries/s; on a server of their own
  (``--workers`` as deployed), smallest point first, memory trimmed between points. Per
  point: commit-to-receipt p50 and p99; memory per stream (RSS growth from before the
  point's streams opened to all of them open and idle, before any append); the server's
  CPU seconds per thousand deliveries while the appends run. Nchan under the same load
  beside each point it can hold (one nginx worker: one process's descriptors).
* Writers: 1, 4, 16 and 64 single-event appenders over HTTP beside psycopg doing the same
  INSERTs at the same concurrency: events/s and the p99 of one append.

A process may hold at most this machine's descriptor limit of sockets (its hard limit,
which only root could raise): a point larger than ``STREAMS_PER_LOADGEN`` runs several
load generators, each with its share of the streams, the sessions and the rate, started
together; their samples are merged.
"""

from __future__ import annotations

import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from benchmarks import nchan
from benchmarks.loadgen import percentile, rss_kib
from benchmarks.scenarios import (
    CHECKOUT,
    Figure,
    bench_token,
    console,
    deliveries,
    loadgen,
    measuring_seconds,
    new_sessions,
    psycopg_single_inserts,
    settle,
    versus_nchan,
)
from ledger.testing import ServerProcess

STREAMS = (1_000, 5_000, 10_000, 20_000)
WRITERS = (1, 4, 16, 64)
# --quick runs in the test suite beside other modules whose servers open connections of
# their own: a baseline taking all but ten of PostgreSQL's left them waiting past their
# clients' timeouts (a WebSocket handshake through nginx timed out in CI).
QUICK_CONNECTIONS = 8
STREAMS_PER_SESSION = 10
RATE = 100.0
# Streams and a margin of other descriptors per load generator (and per nginx worker).
DESCRIPTOR_MARGIN = 1_000


def streams_per_process() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1] - DESCRIPTOR_MARGIN


def shared_latency(
    base: dict[str, Any],
    sessions: list[str],
    streams: int,
    seconds: float,
    server_pid: int | None,
    per_process: int,
) -> dict[str, Any]:
    """The latency load of ``streams`` session streams over ``sessions``, split over load
    generators of at most ``per_process`` streams; merged, with the server's RSS once
    every stream is open and its CPU over the appends (read by the first generator)."""
    parts = max(1, math.ceil(streams / per_process))
    with tempfile.TemporaryDirectory(prefix="ledger-growth-") as tmp:
        results, rss_open = run_together(
            base, sessions, streams, seconds, server_pid, parts, Path(tmp)
        )
    samples = [sample for result in results for sample in result.pop("samples_ms")]
    merged: dict[str, Any] = {
        key: sum(result[key] or 0 for result in results)
        for key in ("appends", "received", "expected", "readers", "readers_complete")
    }
    merged.update(
        failed_opens=sum(r["failed_opens"] for r in results),
        failed_open_reasons=[r["failed_open_reasons"] for r in results],
        unreadable_lines=sum(r["unreadable_lines"] for r in results),
        p50_ms=statistics.median(samples) if samples else None,
        p99_ms=percentile(samples, 0.99) if samples else None,
        server_rss_kib_open=rss_open,
        server_cpu_seconds=results[0]["server_cpu_seconds"],
        client_cpu_percent=max(r["client_cpu_percent"] for r in results),
        load_generators=parts,
    )
    return merged


def run_together(
    base: dict[str, Any],
    sessions: list[str],
    streams: int,
    seconds: float,
    server_pid: int | None,
    parts: int,
    tmp: Path,
) -> tuple[list[dict[str, Any]], int | None]:
    """``parts`` load generators sharing one load, appending once all their streams are
    open: their results, and the server's RSS at that moment."""
    runs = []
    for k in range(parts):
        params = {
            **base,
            "sessions": sessions[k::parts],
            "subscribers": streams // parts,
            "rate": RATE / parts,
            "seconds": seconds,
            "poll_interval": None,
            "keep_samples": True,
            "wait_for_go": True,
            # 20,000 opening at once take about two minutes here, the server shedding the
            # storm with 503 and Retry-After (LEDGER_MAX_OPENING_STREAMS): a client waits.
            "open_patience": 900.0,
            "server_pid": server_pid if k == 0 else None,
            # Tens of thousands of samples: through a pipe they came back cut at 64 KiB.
            "result_path": str(tmp / f"{k}.json"),
        }
        runs.append(
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks.loadgen", "latency", json.dumps(params)],
                cwd=CHECKOUT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for run in runs:
        assert run.stdout is not None
        run.stdout.readline()  # {"ready": N}: this generator's streams are open
    rss_open = rss_kib(server_pid) if server_pid else None
    for run in runs:
        assert run.stdin is not None
        run.stdin.write("go\n")
        run.stdin.flush()
    for run in runs:
        run.communicate()
        if run.returncode != 0:
            raise RuntimeError(f"a load generator failed ({run.returncode})")
    return [json.loads((tmp / f"{k}.json").read_text()) for k in range(parts)], rss_open


def stream_figures(server: ServerProcess, quick: bool) -> list[Figure]:
    seconds = measuring_seconds(quick)
    scale = 100 if quick else 1  # --quick proves the scenario runs, at 10 to 200 streams
    points = [count // scale for count in STREAMS]
    # --quick splits its largest point too, so that the merging runs wherever it does.
    per_process = 150 if quick else streams_per_process()
    grown = ServerProcess(
        server.database_url,
        server.data_dir / "growth",
        env={**server.env, "LEDGER_MEMORY_TRIM_SECONDS": "1"},
        options=server.options,
    ).start()
    assert grown.process is not None
    figures: list[Figure] = []
    token = bench_token()
    try:
        with httpx.Client(
            base_url=grown.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as client:
            every = new_sessions(client, points[-1] // STREAMS_PER_SESSION, "growth")
        base = {"host": "127.0.0.1", "port": grown.port, "token": token}
        for count in points:
            console.print(f"growth: {count:,} streams …")
            sessions = every[: count // STREAMS_PER_SESSION]
            settle(grown)
            time.sleep(2)  # a trim round: what the last point freed is given back
            before = rss_kib(grown.process.pid)
            ours = shared_latency(base, sessions, count, seconds, grown.process.pid, per_process)
            theirs = nchan_point(sessions, count, seconds, per_process)
            # 10,000 streams over 1,000 sessions: the target within 5x of Nchan.
            ratio_point = count == points[STREAMS.index(10_000)]
            figures += point_figures(count, len(sessions), ours, theirs, before, ratio_point)
    finally:
        grown.stop()
    return figures


def nchan_point(
    sessions: list[str], count: int, seconds: float, per_process: int
) -> dict[str, Any] | None:
    """Nchan under the same load, when installed and its one worker can hold the streams."""
    if not nchan.available() or count > streams_per_process():
        return None
    with nchan.Nchan() as hub:
        base = {"host": "127.0.0.1", "port": hub.port, "token": "", "target": "nchan"}
        return shared_latency(base, sessions, count, seconds, None, per_process)


def point_figures(
    count: int,
    sessions: int,
    ours: dict[str, Any],
    theirs: dict[str, Any] | None,
    rss_before: int,
    ratio_point: bool,
) -> list[Figure]:
    scenario = f"growth: {count:,} SSE streams over {sessions:,} sessions, {RATE:g} appends/s"
    notes = {**deliveries(ours), "load_generators": ours["load_generators"]}
    figures = [
        Figure(
            scenario=scenario,
            metric=name,
            value=round(ours[name], 2),
            unit="ms",
            baseline=round(theirs[name], 2) if theirs else None,
            baseline_label="nginx + Nchan under the same load" if theirs else None,
            notes=notes,
        )
        for name in ("p50_ms", "p99_ms")
    ]
    if theirs is not None and ratio_point:
        figures.append(versus_nchan(scenario, ours, theirs, 5, "<= 5x"))
    figures.append(
        Figure(
            scenario=scenario,
            metric="server memory per stream",
            value=round((ours["server_rss_kib_open"] - rss_before) / count, 1),
            unit="KiB",
        )
    )
    delivered = ours["received"]
    figures.append(
        Figure(
            scenario=scenario,
            metric="server CPU seconds per 1,000 deliveries",
            value=round(ours["server_cpu_seconds"] / delivered * 1000, 3) if delivered else 0.0,
            unit="s",
        )
    )
    return figures


def spare_connections(url: str, margin: int = 10) -> int:
    """How many more connections PostgreSQL takes now, less a margin (the servers' pools
    may still grow): 64 baseline writers beside a server's pools pass the default
    ``max_connections`` of 100, so the baseline then runs as many as fit, and says so."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int"
            " - (SELECT count(*) FROM pg_stat_activity)"
        ).fetchone()
    return max(1, int(row[0]) - margin) if row else 1


def writer_figures(server: ServerProcess, url: str, quick: bool) -> list[Figure]:
    seconds = measuring_seconds(quick)
    token = bench_token()
    with httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        sessions = new_sessions(client, max(WRITERS), "writers")
    base = {"host": "127.0.0.1", "port": server.port, "token": token}
    figures = []
    for writers in WRITERS:
        console.print(f"growth: {writers} writers …")
        ours = loadgen(
            "appends", **base, sessions=sessions, writers=writers, seconds=seconds, batch=1
        )
        connections = min(writers, spare_connections(url), QUICK_CONNECTIONS if quick else writers)
        theirs = psycopg_single_inserts(url, connections, seconds)
        scenario = f"growth: {writers} single-event appenders over HTTP"
        label = f"psycopg, one INSERT per transaction, {connections} connections"
        figures.append(
            Figure(
                scenario=scenario,
                metric="events/s",
                value=round(ours["events_per_second"]),
                unit="ev/s",
                baseline=round(theirs["events_per_second"]),
                baseline_label=label,
                notes={
                    "ratio": round(ours["events_per_second"] / theirs["events_per_second"], 3),
                    "errors": ours["errors"],
                    "client_cpu_percent": ours["client_cpu_percent"],
                },
            )
        )
        figures.append(
            Figure(
                scenario=scenario,
                metric="p99 append latency",
                value=round(ours["p99_ms"], 2),
                unit="ms",
                baseline=round(theirs["p99_ms"], 2),
                baseline_label=label,
            )
        )
    return figures


def growth_figures(server: ServerProcess, url: str, quick: bool) -> list[Figure]:
    return stream_figures(server, quick) + writer_figures(server, url, quick)
