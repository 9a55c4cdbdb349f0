"""The wheel ships the service, its migrations and its dashboard, and no benchmark code."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_the_package_and_no_benchmarks(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), "."],
        cwd=CHECKOUT,
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("ledger-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ledger/storage/appends.py" in names
    assert "ledger/migrations/env.py" in names
    assert "ledger/static/ledger-client.js" in names
    assert not [n for n in names if "benchmark" in n or "loadgen" in n or "nchan" in n]
    assert not [n for n in names if n.startswith("tests/")]
