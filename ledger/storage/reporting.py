"""Read-only reporting over the ledger: analytics figures, exports and chain verification.

Kept apart from the appends and the streams' reads because these queries scan ranges and
whole histories. Every figure here has the same definition as the SQL
views created by migration 0002 (``session_outcomes``, ``stage_durations``), and the tests
check the two against each other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from sqlalchemy import (
    DateTime,
    and_,
    bindparam,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.domain import ChainVerifier, Event
from ledger.storage.global_order import global_selection
from ledger.storage.tables import EVENT_COLUMNS, event_from_row, events, stage_durations

Bucket = Literal["hour", "day"]
STEPS: dict[str, str] = {"hour": "1 hour", "day": "24 hours"}
EXPORT_BATCH = 1000
TOP_REASONS = 10
# Analytics sorts whole ranges (window functions, percentiles); with PostgreSQL's default
# 4 MB they spill to disk and the planner walks an index at random instead. Per query only.
ANALYTICS_WORK_MEM = "64MB"


@dataclass(frozen=True, slots=True)
class Summary:
    started: int
    completed: int
    failed: int
    failure_rate: float | None
    p50_seconds: float | None
    p95_seconds: float | None
    p99_seconds: float | None
    top_failure_reasons: list[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class StageFigures:
    status: str
    visits: int
    mean_seconds: float
    p50_seconds: float
    p95_seconds: float


@dataclass(frozen=True, slots=True)
class BucketFigures:
    start: datetime
    events: int
    completed: int
    failed: int


@dataclass(frozen=True, slots=True)
class ChainReport:
    session_id: UUID
    events: int = 0
    head_hash: str | None = None
    first_bad_version: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.first_bad_version is None


class Reporting:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # -- analytics --------------------------------------------------------------------

    @asynccontextmanager
    async def _analytics(self) -> AsyncIterator[AsyncConnection]:
        """One read-only snapshot for all of a figure's statements (REPEATABLE READ), so
        that, say, a histogram's bounds and its counts see the same sessions."""
        async with self.engine.connect() as conn:
            await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                await conn.execute(text(f"SET LOCAL work_mem = '{ANALYTICS_WORK_MEM}'"))
                yield conn

    @staticmethod
    def _outcomes(start: datetime, end: datetime) -> Any:
        """Each terminal event in ``[start, end)``: its type, reason, and seconds since the
        session's first event."""
        first = events.alias("first_event")
        terminal = events.alias("terminal")
        in_range = and_(terminal.c.recorded_at >= start, terminal.c.recorded_at < end)
        seconds = func.extract("epoch", terminal.c.recorded_at - first.c.recorded_at)
        return (
            select(
                terminal.c.type,
                func.coalesce(terminal.c.error, terminal.c.message, "unknown").label("reason"),
                seconds.label("seconds"),
            )
            .select_from(
                terminal.join(
                    first, and_(first.c.session_id == terminal.c.session_id, first.c.version == 1)
                )
            )
            .where(terminal.c.type.in_(("complete", "error")), in_range)
            .subquery()
        )

    async def summary(self, start: datetime, end: datetime) -> Summary:
        """Sessions started, and outcomes reached, in ``[start, end)``.

        A session starts with its first event; it completes or fails with its terminal
        event; time to completion runs from the first event to ``processed``.
        """
        outcomes = self._outcomes(start, end)
        started = (
            select(func.count())
            .where(events.c.version == 1, events.c.recorded_at >= start, events.c.recorded_at < end)
            .scalar_subquery()
        )
        is_complete = outcomes.c.type == "complete"

        def percentile(fraction: float) -> Any:
            return (
                func.percentile_cont(fraction).within_group(outcomes.c.seconds).filter(is_complete)
            )

        figures = select(
            started.label("started"),
            func.count().filter(is_complete).label("completed"),
            func.count().filter(outcomes.c.type == "error").label("failed"),
            percentile(0.5).label("p50"),
            percentile(0.95).label("p95"),
            percentile(0.99).label("p99"),
        ).select_from(outcomes)
        reasons = (
            select(outcomes.c.reason, func.count().label("n"))
            .where(outcomes.c.type == "error")
            .group_by(outcomes.c.reason)
            .order_by(literal_column("n").desc(), outcomes.c.reason)
            .limit(TOP_REASONS)
        )
        async with self._analytics() as conn:
            row = (await conn.execute(figures)).one()
            top = [(r.reason, int(r.n)) for r in await conn.execute(reasons)]
        ended = row.completed + row.failed
        return Summary(
            started=int(row.started),
            completed=int(row.completed),
            failed=int(row.failed),
            failure_rate=None if ended == 0 else row.failed / ended,
            p50_seconds=row.p50,
            p95_seconds=row.p95,
            p99_seconds=row.p99,
            top_failure_reasons=top,
        )

    async def completion_times(
        self, start: datetime, end: datetime, bins: int
    ) -> list[tuple[float, float, int]]:
        """How many sessions completed in ``[start, end)`` took how long: ``bins`` equal
        ranges of seconds ``(from, to, sessions)`` from the fastest to the slowest (the same
        durations as the summary's percentiles); none when nothing completed."""
        outcomes = self._outcomes(start, end)
        seconds = outcomes.c.seconds
        completed = select(seconds).where(outcomes.c.type == "complete").subquery()
        bounds = select(func.min(completed.c.seconds), func.max(completed.c.seconds))
        async with self._analytics() as conn:
            low, high = (await conn.execute(bounds)).one()
            if low is None:
                return []
            low, high = float(low), float(high)
            width = (high - low) / bins or 1.0
            bucket = func.least(func.floor((completed.c.seconds - low) / width), bins - 1).label(
                "bucket"
            )
            stmt = select(bucket, func.count()).group_by(bucket)
            counts = {int(row[0]): int(row[1]) for row in await conn.execute(stmt)}
        return [(low + i * width, low + (i + 1) * width, counts.get(i, 0)) for i in range(bins)]

    async def stages(self, start: datetime, end: datetime) -> list[StageFigures]:
        """Time per status visit entered in ``[start, end)`` and since left (the view).

        Only sessions with an event in the range are read: the filter on ``session_id``
        reaches inside the view's window functions, so the whole table is not scanned.
        """
        touched = (
            select(events.c.session_id)
            .where(events.c.recorded_at >= start, events.c.recorded_at < end)
            .distinct()
        )
        seconds = stage_durations.c.seconds
        stmt = (
            select(
                stage_durations.c.status,
                func.count().label("visits"),
                func.avg(seconds).label("mean"),
                func.percentile_cont(0.5).within_group(seconds).label("p50"),
                func.percentile_cont(0.95).within_group(seconds).label("p95"),
            )
            .where(
                stage_durations.c.session_id.in_(touched),
                stage_durations.c.entered_at >= start,
                stage_durations.c.entered_at < end,
                stage_durations.c.left_at.is_not(None),
            )
            .group_by(stage_durations.c.status)
            .order_by(stage_durations.c.status)
        )
        async with self._analytics() as conn:
            return [
                StageFigures(
                    status=r.status,
                    visits=int(r.visits),
                    mean_seconds=float(r.mean),
                    p50_seconds=float(r.p50),
                    p95_seconds=float(r.p95),
                )
                for r in await conn.execute(stmt)
            ]

    async def throughput(
        self, start: datetime, end: datetime, bucket: Bucket
    ) -> list[BucketFigures]:
        """Events, completions and failures per UTC hour or day, empty buckets included."""
        stmt = text(
            """
            WITH counts AS (
                SELECT date_trunc(:unit, recorded_at, 'UTC') AS bucket,
                       count(*) AS events,
                       count(*) FILTER (WHERE type = 'complete') AS completed,
                       count(*) FILTER (WHERE type = 'error') AS failed
                FROM events
                WHERE recorded_at >= :start AND recorded_at < :end
                GROUP BY 1
            )
            SELECT series.bucket AT TIME ZONE 'UTC' AS bucket,
                   coalesce(counts.events, 0) AS events,
                   coalesce(counts.completed, 0) AS completed,
                   coalesce(counts.failed, 0) AS failed
            FROM generate_series(
                     date_trunc(:unit, CAST(:start AS timestamptz), 'UTC'),
                     CAST(:end AS timestamptz) - interval '1 microsecond',
                     CAST(:step AS interval)
                 ) AS series(bucket)
            LEFT JOIN counts ON counts.bucket = series.bucket
            ORDER BY series.bucket
            """
        ).bindparams(
            bindparam("start", type_=DateTime(timezone=True)),
            bindparam("end", type_=DateTime(timezone=True)),
        )
        params = {"unit": bucket, "start": start, "end": end, "step": STEPS[bucket]}
        async with self._analytics() as conn:
            return [
                BucketFigures(
                    # In UTC whatever the session's TimeZone (in another zone, a bucket at
                    # year 1 or 9999 would not be a Python datetime).
                    start=r.bucket.replace(tzinfo=UTC),
                    events=int(r.events),
                    completed=int(r.completed),
                    failed=int(r.failed),
                )
                for r in await conn.execute(stmt, params)
            ]

    # -- export -----------------------------------------------------------------------

    async def export_session(self, session_id: UUID, after: int) -> AsyncIterator[list[Event]]:
        """A session's events after ``after``, in batches from a server-side cursor."""
        stmt = (
            select(*EVENT_COLUMNS)
            .where(events.c.session_id == session_id, events.c.version > after)
            .order_by(events.c.version)
        )
        async for batch in self._stream(stmt):
            yield batch

    async def export_range(
        self, after: int, start: datetime | None, end: datetime | None
    ) -> AsyncIterator[list[Event]]:
        """Events recorded in ``[start, end)`` after a cursor, in commit-safe global order."""
        async for batch in self._stream(global_selection(after, start, end)):
            yield batch

    async def _stream(self, stmt: Any) -> AsyncIterator[list[Event]]:
        async with self.engine.connect() as conn:
            result = await conn.stream(stmt.execution_options(yield_per=EXPORT_BATCH))
            async for partition in result.partitions():
                yield [event_from_row(row) for row in partition]

    async def count_events(self, session_id: UUID | None = None) -> int:
        stmt = select(func.count()).select_from(events)
        if session_id is not None:
            stmt = stmt.where(events.c.session_id == session_id)
        async with self.engine.connect() as conn:
            return int((await conn.execute(stmt)).scalar_one())

    # -- verification -----------------------------------------------------------------

    async def verify(self, session_id: UUID | None = None) -> AsyncIterator[ChainReport]:
        """Recompute every chain (or one) from the table, in constant memory."""
        stmt = select(*EVENT_COLUMNS).order_by(events.c.session_id, events.c.version)
        if session_id is not None:
            stmt = stmt.where(events.c.session_id == session_id)
        current: _Chain | None = None
        async for batch in self._stream(stmt):
            for event in batch:
                if current is not None and current.session_id != event.session_id:
                    yield current.report()
                    current = None
                if current is None:
                    current = _Chain(event.session_id)
                current.feed(event)
        if current is not None:
            yield current.report()


class _Chain:
    def __init__(self, session_id: UUID) -> None:
        self.session_id = session_id
        self.verifier = ChainVerifier()
        self.count = 0
        self.head_hash: str | None = None

    def feed(self, event: Event) -> None:
        self.verifier.feed(event)
        self.count += 1
        self.head_hash = event.hash

    def report(self) -> ChainReport:
        broken = self.verifier.broken
        return ChainReport(
            session_id=self.session_id,
            events=self.count,
            head_hash=self.head_hash,
            first_bad_version=None if broken is None else broken.version,
            reason=None if broken is None else broken.reason,
        )
