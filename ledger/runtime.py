"""The process-wide composition: what lives as long as a server process, built and torn down
in one place (the app's lifespan runs :func:`running`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.auth import TokenVerifier, load_keys
from ledger.checkpointer import Checkpointer
from ledger.live.hub import Hub
from ledger.live.listener import Listener
from ledger.memory import trim_every
from ledger.quotas import Quotas
from ledger.settings import Settings
from ledger.storage import database
from ledger.storage.appends import Appender
from ledger.storage.care import CareAssignments
from ledger.storage.checkpoints import Checkpoints
from ledger.storage.global_order import GlobalOrder
from ledger.storage.history import History
from ledger.storage.pool import create_pool
from ledger.storage.reporting import Reporting
from ledger.storage.scoped import ScopedReads
from ledger.storage.sessions import Sessions
from ledger.storage.tree import Proofs
from ledger.transparency.note import Verifier
from ledger.transparency.signing_key import load_signing_key, verifier_of, vouched_path

log = logging.getLogger(__name__)

LISTENER_START_SECONDS = 10.0


@dataclass(slots=True)
class Runtime:
    """Everything a request needs that lives as long as the process."""

    settings: Settings
    verifier: TokenVerifier
    sessions: Sessions
    care: CareAssignments
    appender: Appender
    history: History
    scoped: ScopedReads
    global_order: GlobalOrder
    reporting: Reporting
    quotas: Quotas
    hub: Hub
    listener: Listener
    proofs: Proofs
    checkpoints: Checkpoints
    # None when checkpoints are turned off (LEDGER_CHECKPOINT_SECONDS=0).
    checkpoint_verifier: Verifier | None
    engine: AsyncEngine = field(repr=False)

    async def database_answers(self) -> bool:
        try:
            await database.ping(self.engine)
        except Exception:
            return False
        return True


@asynccontextmanager
async def running(settings: Settings, url: str | None = None) -> AsyncIterator[Runtime]:
    """Reach (or start) the database, open the pool and the engine, start the listener.

    psycopg's pool serves the hot paths (appends, history, fan-out); the SQLAlchemy engine
    the rest, with half as many connections (docs/ARCHITECTURE.md, "Connections").
    """
    verifier = TokenVerifier(settings, load_keys(settings, create=True))
    url = url or database.resolve_database_url(settings)
    async with contextlib.AsyncExitStack() as stack:
        pool = create_pool(url, size=settings.pool_size, timeout=settings.pool_timeout_seconds)
        await pool.open()
        stack.push_async_callback(pool.close)
        engine = database.create_engine(
            url,
            pool_size=max(1, settings.pool_size // 2),
            pool_timeout=settings.pool_timeout_seconds,
        )
        stack.push_async_callback(engine.dispose)
        history = History(pool)
        care = CareAssignments(engine)
        scoped = ScopedReads(pool)
        hub = Hub(history, care, queue_size=settings.subscriber_queue_size, scoped=scoped)
        stack.push_async_callback(hub.stop)
        listener = Listener(url, hub, probe_seconds=settings.listener_probe_seconds)
        stack.push_async_callback(listener.stop)  # stopped first: nothing reports any more
        await listener.start()
        if verifier.keys.jwks is not None:
            await verifier.keys.jwks.fetch()  # the first requests find the keys loaded
            refreshing = asyncio.create_task(verifier.keys.jwks.run(), name="ledger-jwks")
            stack.callback(refreshing.cancel)
        if settings.memory_trim_seconds:
            trimming = asyncio.create_task(trim_every(settings.memory_trim_seconds))
            stack.callback(trimming.cancel)
        checkpoint_verifier = None
        checkpointer: Checkpointer | None = None
        if settings.checkpoint_seconds:
            key = load_signing_key(settings, create=True)
            assert key is not None  # created if missing
            checkpoint_verifier = verifier_of(settings, key)
            log.info("checkpoints are signed; verifier key: %s", checkpoint_verifier.line())
            checkpointer = Checkpointer(
                engine,
                key,
                checkpoint_verifier,
                settings.checkpoint_seconds,
                vouched_path(settings),
                activity=lambda: hub.activity,
            )
        if not await listener.wait_listening(LISTENER_START_SECONDS):
            log.warning("the LISTEN connection is not up yet; /readyz reports it")
        if checkpointer is not None:
            # Started once the listener is up: its connecting counts as activity, and a
            # round begun before it would be followed by a second one with nothing to do.
            signing = asyncio.create_task(checkpointer.run(), name="ledger-checkpointer")
            stack.callback(signing.cancel)
        yield Runtime(
            settings=settings,
            verifier=verifier,
            sessions=Sessions(engine),
            care=care,
            appender=Appender(pool),
            history=history,
            scoped=scoped,
            global_order=GlobalOrder(engine),
            reporting=Reporting(engine),
            quotas=Quotas(
                streams_per_subject=settings.max_streams_per_subject,
                appends_per_second=settings.max_appends_per_second_per_subject,
            ),
            hub=hub,
            listener=listener,
            proofs=Proofs(pool),
            checkpoints=Checkpoints(engine),
            checkpoint_verifier=checkpoint_verifier,
            engine=engine,
        )
