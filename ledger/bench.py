"""Benchmarks (``ledger bench``, ``make bench``): real server process, real PostgreSQL.

Each scenario runs against a fresh database on the configured server (or the embedded
one), reports its figure beside a baseline measured in the same run where there is one,
and the whole run is written as JSON and printed as a table. Timings are medians of
several runs; nothing here is asserted by the test suite.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql
from rich.console import Console
from rich.table import Table

from ledger.auth import Role, TokenVerifier, load_keys
from ledger.db import libpq_url, resolve_database_url, sqlalchemy_url
from ledger.migrate import upgrade
from ledger.serverproc import ServerProcess
from ledger.settings import Settings

console = Console(stderr=True)
SECRET = "bench-secret-bench-secret-bench-secret-0123456789"
SEED_START = datetime(2026, 1, 1, tzinfo=UTC)
SEED_DAYS = 30
REPEATS = 5


@dataclass(frozen=True)
class Figure:
    scenario: str
    metric: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_label: str | None = None
    target: str | None = None
    met: bool | None = None


def machine() -> dict[str, Any]:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_kib = 0
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        memory_kib = int(meminfo.read_text().split()[1])
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "system": platform.platform(),
    }


def median_seconds(action: Callable[[], object], repeats: int = REPEATS) -> float:
    action()  # warm caches and plans once
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def seed(url: str, events: int) -> None:
    """Ten events per session over thirty days; one session in ten fails."""
    sessions = max(events // 10, 1)
    spacing = SEED_DAYS * 86400 / sessions
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO sessions (id, patient_id, created_at)
            SELECT md5(s::text)::uuid, 'patient-' || (s %% 5000),
                   %(start)s + s * %(spacing)s * interval '1 second'
            FROM generate_series(1, %(sessions)s) AS s
            """,
            {"start": SEED_START, "spacing": spacing, "sessions": sessions},
        )
        conn.execute(
            """
            INSERT INTO events (session_id, version, type, status, progress, error, actor,
                                recorded_at, prev_hash, hash)
            SELECT md5(s::text)::uuid, v,
                   CASE WHEN v < 10 THEN 'progress'
                        WHEN s %% 10 = 0 THEN 'error' ELSE 'complete' END,
                   CASE WHEN v < 10 THEN (ARRAY['uploaded', 'queued', 'transcribing',
                             'transcribing', 'transcribing', 'diarizing', 'diarizing',
                             'analyzing', 'analyzing'])[v]
                        WHEN s %% 10 = 0 THEN 'failed' ELSE 'processed' END,
                   CASE WHEN v = 10 AND s %% 10 <> 0 THEN 100 ELSE v * 10 END,
                   CASE WHEN v = 10 AND s %% 10 = 0
                        THEN (ARRAY['codec', 'timeout', 'gpu lost'])[1 + s %% 3] END,
                   'bench',
                   %(start)s + s * %(spacing)s * interval '1 second'
                       + v * (20 + (s * 7 + v * 13) %% 100) * interval '1 second',
                   repeat('0', 64), repeat('0', 64)
            FROM generate_series(1, %(sessions)s) AS s, generate_series(1, 10) AS v
            """,
            {"start": SEED_START, "spacing": spacing, "sessions": sessions},
        )
        conn.execute("ANALYZE")


def analytics_figures(server: ServerProcess, url: str, events: int) -> list[Figure]:
    verifier = TokenVerifier(Settings(jwt_secret=SECRET), load_keys(Settings(jwt_secret=SECRET)))
    headers = {"Authorization": f"Bearer {verifier.mint(Role.AUDITOR, 'bench', 3600)}"}
    window = {
        "from": SEED_START.isoformat(),
        "to": (SEED_START + timedelta(days=SEED_DAYS + 1)).isoformat(),
    }
    label = f"analytics over {events:,} events"
    figures = []
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=120) as client:
        for name, params in (
            ("summary", {}),
            ("stages", {}),
            ("throughput", {"bucket": "hour"}),
        ):

            def call(name: str = name, params: dict[str, str] = params) -> None:
                response = client.get(f"/api/analytics/{name}", params={**window, **params})
                response.raise_for_status()

            seconds = median_seconds(call)
            baseline = None
            if name == "summary":
                baseline = median_seconds(lambda: view_summary(url, window))
            figures.append(
                Figure(
                    scenario=label,
                    metric=f"GET /api/analytics/{name}",
                    value=round(seconds, 3),
                    unit="s",
                    baseline=None if baseline is None else round(baseline, 3),
                    baseline_label=None if baseline is None else "SQL on session_outcomes view",
                    target="<= 2 s" if name == "summary" else None,
                    met=seconds <= 2.0 if name == "summary" else None,
                )
            )
    return figures


def view_summary(url: str, window: dict[str, str]) -> None:
    """What a BI tool would run: the same figures straight from the documented view."""
    with psycopg.connect(url) as conn:
        conn.execute(
            """
            SELECT outcome, count(*),
                   percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY seconds_to_end)
            FROM session_outcomes WHERE ended_at >= %s AND ended_at < %s GROUP BY outcome
            """,
            (window["from"], window["to"]),
        ).fetchall()


def print_table(results: list[Figure], info: dict[str, Any]) -> None:
    table = Table(title=f"ledger bench: {info['cpu']}, {info['cores']} cores")
    for column in ("scenario", "metric", "value", "baseline", "target", "met"):
        table.add_column(column)
    for f in results:
        baseline = "—" if f.baseline is None else f"{f.baseline} {f.unit} ({f.baseline_label})"
        met = "—" if f.met is None else ("yes" if f.met else "NO")
        table.add_row(f.scenario, f.metric, f"{f.value} {f.unit}", baseline, f.target or "—", met)
    Console().print(table)


def run(settings: Settings, *, quick: bool, output: Path) -> int:
    events = 100_000 if quick else 1_000_000
    server_url = resolve_database_url(settings)
    name = f"ledger_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = libpq_url(sqlalchemy_url(server_url).set(database=name))
    try:
        upgrade(url)
        console.print(f"seeding {events:,} events …")
        started = time.perf_counter()
        seed(url, events)
        console.print(f"seeded in {time.perf_counter() - started:.1f} s")
        with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
            server = ServerProcess(url, Path(tmp), env={"LEDGER_JWT_SECRET": SECRET}).start()
            try:
                results = analytics_figures(server, url, events)
            finally:
                server.stop()
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    info = machine()
    report = {
        "ran_at": datetime.now(UTC).isoformat(),
        "quick": quick,
        "machine": info,
        "results": [asdict(f) for f in results],
    }
    output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(results, info)
    console.print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(run(Settings(), quick="--quick" in sys.argv, output=Path("bench-results.json")))
