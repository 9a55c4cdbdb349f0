"""The ``ledger`` command's token minting, as scripts use it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest

from ledger.settings import find_data_dir
from tests.support import JWT_SECRET


def test_token_mints_what_the_server_accepts() -> None:
    env = {**os.environ, "LEDGER_JWT_SECRET": JWT_SECRET, "LEDGER_JWT_AUDIENCE": "ledger"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledger",
            "token",
            "--role",
            "therapist",
            "--sub",
            "dr-x",
            "--ttl",
            "120",
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    claims = jwt.decode(out.stdout.strip(), JWT_SECRET, algorithms=["HS256"], audience="ledger")
    assert (claims["sub"], claims["role"], claims["aud"]) == ("dr-x", "therapist", "ledger")
    assert 100 <= claims["exp"] - time.time() <= 121


def test_token_refuses_unknown_roles() -> None:
    env = {**os.environ, "LEDGER_JWT_SECRET": JWT_SECRET}
    out = subprocess.run(
        [sys.executable, "-m", "ledger", "token", "--role", "root", "--sub", "x"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "invalid choice" in out.stderr


def test_the_data_directory_is_the_nearest_upward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert find_data_dir() == Path(".ledger")  # none anywhere: the working directory's
    (tmp_path / ".ledger").mkdir()
    assert find_data_dir() == tmp_path.resolve() / ".ledger"
    (deep / ".ledger").mkdir()
    assert find_data_dir() == Path(".ledger")  # the working directory's own comes first


def test_the_search_stops_below_home_and_passes_over_others_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    project = home / "project" / "sub"
    project.mkdir(parents=True)
    (home / ".ledger").mkdir()  # a stray one in the home directory is no project's
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(project)
    assert find_data_dir() == Path(".ledger")
    (home / "project" / ".ledger").mkdir()
    assert find_data_dir() == (home / "project" / ".ledger").resolve()
