"""One place that turns errors into HTTP answers."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg import InterfaceError as DriverInterfaceError
from psycopg import OperationalError as DriverOperationalError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ledger.errors import LedgerError, TooManyRequests, Unauthorized, Unavailable
from ledger.logs import Throttled

log = logging.getLogger(__name__)
unavailable_log = Throttled(log)


async def ledger_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LedgerError)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    if isinstance(exc, TooManyRequests):
        headers = {"Retry-After": str(exc.retry_after)}
    elif isinstance(exc, Unavailable):
        headers = {"Retry-After": "1"}
    detail: object = exc.detail
    if exc.status_code >= 500 and not isinstance(exc, Unavailable):
        # The server's own data is at fault, not the request: said plainly, and logged.
        log.error("%s %s: %s", request.method, request.url.path, exc.detail)
    if exc.status_code == 422:
        # Same shape as FastAPI's own validation errors, so a 422 is always one schema.
        detail = [{"loc": ["body"], "msg": exc.detail, "type": "value_error"}]
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=headers)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, without echoing the input back.

    The echoed input may not even be encodable (a NaN in the body), and an error should not
    reflect a caller's data back at them.
    """
    assert isinstance(exc, RequestValidationError)
    detail = [
        {
            "loc": list(error.get("loc", ())),
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in exc.errors()
    ]
    return JSONResponse({"detail": detail}, status_code=422)


async def database_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A lost or refused database connection is a 503 the client may retry, not a 500.

    The hot paths speak psycopg directly, the rest SQLAlchemy: both are covered.
    Anything else the driver raises is a bug and stays a 500.
    """
    # psycopg_pool's PoolTimeout is a psycopg OperationalError.
    unavailable = isinstance(exc, PoolTimeout | DriverOperationalError | DriverInterfaceError) or (
        isinstance(exc, DBAPIError)
        and (isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated)
    )
    if unavailable:
        unavailable_log.warning("database unavailable: %s", exc)
        return JSONResponse(
            {"detail": "database unavailable, retry shortly"},
            status_code=Unavailable.status_code,
            headers={"Retry-After": "1"},
        )
    raise exc


def install(app: FastAPI) -> None:
    app.add_exception_handler(DBAPIError, database_error_handler)
    app.add_exception_handler(PoolTimeout, database_error_handler)
    for driver_error in (DriverOperationalError, DriverInterfaceError):
        app.add_exception_handler(driver_error, database_error_handler)
    app.add_exception_handler(LedgerError, ledger_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
