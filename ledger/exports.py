"""History export formats: NDJSON and CSV, written batch by batch (constant memory)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable
from typing import Any, Literal

from ledger.domain import EVENT_FIELDS, Event
from ledger.wire import dumps

ExportFormat = Literal["ndjson", "csv"]
MEDIA_TYPES: dict[str, str] = {
    "ndjson": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
}
# The stored columns, in their order (an auditor's spreadsheet reads like the table).
CSV_COLUMNS = EVENT_FIELDS


def audit_record(event: Event) -> dict[str, Any]:
    """The public event plus its chain links, so an auditor can recompute every hash."""
    return {**event.to_json(), "prev_hash": event.prev_hash, "hash": event.hash}


def ndjson_lines(batch: Iterable[Event]) -> bytes:
    return "".join(dumps(audit_record(event)) + "\n" for event in batch).encode()


def csv_header() -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(CSV_COLUMNS)
    return buffer.getvalue().encode()


def csv_rows(batch: Iterable[Event]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for event in batch:
        record = audit_record(event)
        record["data"] = dumps(record["data"])
        writer.writerow([record[column] for column in CSV_COLUMNS])
    return buffer.getvalue().encode()


async def encode(batches: AsyncIterator[list[Event]], fmt: ExportFormat) -> AsyncIterator[bytes]:
    """One chunk per database batch: nothing waits for the whole history."""
    if fmt == "csv":
        yield csv_header()
    async for batch in batches:
        yield ndjson_lines(batch) if fmt == "ndjson" else csv_rows(batch)
