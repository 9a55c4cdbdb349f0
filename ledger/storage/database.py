"""Where the database is (the configured server or the embedded one) and the SQLAlchemy
engine on it, which every statement but the hot paths' uses (those: :mod:`.pool`)."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import event, literal, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ledger import metrics
from ledger.database_url import libpq_url, sqlalchemy_url, where
from ledger.errors import SetupError
from ledger.settings import Settings
from ledger.storage.pool import CONNECTION_OPTIONS

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "ledger"

# What either way of reaching the database (the engine, psycopg's pool) may raise;
# psycopg_pool's PoolTimeout is a psycopg.Error too.
DATABASE_ERRORS = (SQLAlchemyError, psycopg.Error)


def start_embedded(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL under ``data_dir`` and return its libpq URL.

    pgserver stops the server when the last process that asked for it exits, and keeps the
    data directory, so a restart finds the same ledger.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs (inside pgserver) warns on every start where XDG_RUNTIME_DIR is
        # unset, which is most servers and containers; its fallback is fine.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        import pgserver

        server = pgserver.get_server(data_dir.resolve() / "pgdata", cleanup_mode="stop")
    with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:
        found = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (EMBEDDED_DATABASE,)
        ).fetchone()
        if found is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(EMBEDDED_DATABASE)))
    url: str = server.get_uri(EMBEDDED_DATABASE)
    log.info("embedded PostgreSQL running", extra={"data_dir": str(data_dir)})
    return url


def resolve_database_url(settings: Settings) -> str:
    """The libpq URL to use: ``LEDGER_DATABASE_URL`` or the embedded server."""
    if settings.database_url:
        return settings.database_url
    return start_embedded(settings.data_dir)


def unreachable(libpq: str | None, error: Exception) -> SetupError:
    """An unreachable database, in one line (None: the embedded one)."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    place = f"at {where(libpq)}" if libpq else "(embedded)"
    return SetupError(f"cannot reach the database {place}: {reason}")


# What a server that is starting, stopping or full says: waiting may help.
PASSING = ("starting up", "shutting down", "too many clients", "recovery", "not yet accepting")


def refused_for_good(error: psycopg.OperationalError) -> bool:
    """A server that answered and refused (no such database or role, a wrong password, no
    pg_hba.conf entry) will refuse again; one that is not there yet may come."""
    text = str(error)
    return "FATAL:" in text and not any(phrase in text for phrase in PASSING)


def wait_for_database(libpq: str, seconds: float) -> None:
    """Until the database answers; a SetupError once ``seconds`` have passed without."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with psycopg.connect(libpq, connect_timeout=max(1, min(5, int(seconds)))) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            if refused_for_good(exc) or time.monotonic() >= deadline:
                raise unreachable(libpq, exc) from None
            log.warning("waiting for the database at %s: %s", where(libpq), exc)
            time.sleep(1.0)


def create_engine(libpq: str, *, pool_size: int, pool_timeout: float = 30.0) -> AsyncEngine:
    """At most ``pool_size`` connections (no overflow: the connection budget is a bound)."""
    engine = create_async_engine(
        sqlalchemy_url(libpq),
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=pool_timeout,
        connect_args=dict(CONNECTION_OPTIONS),
        pool_pre_ping=True,
        pool_recycle=1800,
    )
    count_statements(engine)
    return engine


def count_statements(engine: AsyncEngine) -> None:
    """Count every statement (and pre-ping) sent, so "queries per second" is measurable from
    the app's side, apart from whatever else runs in the database."""

    def counted(*_: object) -> None:
        metrics.DB_STATEMENTS.inc()

    event.listen(engine.sync_engine, "before_cursor_execute", counted)
    event.listen(engine.sync_engine, "engine_connect", counted)


async def ping(engine: AsyncEngine) -> None:
    """One round trip: raises when the database cannot be reached."""
    async with engine.connect() as conn:
        await conn.execute(select(literal(1)))


__all__ = ["libpq_url", "sqlalchemy_url"]
