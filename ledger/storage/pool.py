"""psycopg's own connection pool, for the event table's hot paths (appends, history, fan-out).

Plain SQL on psycopg, not SQLAlchemy: see docs/ARCHITECTURE.md ("Two ways to the database")
for what that saves per append. Every connection is in autocommit: each statement is its
own transaction, with no BEGIN and COMMIT round trips.
"""

from __future__ import annotations

import asyncio
import json
import select
from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection, OperationalError
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from ledger import metrics
from ledger.domain import Event
from ledger.storage.tables import event_from_row

Pool = AsyncConnectionPool[AsyncConnection[Any]]

# A server that vanished without closing TCP (a host gone, a network cut) is noticed in
# seconds, not after the kernel's 15 minutes; a connection attempt gives up in 5 s.
CONNECTION_OPTIONS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def load_json(data: bytes | bytearray | str) -> Any:
    """The standard library's loads, on text: given bytes it sniffs their encoding first,
    a cost per row of every replay. (orjson would be faster, but reads integers beyond 64
    bits as floats, and the hash chain covers the exact values.)"""
    return json.loads(data if isinstance(data, str) else data.decode())


async def configure(conn: AsyncConnection[Any]) -> None:
    set_json_loads(load_json, conn)


async def still_open(conn: AsyncConnection[Any]) -> None:
    """The pool's check on checkout, so a PostgreSQL restart costs no failed request.

    An idle connection has nothing to say: if its socket is readable, the server has
    closed it (or sent a notice), and only then does a round trip find out which; the
    common case costs one ``poll`` instead of psycopg's own check's empty query.
    """
    if conn.closed:
        raise OperationalError("the connection is closed")
    # poll, not select: a server with thousands of streams has descriptors past select's
    # limit of 1024.
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    if poller.poll(0):
        await conn.execute("")


def create_pool(url: str, *, size: int, timeout: float = 30.0) -> Pool:
    """A pool that is not open yet (``await pool.open()``); a request waits ``timeout``
    seconds for a connection, then gets PoolTimeout (a 503).

    The queue is not bounded: after a listener reconnect every subscriber catches up from
    the table at once, and ``make soak`` saw a bound of 8 per connection end 9,728 of 10,000
    streams with TooManyRequests. Storms from outside are held back before the pool, by
    the stream gate (``ledger.api.admission``).
    """
    pool: Pool | None = None
    purging: set[asyncio.Task[None]] = set()

    async def check(conn: AsyncConnection[Any]) -> None:
        try:
            await still_open(conn)
        except Exception:
            # The server dropped this one, so it likely dropped the others (a restart, a
            # failover, pg_terminate_backend): check them all now, in the background.
            # Otherwise the checkout meets them one by one, waiting psycopg's growing
            # backoff after each (1, 2, 4 s...): 503s for seconds from a healthy database.
            if pool is not None and not purging:
                task = asyncio.create_task(pool.check(), name="ledger-pool-check")
                purging.add(task)
                task.add_done_callback(purging.discard)
            raise

    pool = AsyncConnectionPool(
        url,
        min_size=min(4, size),
        max_size=size,
        timeout=timeout,
        open=False,
        kwargs={"autocommit": True, **CONNECTION_OPTIONS},
        check=check,
        configure=configure,
        name="ledger-hot-paths",
    )
    return pool


async def fetch_events(
    conn: AsyncConnection[Any], query: str, params: Sequence[Any] | dict[str, Any]
) -> list[Event]:
    """Run a statement that selects event columns, and decode its rows."""
    metrics.DB_STATEMENTS.inc()
    cursor = await conn.execute(query, params)
    return [event_from_row(row) for row in await cursor.fetchall()]
