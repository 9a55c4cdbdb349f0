"""Verifying a session's hash chain (admins and auditors)."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter
from pydantic import BaseModel

from ledger.api.deps import CurrentPrincipal, RuntimeDep
from ledger.api.schemas import error_responses
from ledger.auth import require_read_all
from ledger.storage.reporting import ChainReport

router = APIRouter(prefix="/api/sessions", tags=["audit"])


class VerifyOut(BaseModel):
    session_id: UUID
    ok: bool
    events: int
    head_hash: str | None
    first_bad_version: int | None
    reason: str | None


@router.get(
    "/{session_id}/verify", response_model=VerifyOut, responses=error_responses(401, 403, 404)
)
async def verify_session(
    session_id: UUID, runtime: RuntimeDep, principal: CurrentPrincipal
) -> VerifyOut:
    """Recompute the chain from the stored rows and name the first event that breaks it.

    ``head_hash`` and ``events`` are what an auditor keeps outside the database: a later
    deletion of the newest events leaves an intact but shorter chain, which only a kept
    head reveals.
    """
    require_read_all(principal)
    session = await runtime.sessions.get(session_id)
    # No events yet is an empty, intact chain.
    report = await anext(
        aiter(runtime.reporting.verify(session.id)), ChainReport(session_id=session.id)
    )
    return VerifyOut(
        session_id=session.id,
        ok=report.ok,
        events=report.events,
        head_hash=report.head_hash,
        first_bad_version=report.first_bad_version,
        reason=report.reason,
    )
