"""``make soak``: many streams held for minutes under appends, a fault, an exact count.

``python -m benchmarks.soak [--streams N] [--sessions N] [--seconds S] [--fault F]``
serves a fresh database with ``--workers`` as deployed, opens the streams (every one a
resuming follower), appends at a steady rate with idempotent retries, injects the fault
halfway, then ends every session at once (the burst) and counts, against the table, every
delivery lost or doubled and every acknowledged append stored other than once. Memory is
read before the streams, at its peak, and after they are gone.

Faults: ``kill-worker`` (SIGKILL one worker; the supervisor starts another),
``drop-connections`` (``pg_terminate_backend`` on every connection of the database: the
listener and the pools, as a database crash looks to the server), ``none``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from benchmarks.loadgen import children, rss_kib
from benchmarks.scenarios import (
    CHECKOUT,
    Figure,
    bench_database,
    bench_server,
    bench_token,
    console,
    write_report,
)
from ledger.settings import Settings, get_settings
from ledger.testing import ServerProcess

FAULTS = ("kill-worker", "drop-connections", "none")


def inject(fault: str, server: ServerProcess, url: str) -> str:
    """Do it; say what was done."""
    assert server.process is not None
    if fault == "kill-worker":
        workers = children(server.process.pid)
        if not workers:
            raise RuntimeError("kill-worker needs `ledger serve --workers 2` or more")
        victim = workers[0]
        os.kill(victim, signal.SIGKILL)
        return f"SIGKILL to worker {victim}"
    if fault == "drop-connections":
        with psycopg.connect(url, autocommit=True) as conn:
            dropped = conn.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        return f"terminated {dropped[0] if dropped else 0} connections"
    return "no fault"


class MemoryWatch:
    """The server's resident memory (all its processes), sampled until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, rss_kib(self.pid))

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def exactness(url: str, result: dict[str, Any]) -> dict[str, int]:
    """Every follower against its session's table; every acknowledgment against the table."""
    with psycopg.connect(url) as conn:
        stored = {
            str(session): (count, top)
            for session, count, top in conn.execute(
                "SELECT session_id, count(*), max(version) FROM events GROUP BY session_id"
            )
        }
    acknowledged: dict[str, int] = result["acknowledged"]
    expected = received = lost = doubled = skipped = resets = unfinished = 0
    for session, got, twice, gaps, reset, _last, done in result["followers"]:
        count, _top = stored.get(session, (0, 0))
        expected += count
        received += got
        lost += count - got
        doubled += twice
        skipped += gaps
        resets += reset
        unfinished += not done
    sessions = set(stored) | set(acknowledged)
    return {
        "deliveries_expected": expected,
        "deliveries_received": received,
        "lost": lost,
        "doubled": doubled,
        "skipped_ids": skipped,
        "resets": resets,
        "streams_unfinished": unfinished,
        "appends_acknowledged": sum(acknowledged.values()),
        "events_stored": sum(count for count, _ in stored.values()),
        "sessions_stored_differently": sum(
            stored.get(s, (0, 0))[0] != acknowledged.get(s, 0) for s in sessions
        ),
    }


def soak(settings: Settings, args: argparse.Namespace) -> int:
    token = bench_token()
    with bench_database(settings) as url, tempfile.TemporaryDirectory(prefix="ledger-soak-") as tmp:
        server = bench_server(url, Path(tmp)).start()
        try:
            assert server.process is not None
            with server.client(headers={"Authorization": f"Bearer {token}"}) as client:
                sessions = [
                    client.post("/api/sessions", json={"patient_id": f"soak-{i % 50}"})
                    .raise_for_status()
                    .json()["id"]
                    for i in range(args.sessions)
                ]
            before = rss_kib(server.process.pid)
            params = {
                "host": "127.0.0.1",
                "port": server.port,
                "token": token,
                "sessions": sessions,
                "streams": args.streams,
                "writers": args.writers,
                "rate": args.rate,
                "seconds": args.seconds,
                "result_path": str(Path(tmp) / "load-result.json"),
            }
            console.print(
                f"{args.streams:,} streams over {args.sessions:,} sessions, "
                f"{args.rate:g} appends/s for {args.seconds:g} s, fault: {args.fault}"
            )
            load = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.loadgen", "soak", json.dumps(params)],
                cwd=CHECKOUT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert load.stdin is not None
            assert load.stdout is not None
            with MemoryWatch(server.process.pid) as memory:
                ready = load.stdout.readline()
                if not ready:
                    raise RuntimeError("the load generator ended before its streams opened")
                console.print(f"streams open ({ready.strip()}); fault in {args.seconds / 2:g} s")
                time.sleep(args.seconds / 2)
                fault_at = time.time() if args.fault != "none" else None
                console.print(inject(args.fault, server, url))
                load.stdin.write(json.dumps({"fault_at": fault_at}) + "\n")
                load.stdin.close()
                load.wait()
            if load.returncode != 0:
                raise RuntimeError("the load generator failed")
            result: dict[str, Any] = json.loads(Path(params["result_path"]).read_text())
            console.print(f"streams closed; memory after {args.after_seconds:g} s …")
            time.sleep(args.after_seconds)
            after = rss_kib(server.process.pid)
            with httpx.Client(base_url=server.base_url, timeout=10) as probe:
                serving = probe.get("/readyz").status_code == 200
        finally:
            server.stop()
        counts = exactness(url, result)
    figures = report_figures(args, result, counts, (before, memory.peak, after), serving)
    write_report(
        args.output,
        False,
        figures,
        soak={
            "fault": args.fault,
            **{k: v for k, v in result.items() if k not in ("acknowledged", "followers")},
            **counts,
        },
    )
    ok = counts["lost"] == counts["doubled"] == counts["sessions_stored_differently"] == 0
    return 0 if ok and serving else 1


