"""The process's one LISTEN connection: standalone, autocommit, outside the pool.

It reconnects with backoff, probes the connection after a silence (a peer that vanished is
noticed in seconds), and reports upward to the hub: that it (re)connected, and what each
notification says. It keeps no state of its own about subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg

from ledger import metrics
from ledger.live.hub import Hub
from ledger.storage.notifications import (
    ACCESS_CHANNEL,
    EVENTS_CHANNEL,
    MARKS_CHANNEL,
    read_access,
    read_events,
    read_mark,
)
from ledger.storage.pool import CONNECTION_OPTIONS

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 5.0
# Shown in pg_stat_activity, so an operator (or a fault test) can find the listener.
LISTENER_NAME = "ledger-listener"


class Listener:
    def __init__(self, url: str, hub: Hub, *, probe_seconds: float) -> None:
        self.url = url
        self.hub = hub
        self.probe_seconds = probe_seconds
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever(), name="ledger-listener")

    async def wait_listening(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._listening.wait()
        return self.listening

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen_forever(self) -> None:
        backoff = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url,
                    autocommit=True,
                    application_name=LISTENER_NAME,
                    **CONNECTION_OPTIONS,
                ) as conn:
                    await conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    await conn.execute(f"LISTEN {ACCESS_CHANNEL}")
                    await conn.execute(f"LISTEN {MARKS_CHANNEL}")
                    self._listening.set()
                    metrics.LISTENER_UP.set(1)
                    metrics.LISTENER_RECONNECTS.inc()
                    self.hub.connected()
                    backoff = 0.1
                    await self._receive(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("listener connection lost: %s", exc)
            finally:
                self._listening.clear()
                metrics.LISTENER_UP.set(0)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def _receive(self, conn: psycopg.AsyncConnection[object]) -> None:
        while True:
            received = 0
            async for notify in conn.notifies(timeout=self.probe_seconds):
                received += 1
                if notify.channel == ACCESS_CHANNEL:
                    change = read_access(notify.payload)
                    if change is not None:
                        self.hub.access_changed(change)
                elif notify.channel == MARKS_CHANNEL:
                    mark = read_mark(notify.payload)
                    if mark is not None:
                        self.hub.marked(mark)
                else:
                    self.hub.announced(read_events(notify.payload))
            if received == 0:
                # Silence: make sure the connection is still alive rather than assume it.
                async with asyncio.timeout(self.probe_seconds):
                    metrics.DB_STATEMENTS.inc()
                    await conn.execute("SELECT 1")
            if conn.closed:
                raise psycopg.OperationalError("the LISTEN connection was closed")
