"""Analytics over a time range (admins and auditors): the same figures as the SQL views."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from ledger.api.deps import CurrentPrincipal, RuntimeDep
from ledger.api.schemas import error_responses
from ledger.api.time_range import RangeDep
from ledger.auth import require_read_all
from ledger.errors import BadRequest

router = APIRouter(prefix="/api/analytics", tags=["analytics"])
ERRORS = error_responses(400, 401, 403)
MAX_BUCKETS = 10_000


class FailureReason(BaseModel):
    reason: str
    count: int


class SummaryOut(BaseModel):
    range: dict[str, str]
    sessions_started: int
    sessions_completed: int
    sessions_failed: int
    failure_rate: float | None
    time_to_completion_seconds: dict[str, float | None]
    top_failure_reasons: list[FailureReason]


class StageOut(BaseModel):
    status: str
    visits: int
    mean_seconds: float
    p50_seconds: float
    p95_seconds: float


class CompletionBinOut(BaseModel):
    from_seconds: float
    to_seconds: float
    sessions: int


class CompletionTimesOut(BaseModel):
    range: dict[str, str]
    bins: list[CompletionBinOut]


class StagesOut(BaseModel):
    range: dict[str, str]
    stages: list[StageOut]


class BucketOut(BaseModel):
    start: str
    events: int
    completed: int
    failed: int


class ThroughputOut(BaseModel):
    range: dict[str, str]
    bucket: str
    buckets: list[BucketOut]


def _range(window: Any) -> dict[str, str]:
    return {"from": window.start.isoformat(), "to": window.end.isoformat()}


@router.get("/summary", response_model=SummaryOut, responses=ERRORS)
async def summary(runtime: RuntimeDep, principal: CurrentPrincipal, window: RangeDep) -> SummaryOut:
    """Sessions started (first event) and ended (terminal event) in ``[from, to)``."""
    require_read_all(principal)
    figures = await runtime.reporting.summary(window.start, window.end)
    return SummaryOut(
        range=_range(window),
        sessions_started=figures.started,
        sessions_completed=figures.completed,
        sessions_failed=figures.failed,
        failure_rate=figures.failure_rate,
        time_to_completion_seconds={
            "p50": figures.p50_seconds,
            "p95": figures.p95_seconds,
            "p99": figures.p99_seconds,
        },
        top_failure_reasons=[
            FailureReason(reason=reason, count=count)
            for reason, count in figures.top_failure_reasons
        ],
    )


@router.get("/completion-times", response_model=CompletionTimesOut, responses=ERRORS)
async def completion_times(
    runtime: RuntimeDep,
    principal: CurrentPrincipal,
    window: RangeDep,
    bins: Annotated[int, Query(ge=1, le=100, description="How many equal ranges.")] = 12,
) -> CompletionTimesOut:
    """The distribution of time to completion (first event to ``processed``) of the
    sessions completed in ``[from, to)``: equal ranges of seconds, fastest first."""
    require_read_all(principal)
    found = await runtime.reporting.completion_times(window.start, window.end, bins)
    return CompletionTimesOut(
        range=_range(window),
        bins=[
            CompletionBinOut(from_seconds=low, to_seconds=high, sessions=count)
            for low, high, count in found
        ],
    )


@router.get("/stages", response_model=StagesOut, responses=ERRORS)
async def stages(runtime: RuntimeDep, principal: CurrentPrincipal, window: RangeDep) -> StagesOut:
    """Time per status visit (a run of events with one status) entered in the range."""
    require_read_all(principal)
    found = await runtime.reporting.stages(window.start, window.end)
    return StagesOut(
        range=_range(window),
        stages=[
            StageOut(
                status=s.status,
                visits=s.visits,
                mean_seconds=s.mean_seconds,
                p50_seconds=s.p50_seconds,
                p95_seconds=s.p95_seconds,
            )
            for s in found
        ],
    )


@router.get("/throughput", response_model=ThroughputOut, responses=ERRORS)
async def throughput(
    runtime: RuntimeDep,
    principal: CurrentPrincipal,
    window: RangeDep,
    bucket: Annotated[Literal["hour", "day"], Query()] = "hour",
) -> ThroughputOut:
    """Events, completions and failures per UTC hour or day; empty buckets are zeros."""
    require_read_all(principal)
    span = (window.end - window.start).total_seconds()
    per_bucket = 3600 if bucket == "hour" else 86400
    if span / per_bucket > MAX_BUCKETS:
        raise BadRequest(f"at most {MAX_BUCKETS} buckets: widen 'bucket' or narrow the range")
    found = await runtime.reporting.throughput(window.start, window.end, bucket)
    return ThroughputOut(
        range=_range(window),
        bucket=bucket,
        buckets=[
            BucketOut(
                start=b.start.isoformat(), events=b.events, completed=b.completed, failed=b.failed
            )
            for b in found
        ],
    )