def report_figures(
    args: argparse.Namespace,
    result: dict[str, Any],
    counts: dict[str, int],
    memory: tuple[int, int, int],
    serving: bool,
) -> list[Figure]:
    label = f"soak, fault {args.fault}"
    recovery = result["recovery"]

    def figure(
        metric: str, value: float, unit: str, target: str | None = None, met: bool | None = None
    ) -> Figure:
        return Figure(label, metric, value, unit, target=target, met=met)

    before, peak, after = (round(kib / 1024, 1) for kib in memory)
    return [
        figure("deliveries expected (table)", counts["deliveries_expected"], "events"),
        figure("deliveries received", counts["deliveries_received"], "events"),
        figure("lost", counts["lost"], "events", "0", counts["lost"] == 0),
        figure("doubled", counts["doubled"], "events", "0", counts["doubled"] == 0),
        figure(
            "acknowledged appends stored other than once",
            counts["sessions_stored_differently"],
            "sessions",
            "0",
            counts["sessions_stored_differently"] == 0,
        ),
        figure(
            "streams that never saw their session end",
            counts["streams_unfinished"],
            "streams",
            "0",
            counts["streams_unfinished"] == 0,
        ),
        figure(f"all {result['streams']:,} streams open after", result["all_open_after_s"], "s"),
        figure(
            "stream opens refused while all opened (503 with Retry-After)",
            result["opens_refused_at_start"],
            "opens",
        ),
        figure("stream opens refused in all", result["opens_refused"], "opens"),
        figure("delivery lag p50", result["lag"]["p50_ms"] or 0, "ms"),
        figure("delivery lag p99", result["lag"]["p99_ms"] or 0, "ms"),
        figure(
            f"burst: {result['burst_appends']:,} terminal events, lag p99",
            result["terminal_lag"]["p99_ms"] or 0,
            "ms",
            "< 1000 ms",
            (result["terminal_lag"]["p99_ms"] or 0) < 1000,
        ),
        figure("streams cut by the fault", recovery["streams_cut"], "streams"),
        figure("all cut streams resumed after", recovery["all_resumed_after_s"] or 0, "s"),
        figure(
            "longest pause between acknowledged appends", result["longest_append_gap_s"] or 0, "s"
        ),
        figure("server memory before streams", before, "MiB"),
        figure("server memory peak", peak, "MiB"),
        figure(f"server memory {args.after_seconds:g} s after the streams closed", after, "MiB"),
        figure("serving afterwards", int(serving), "bool", "1", serving),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description="Hold many resuming streams under appends, inject a fault, and count "
        "lost and doubled deliveries against the table. Exit 1 if any.",
    )
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--sessions", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=120.0, help="steady appends")
    parser.add_argument("--rate", type=float, default=100.0, help="appends per second")
    parser.add_argument("--writers", type=int, default=20)
    parser.add_argument("--fault", choices=FAULTS, default="kill-worker")
    # The server gives freed memory back every LEDGER_MEMORY_TRIM_SECONDS (30 by default).
    parser.add_argument(
        "--after-seconds", type=float, default=40.0, help="wait before reading memory after"
    )
    parser.add_argument("--output", type=Path, default=Path("soak-results.json"))
    args = parser.parse_args(argv)
    if args.streams < args.sessions or args.sessions < 1 or args.seconds <= 0:
        parser.error("expected --streams >= --sessions >= 1 and --seconds > 0")
    return soak(get_settings(), args)


if __name__ == "__main__":
    sys.exit(main())
