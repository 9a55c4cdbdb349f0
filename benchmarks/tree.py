"""The Merkle tree's figures: building it, proving against it, and what it costs appends.

* Building: migrations 0003 to 0005 over the seeded ledger (1,000,000 events in the full run).
* Proofs: inclusion and consistency at that size over HTTP, p99 of 500 each.
* Appends with the tree growing in the background beside a server with it switched off
  (``LEDGER_CHECKPOINT_SECONDS=0``), one server at a time on a database of their own,
  runs interleaved, medians.
* How far behind commit a checkpoint covers an event, from the stored checkpoints.
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

import httpx
import psycopg

from benchmarks.loadgen import percentile
from benchmarks.scenarios import (
    Figure,
    bench_database,
    bench_server,
    bench_token,
    console,
    loadgen,
    measuring_seconds,
    new_sessions,
    total_events,
    wait_signed,
)
from ledger.settings import Settings
from ledger.testing import ServerProcess

PROOFS = 500


def build_figure(events: int, seconds: float) -> Figure:
    return Figure(
        scenario=f"Merkle tree over {events:,} existing events",
        metric="build (migrations 0003 to 0005)",
        value=round(seconds, 1),
        unit="s",
        target="< 60 s" if events >= 1_000_000 else None,
        met=seconds < 60 if events >= 1_000_000 else None,
    )


def proof_figures(server: ServerProcess, url: str) -> list[Figure]:
    headers = {"Authorization": f"Bearer {bench_token()}"}
    # Measured once the tree has caught up with everything appended so far, so that the
    # proofs do not share the cores with the tree's growth.
    size = wait_signed(server, headers, total_events(url))
    with psycopg.connect(url) as conn:
        positions = [p for (p,) in conn.execute("SELECT unnest(positions) FROM merkle_batches")]
    pick = random.Random(7)
    figures = []
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client:
        for kind, params in (
            ("inclusion", lambda: {"position": pick.choice(positions), "tree_size": size}),
            ("consistency", lambda: {"first": pick.randint(1, size), "second": size}),
        ):
            client.get(f"/api/proofs/{kind}", params=params()).raise_for_status()  # warm
            millis = []
            for _ in range(PROOFS):
                started = time.perf_counter()
                client.get(f"/api/proofs/{kind}", params=params()).raise_for_status()
                millis.append((time.perf_counter() - started) * 1000)
            p99 = percentile(millis, 0.99)
            figures.append(
                Figure(
                    scenario=f"{kind} proof at {size:,} leaves, over HTTP",
                    metric="p99",
                    value=round(p99, 2),
                    unit="ms",
                    target="< 10 ms",
                    met=p99 < 10,
                    notes={"p50_ms": round(statistics.median(millis), 2), "requests": PROOFS},
                )
            )
    return figures


def append_cost_figures(
    settings: Settings,
    data_dir: Path,
    seconds: float,
    rounds: int,
    every: int = 10,
    *,
    quick: bool = False,
) -> list[Figure]:
    """Single and batched appends with the tree on (as deployed) and off, interleaved, each
    server alone on a database of its own: the tree's growth (behind the global order) must
    not burden the other side's runs. Each run with the tree (single, then batched) starts
    once it has caught up, so it pays for the growth of its own appends only. ``every`` is
    the tree-on server's LEDGER_CHECKPOINT_SECONDS (the deployed default; ``--quick``
    takes 1 s, so its waits for a covering checkpoint do not dominate the suite's run)."""
    token = bench_token()
    headers = {"Authorization": f"Bearer {token}"}
    rates: dict[tuple[str, bool], list[float]] = {}
    with bench_database(settings) as url:
        sessions: list[str] = []
        window = (0.0, 0.0)
        for round_index in range(rounds):
            for on in (True, False):
                env = {"LEDGER_CHECKPOINT_SECONDS": str(every if on else 0)}
                directory = data_dir / f"tree-{'on' if on else 'off'}"
                server = bench_server(url, directory, env, quick=quick)
                server.start()
                try:
                    if not sessions:
                        with httpx.Client(base_url=server.base_url, headers=headers) as client:
                            sessions = new_sessions(client, 20)
                    started = time.time()
                    base = {"host": "127.0.0.1", "port": server.port, "token": token}
                    for label, writers, batch, chosen in (
                        ("single", 16, 1, sessions[:16]),
                        ("batched", 4, 100, sessions[16:20]),
                    ):
                        if on:  # no run pays for the growth of the run before it
                            wait_signed(server, headers, total_events(url))
                        run = loadgen(
                            "appends",
                            **base,
                            sessions=chosen,
                            writers=writers,
                            seconds=seconds,
                            batch=batch,
                        )
                        rates.setdefault((label, on), []).append(run["events_per_second"])
                    if on and round_index == rounds - 1:
                        window = (started, time.time())
                        wait_signed(server, headers, total_events(url))
                finally:
                    server.stop()
        figures = [
            tree_cost_figure(label, rates[(label, True)], rates[(label, False)])
            for label in ("single", "batched")
        ]
        figures.append(checkpoint_lag_figure(url, *window, every))
    return figures


def tree_cost_figure(label: str, on: list[float], off: list[float]) -> Figure:
    with_tree, without = statistics.median(on), statistics.median(off)
    return Figure(
        scenario=f"{label} appends with the tree growing in the background",
        metric="events/s",
        value=round(with_tree),
        unit="ev/s",
        baseline=round(without),
        baseline_label="the same, tree and checkpoints switched off",
        target=">= 95% of baseline",
        met=with_tree >= 0.95 * without,
        notes={"runs_on": [round(r) for r in on], "runs_off": [round(r) for r in off]},
    )


def checkpoint_lag_figure(url: str, since: float, until: float, every: int) -> Figure:
    """From an event's commit (recorded_at) to the first checkpoint whose tree holds it,
    over the events of the last run with the tree on."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            """
            SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag),
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY lag), count(*)
            FROM (
                SELECT extract(epoch FROM c.signed_at - e.recorded_at) AS lag
                FROM merkle_batches b
                CROSS JOIN LATERAL unnest(b.positions) WITH ORDINALITY AS l(position, o)
                JOIN events e USING (position)
                JOIN LATERAL (
                    SELECT signed_at FROM checkpoints
                    WHERE tree_size > b.first_leaf + l.o - 1 ORDER BY tree_size LIMIT 1
                ) c ON true
                WHERE e.recorded_at BETWEEN to_timestamp(%s) AND to_timestamp(%s)
            ) lags
            """,
            (since, until),
        ).fetchone()
    assert row is not None
    p50, p99, count = row
    return Figure(
        scenario=f"checkpoint coverage under the append load (LEDGER_CHECKPOINT_SECONDS={every})",
        metric="commit to first covering checkpoint, p99",
        value=round(float(p99 or 0), 2),
        unit="s",
        notes={"p50_s": round(float(p50 or 0), 2), "events": int(count)},
    )


def tree_figures(
    settings: Settings,
    server: ServerProcess,
    url: str,
    events: int,
    build_seconds: float,
    quick: bool,
) -> list[Figure]:
    figures = [build_figure(events, build_seconds)]
    console.print("proofs …")
    figures += proof_figures(server, url)
    console.print("appends with the tree on and off …")
    figures += append_cost_figures(
        settings,
        server.data_dir,
        measuring_seconds(quick),
        1 if quick else 5,
        every=1 if quick else 10,
        quick=quick,
    )
    return figures
