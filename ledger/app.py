"""The FastAPI application: wiring, lifespan and middleware, nothing else."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from ledger import __version__
from ledger.api import (
    analytics,
    assignments,
    audit,
    cookies,
    dashboard,
    errors,
    events,
    health,
    lean,
    sessions,
    streams,
)
from ledger.api.deps import Runtime
from ledger.api.limits import BodyLimit
from ledger.api.observe import Observe
from ledger.api.schemas import STORABLE_JSON_VALUE
from ledger.auth import TokenVerifier, load_keys
from ledger.db import create_engine, resolve_database_url
from ledger.eventlog import EventLog
from ledger.hub import Hub
from ledger.reporting import Reporting
from ledger.settings import Settings, get_settings
from ledger.store import Store

log = logging.getLogger(__name__)

LISTENER_START_SECONDS = 10.0


def _refine_openapi(app: FastAPI) -> None:
    """Two corrections to the generated schema, so that it says exactly what is accepted.

    * ``data`` refers to a recursive ``StorableJson`` schema, added here.
    * An optional header or query parameter is either absent or a string: FastAPI renders
      it as "string or null", which tools then send as the literal text ``null``.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        schema.setdefault("components", {}).setdefault("schemas", {})
        schema["components"]["schemas"].setdefault("StorableJson", STORABLE_JSON_VALUE)
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                for parameter in operation.get("parameters", []):
                    variants = parameter.get("schema", {}).get("anyOf", [])
                    concrete = [v for v in variants if v.get("type") != "null"]
                    if parameter.get("in") in ("header", "query") and len(concrete) == 1 < len(
                        variants
                    ):
                        title = parameter["schema"].get("title")
                        parameter["schema"] = {**concrete[0], **({"title": title} if title else {})}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None, *, database_url: str | None = None) -> FastAPI:
    """Build the app; the database is reached (or started) in the lifespan, not here."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = database_url or resolve_database_url(settings)
        # The event log's pool serves appends and streams; the engine the rest.
        event_log = EventLog(url, size=settings.pool_size)
        await event_log.open()
        engine = create_engine(url, pool_size=max(1, settings.pool_size // 2))
        store = Store(engine, event_log)
        hub = Hub(
            store,
            url,
            queue_size=settings.subscriber_queue_size,
            probe_seconds=settings.listener_probe_seconds,
        )
        verifier = TokenVerifier(settings, load_keys(settings))
        app.state.runtime = Runtime(settings, store, Reporting(engine), verifier, hub)
        await hub.start()
        if not await hub.wait_listening(LISTENER_START_SECONDS):
            log.warning("the LISTEN connection is not up yet; /readyz reports it")
        try:
            yield
        finally:
            await hub.stop()
            await engine.dispose()
            await event_log.close()

    app = FastAPI(
        title="ledger",
        version=__version__,
        summary="An event-sourced progress ledger with exactly-resumable live streams.",
        lifespan=lifespan,
    )
    errors.install(app)
    _refine_openapi(app)
    for module in (sessions, events, streams, audit, analytics, assignments, cookies, health):
        app.include_router(module.router)
    lean.install(app, streams.LEAN_ROUTES + sessions.LEAN_ROUTES)
    dashboard.install(app)
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
    app.add_middleware(Observe)
    return app
