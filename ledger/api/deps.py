"""Shared dependencies: the runtime objects, the caller's identity and session access."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from ledger.auth import Principal, Role, may_read_patient
from ledger.domain import CarePair
from ledger.errors import Forbidden, Unauthorized
from ledger.runtime import Runtime
from ledger.storage.sessions import SessionRecord

TOKEN_PARAM = "access_token"
TOKEN_COOKIE = "access_token"


async def get_runtime(connection: HTTPConnection) -> Runtime:
    # Dependencies are async even without awaiting: FastAPI runs plain ones in a thread pool.
    runtime: Runtime = connection.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]

bearer = HTTPBearer(auto_error=False, description="A JWT with `sub` and `role` claims.")


async def get_bearer_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    if credentials is None:
        raise Unauthorized("missing bearer token")
    return credentials.credentials


BearerToken = Annotated[str, Depends(get_bearer_token)]


async def authenticate(runtime: RuntimeDep, token: BearerToken) -> Principal:
    return await runtime.verifier.verify(token)


async def authenticate_stream(connection: HTTPConnection, runtime: RuntimeDep) -> Principal:
    """Header first; else the ``access_token`` query parameter or cookie.

    A browser's native ``EventSource`` (and WebSocket) cannot send an Authorization header.
    """
    header = connection.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        return await runtime.verifier.verify(token.strip())
    candidate = connection.query_params.get(TOKEN_PARAM) or connection.cookies.get(TOKEN_COOKIE)
    if not candidate:
        raise Unauthorized("missing token (Authorization header, access_token query or cookie)")
    return await runtime.verifier.verify(candidate)


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]
StreamPrincipal = Annotated[Principal, Depends(authenticate_stream)]


async def check_read(runtime: Runtime, principal: Principal, session_id: UUID) -> SessionRecord:
    session = await runtime.sessions.get(session_id)
    assigned = principal.role is Role.THERAPIST and await runtime.care.exists(
        CarePair(therapist_id=principal.subject, patient_id=session.patient_id)
    )
    if not may_read_patient(principal, session.patient_id, assigned=assigned):
        raise Forbidden("no access to this session")
    return session


async def readable_session(
    session_id: UUID, runtime: RuntimeDep, principal: CurrentPrincipal
) -> SessionRecord:
    return await check_read(runtime, principal, session_id)


async def streamable_session(
    session_id: UUID, runtime: RuntimeDep, principal: StreamPrincipal
) -> SessionRecord:
    return await check_read(runtime, principal, session_id)


ReadableSession = Annotated[SessionRecord, Depends(readable_session)]
StreamableSession = Annotated[SessionRecord, Depends(streamable_session)]
