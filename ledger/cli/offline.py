"""Work the CLI does straight on the database: verify chains, export history.

Both stream rows from a server-side cursor, so memory stays flat on any ledger, and both
report progress on stderr (shown when stderr is a terminal).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import IO
from uuid import UUID

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from ledger.domain import Event
from ledger.errors import SetupError
from ledger.exports import ExportFormat, encode
from ledger.settings import Settings
from ledger.storage.database import create_engine, resolve_database_url
from ledger.storage.reporting import Reporting
from ledger.storage.sessions import Sessions

stderr = Console(stderr=True)


@asynccontextmanager
async def reporting(settings: Settings) -> AsyncIterator[tuple[Reporting, Sessions]]:
    engine = create_engine(resolve_database_url(settings), pool_size=2)
    try:
        yield Reporting(engine), Sessions(engine)
    finally:
        await engine.dispose()


async def one_session(sessions: Sessions, prefix: str | None) -> UUID | None:
    """The session a (possibly shortened) id names, as the dashboard shows ids."""
    if prefix is None:
        return None
    found = await sessions.starting_with(prefix)
    if not found:
        raise SetupError(f"no session id starts with {prefix!r}")
    if len(found) > 1:
        raise SetupError(f"{prefix!r} names more than one session: give more of its id")
    return found[0]


def progress_bar(what: str) -> Progress:
    return Progress(
        TextColumn(f"{what}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=False,
    )


async def verify(settings: Settings, session: str | None) -> int:
    """Exit status: 0 when every chain is intact, 1 otherwise."""
    broken = sessions = events = 0
    async with reporting(settings) as (reports, table):
        session_id = await one_session(table, session)
        total = await reports.count_events(session_id)
        with progress_bar("verifying events") as bar:
            task = bar.add_task("verify", total=total)
            async for report in reports.verify(session_id):
                sessions += 1
                events += report.events
                bar.advance(task, report.events)
                if not report.ok:
                    broken += 1
                    bar.console.print(
                        f"[red]BROKEN[/red] session {report.session_id}: version "
                        f"{report.first_bad_version}: {report.reason}"
                    )
    if session_id is not None and sessions == 0:
        stderr.print(f"session {session_id} has no events")
    if broken:
        stderr.print(f"[red]{broken} of {sessions} sessions have a broken chain[/red]")
        return 1
    stderr.print(f"[green]OK[/green]: {sessions} sessions, {events} events, every chain intact")
    return 0


async def export(
    settings: Settings,
    fmt: ExportFormat,
    out: IO[bytes],
    *,
    session: str | None,
    after: int,
    start: datetime | None,
    end: datetime | None,
) -> int:
    async with reporting(settings) as (reports, table):
        session_id = await one_session(table, session)
        total = await reports.count_events(session_id)
        if session_id is not None:
            batches = reports.export_session(session_id, after)
        else:
            batches = reports.export_range(after, start, end)
        with progress_bar("exporting events") as bar:
            task = bar.add_task("export", total=total)
            async for chunk in encode(_counted(batches, bar, task), fmt):
                out.write(chunk)
        out.flush()
    return 0


async def _counted(
    batches: AsyncIterator[list[Event]], bar: Progress, task: TaskID
) -> AsyncIterator[list[Event]]:
    async for batch in batches:
        bar.advance(task, len(batch))
        yield batch


def stdout_bytes() -> IO[bytes]:
    return sys.stdout.buffer
