"""``python -m benchmarks [--quick] [--only GROUP] [--output FILE]``: run the scenarios, write
the report."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.growth import growth_figures
from benchmarks.scenarios import (
    analytics_figures,
    bench_database,
    bench_server,
    bench_token,
    console,
    seed,
    streaming_figures,
    write_report,
)
from benchmarks.tree import tree_figures
from ledger.settings import Settings, get_settings
from ledger.storage.migrations import upgrade

# The groups of scenarios, each of whose figures stands beside its own baselines, so one can
# run alone (``--only``); the database is seeded and the tree built the same way regardless.
GROUPS = ("analytics", "streaming", "tree", "growth")


def run(
    settings: Settings, *, quick: bool, output: Path, only: frozenset[str] = frozenset(GROUPS)
) -> int:
    events = 100_000 if quick else 1_000_000
    # Seeded as a ledger from before the tree, so that migrations 0003 to 0005
    # are timed building it.
    with bench_database(settings, revision="0002") as url:
        console.print(f"seeding {events:,} events …")
        started = time.perf_counter()
        seed(url, events)
        console.print(f"seeded in {time.perf_counter() - started:.1f} s; building the tree …")
        started = time.perf_counter()
        upgrade(url)
        build_seconds = time.perf_counter() - started
        with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
            server = bench_server(url, Path(tmp), quick=quick).start()
            try:
                results = []
                if "analytics" in only:
                    results += analytics_figures(server, url, events)
                if "streaming" in only:
                    results += streaming_figures(server, url, bench_token(), quick)
                if "tree" in only:
                    results += tree_figures(settings, server, url, events, build_seconds, quick)
                if "growth" in only:
                    results += growth_figures(server, url, quick)
            finally:
                server.stop()
    write_report(output, quick, results)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run the benchmarks against LEDGER_DATABASE_URL's server (or the "
        "embedded one), each in a database of its own, and write a JSON report.",
    )
    parser.add_argument("--quick", action="store_true", help="a tenth of the size")
    parser.add_argument(
        "--only",
        action="append",
        choices=GROUPS,
        help="run only this group of scenarios (repeatable; default: all)",
    )
    parser.add_argument("--output", default="bench-results.json")
    args = parser.parse_args(argv)
    only = frozenset(args.only or GROUPS)
    return run(get_settings(), quick=args.quick, output=Path(args.output), only=only)


if __name__ == "__main__":
    sys.exit(main())
