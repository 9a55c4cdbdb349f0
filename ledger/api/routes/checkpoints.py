"""Signed checkpoints, their verifier key, and proofs against the tree (design, section 9).

Admins and auditors read checkpoints and proofs; the verifier key is public. Proofs are
answered only up to the latest signed size: a proof is worth something to an auditor only
against a head the server has signed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

from ledger.api.deps import CurrentPrincipal, RuntimeDep
from ledger.api.schemas import MAX_POSITION, error_responses
from ledger.auth import require_read_all
from ledger.errors import BadRequest, Conflict, NotFound
from ledger.transparency.merkle import consistency_ranges, inclusion_ranges

router = APIRouter(tags=["checkpoints"])

TEXT: dict[str, Any] = {"content": {"text/plain": {}}}


class CheckpointOut(BaseModel):
    tree_size: int
    root_hash: str
    signed_at: datetime
    note: str


class CheckpointListOut(BaseModel):
    checkpoints: list[CheckpointOut]


class InclusionOut(BaseModel):
    leaf_index: int
    tree_size: int
    proof: list[str]


class ConsistencyOut(BaseModel):
    first: int
    second: int
    proof: list[str]


def no_checkpoints() -> NotFound:
    return NotFound(
        "no checkpoint has been signed yet (LEDGER_CHECKPOINT_SECONDS=0 turns them off)"
    )


@router.get(
    "/api/checkpoint",
    response_class=PlainTextResponse,
    responses={200: TEXT, **error_responses(401, 403, 404)},
)
async def latest_checkpoint(runtime: RuntimeDep, principal: CurrentPrincipal) -> PlainTextResponse:
    """The latest checkpoint, exactly the signed note: keep it, and check later ones against it."""
    require_read_all(principal)
    latest = await runtime.checkpoints.latest()
    if latest is None:
        raise no_checkpoints()
    return PlainTextResponse(latest.note)


@router.get(
    "/api/checkpoints",
    response_model=CheckpointListOut,
    responses=error_responses(401, 403),
)
async def list_checkpoints(
    runtime: RuntimeDep,
    principal: CurrentPrincipal,
    after: Annotated[int, Query(ge=0, le=MAX_POSITION, description="Only larger trees.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> CheckpointListOut:
    """Stored checkpoints of trees larger than ``after``, smallest first."""
    require_read_all(principal)
    found = await runtime.checkpoints.after(after, limit)
    return CheckpointListOut(
        checkpoints=[
            CheckpointOut(
                tree_size=c.tree_size,
                root_hash=c.root_hash.hex(),
                signed_at=c.signed_at,
                note=c.note,
            )
            for c in found
        ]
    )


@router.get(
    "/api/checkpoint/key",
    response_class=PlainTextResponse,
    responses={200: TEXT, **error_responses(404)},
)
async def verifier_key(runtime: RuntimeDep) -> PlainTextResponse:
    """The verifier key, ``<name>+<key ID>+<base64 key>``: public, no token needed."""
    if runtime.checkpoint_verifier is None:
        raise NotFound("checkpoints are turned off on this server (LEDGER_CHECKPOINT_SECONDS=0)")
    return PlainTextResponse(runtime.checkpoint_verifier.line() + "\n")


@router.get(
    "/api/proofs/inclusion",
    response_model=InclusionOut,
    responses=error_responses(400, 401, 403, 404, 409),
)
async def prove_inclusion(
    runtime: RuntimeDep,
    principal: CurrentPrincipal,
    position: Annotated[int, Query(ge=1, le=MAX_POSITION, description="The event's position.")],
    tree_size: Annotated[int, Query(ge=1, le=MAX_POSITION, description="A signed size.")],
) -> InclusionOut:
    """The RFC 9162 audit path of the event at ``position`` in the tree of ``tree_size``."""
    require_read_all(principal)
    found = await runtime.proofs.placement(position)
    if tree_size > found.signed_size:
        raise BadRequest(
            f"tree_size {tree_size} is beyond the latest checkpoint ({found.signed_size})"
        )
    if found.leaf_index is None:
        if not found.is_event:
            raise NotFound(f"no event at position {position}")
        raise Conflict(f"the event at position {position} is not in the tree yet")
    if found.leaf_index >= tree_size:
        raise Conflict(
            f"the event at position {position} is leaf {found.leaf_index}:"
            f" not in a tree of {tree_size}"
        )
    proof = await runtime.proofs.hashes(inclusion_ranges(found.leaf_index, tree_size))
    return InclusionOut(
        leaf_index=found.leaf_index, tree_size=tree_size, proof=[p.hex() for p in proof]
    )


@router.get(
    "/api/proofs/consistency",
    response_model=ConsistencyOut,
    responses=error_responses(400, 401, 403),
)
async def prove_consistency(
    runtime: RuntimeDep,
    principal: CurrentPrincipal,
    first: Annotated[int, Query(ge=0, le=MAX_POSITION, description="The earlier size.")],
    second: Annotated[int, Query(ge=0, le=MAX_POSITION, description="The later size.")],
) -> ConsistencyOut:
    """The RFC 9162 proof that the tree of ``second`` extends the tree of ``first``
    (empty when they are equal, or ``first`` is 0)."""
    require_read_all(principal)
    if first > second:
        raise BadRequest(f"first ({first}) is larger than second ({second})")
    signed = await runtime.proofs.signed_size()
    if second > signed:
        raise BadRequest(f"second ({second}) is beyond the latest checkpoint ({signed})")
    proof = await runtime.proofs.hashes(consistency_ranges(first, second))
    return ConsistencyOut(first=first, second=second, proof=[p.hex() for p in proof])
