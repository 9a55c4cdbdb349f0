"""Care assignments: which therapist may read which patient's sessions (admins only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from ledger.api.deps import CurrentPrincipal, RuntimeDep
from ledger.api.schemas import error_responses
from ledger.auth import require_admin
from ledger.domain import CarePair

router = APIRouter(prefix="/api/care-assignments", tags=["care assignments"])

Identifier = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]
ERRORS = error_responses(401, 403, 422)


@router.put("/{therapist_id}/{patient_id}", status_code=204, responses=ERRORS)
async def assign(
    therapist_id: Identifier,
    patient_id: Identifier,
    runtime: RuntimeDep,
    principal: CurrentPrincipal,
) -> Response:
    require_admin(principal)
    await runtime.care.add(CarePair(therapist_id=therapist_id, patient_id=patient_id))
    return Response(status_code=204)


@router.delete("/{therapist_id}/{patient_id}", status_code=204, responses=ERRORS)
async def unassign(
    therapist_id: Identifier,
    patient_id: Identifier,
    runtime: RuntimeDep,
    principal: CurrentPrincipal,
) -> Response:
    require_admin(principal)
    await runtime.care.remove(CarePair(therapist_id=therapist_id, patient_id=patient_id))
    return Response(status_code=204)
