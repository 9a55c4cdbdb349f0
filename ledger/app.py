"""The FastAPI application: wiring, lifespan and middleware, nothing else."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from ledger import __version__
from ledger.api import assignments, cookies, errors, events, health, sessions, streams
from ledger.api.deps import Runtime
from ledger.api.limits import BodyLimit
from ledger.auth import TokenVerifier, load_keys
from ledger.db import create_engine, resolve_database_url
from ledger.hub import Hub
from ledger.settings import Settings, get_settings
from ledger.store import Store

log = logging.getLogger(__name__)

LISTENER_START_SECONDS = 10.0


def create_app(settings: Settings | None = None, *, database_url: str | None = None) -> FastAPI:
    """Build the app; the database is reached (or started) in the lifespan, not here."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = database_url or resolve_database_url(settings)
        engine = create_engine(url, pool_size=settings.pool_size)
        store = Store(engine)
        hub = Hub(
            store,
            url,
            queue_size=settings.subscriber_queue_size,
            probe_seconds=settings.listener_probe_seconds,
        )
        app.state.runtime = Runtime(
            settings, store, TokenVerifier(settings, load_keys(settings)), hub
        )
        await hub.start()
        if not await hub.wait_listening(LISTENER_START_SECONDS):
            log.warning("the LISTEN connection is not up yet; /readyz reports it")
        try:
            yield
        finally:
            await hub.stop()
            await engine.dispose()

    app = FastAPI(
        title="ledger",
        version=__version__,
        summary="An event-sourced progress ledger with exactly-resumable live streams.",
        lifespan=lifespan,
    )
    errors.install(app)
    for module in (sessions, events, streams, assignments, cookies, health):
        app.include_router(module.router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=True,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "If-Match",
                "Last-Event-ID",
            ],
            expose_headers=["ETag", "Idempotent-Replayed", "Location"],
        )
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app
