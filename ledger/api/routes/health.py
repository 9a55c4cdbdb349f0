"""Liveness, readiness and Prometheus metrics: open to anyone, cheap to call."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)

from ledger.api.deps import RuntimeDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        503: {
            "description": "The database is unreachable, the listener is down, or no key"
            " of the identity provider's JWKS has been loaded yet."
        }
    },
)
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """Ready when the database answers, this process's LISTEN connection is up and it has
    keys to verify tokens with. ``keys_error`` says why the last JWKS fetch failed (the
    keys held keep verifying)."""
    database = await runtime.database_answers()
    listener = runtime.listener.listening
    jwks = runtime.verifier.keys.jwks
    keys = jwks is None or jwks.loaded
    ready = database and listener and keys
    body: dict[str, object] = {
        "status": "ready" if ready else "unavailable",
        "database": database,
        "listener": listener,
        "keys": keys,
    }
    if jwks is not None and jwks.error is not None:
        body["keys_error"] = jwks.error
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
async def prometheus_metrics(runtime: RuntimeDep) -> Response:
    """This process's series; with several workers, the sum over all of them."""
    registry = REGISTRY
    if runtime.settings.metrics_dir is not None:
        registry = CollectorRegistry()
        path = str(runtime.settings.metrics_dir)
        multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
