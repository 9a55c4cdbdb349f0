"""``python -m benchmarks [--quick] [--output FILE]``: run every scenario, write the report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.scenarios import run
from ledger.settings import get_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run the benchmarks against LEDGER_DATABASE_URL's server (or the "
        "embedded one), each in a database of its own, and write a JSON report.",
    )
    parser.add_argument("--quick", action="store_true", help="a tenth of the size")
    parser.add_argument("--output", default="bench-results.json")
    args = parser.parse_args(argv)
    return run(get_settings(), quick=args.quick, output=Path(args.output))


if __name__ == "__main__":
    sys.exit(main())
