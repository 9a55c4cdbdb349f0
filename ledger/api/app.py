"""The FastAPI application: routes, middleware and error handlers around the runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from ledger import __version__
from ledger.api import docs, errors, lean
from ledger.api.admission import OpeningGate
from ledger.api.middleware import BodyLimit, Observe, StrictJson
from ledger.api.openapi import refine_openapi
from ledger.api.routes import LEAN, LEAN_SOCKETS, ROUTERS, dashboard
from ledger.runtime import running
from ledger.settings import Settings, get_settings


def create_app(settings: Settings | None = None, *, database_url: str | None = None) -> FastAPI:
    """Build the app; the database is reached (or started) in the lifespan, not here."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running(settings, database_url) as runtime:
            app.state.runtime = runtime
            yield

    app = FastAPI(
        title="ledger",
        version=__version__,
        summary="An event-sourced progress ledger with exactly-resumable live streams.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    errors.install(app)
    refine_openapi(app)
    for router in ROUTERS:
        app.include_router(router)
    lean.install(app, LEAN)
    dashboard.install(app)
    docs.install(app)
    app.add_middleware(lean.LeanSockets, routes=lean.socket_routes(app, LEAN_SOCKETS))
    app.add_middleware(StrictJson)  # inside the limit: it reads the buffered body
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_body_bytes, timeout=settings.body_timeout_seconds
    )
    app.add_middleware(OpeningGate, limit=settings.max_opening_streams)
    # Outside the body checks and the gate, so that their refusals carry CORS headers.
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
            expose_headers=["ETag", "Idempotent-Replayed", "Location", "Retry-After"],
        )
    app.add_middleware(Observe)
    return app
