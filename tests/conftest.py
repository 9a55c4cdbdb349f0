"""Fixtures: a real PostgreSQL (LEDGER_TEST_DATABASE_URL or a throwaway embedded one)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, settings

from ledger.settings import Settings
from tests.support import DatabaseFactory, LiveServer

settings.register_profile(
    "ledger",
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    max_examples=25,
)
settings.load_profile("ledger")


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    configured = Settings().test_database_url
    if configured:
        yield configured
        return
    import pgserver

    with tempfile.TemporaryDirectory(prefix="ledger-test-pg-") as tmp:
        server = pgserver.get_server(Path(tmp) / "pgdata", cleanup_mode="stop")
        yield server.get_uri("postgres")
        server.cleanup()


@pytest.fixture(scope="session")
def databases(pg_server_url: str) -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory(pg_server_url)
    factory.build_template()
    yield factory
    factory.drop_all()


@pytest.fixture
def database_url(databases: DatabaseFactory) -> str:
    return databases.create()


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def module_database_url(databases: DatabaseFactory) -> str:
    return databases.create()


@pytest.fixture(scope="module")
def server(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """One real server process per test module, on its own database."""
    live = LiveServer(module_database_url, tmp_path_factory.mktemp("server")).start()
    yield live
    live.stop()


@pytest.fixture
def server_factory(database_url: str, tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Extra server processes on this test's database (for multi-process and fault tests)."""
    started: list[LiveServer] = []

    def start(**env: str) -> LiveServer:
        live = LiveServer(database_url, tmp_path / f"s{len(started)}", env=env).start()
        started.append(live)
        return live

    yield start
    for live in started:
        live.stop()


@pytest.fixture
def server_db(module_database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(module_database_url, autocommit=True) as conn:
        yield conn
