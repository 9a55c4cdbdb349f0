"""Applying Alembic migrations from code (``ledger migrate``, ``make run``, the tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

PACKAGE_DIR = Path(__file__).resolve().parent.parent


def migrations_dir() -> Path:
    """The repository's ``migrations/`` in a checkout, the copy inside the wheel otherwise."""
    for candidate in (PACKAGE_DIR.parent / "migrations", PACKAGE_DIR / "migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise FileNotFoundError("the migrations directory is missing from this installation")


def alembic_config(libpq_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["libpq_url"] = libpq_url
    return config


def upgrade(libpq_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(libpq_url), revision)
