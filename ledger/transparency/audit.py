"""An NDJSON export checked against a checkpoint, offline: every chain, and the tree's root.

The global export (``/api/events?format=ndjson`` or ``ledger export`` from the start) is in
leaf order and carries each event's ``hash``; its first ``size`` lines must give the
checkpoint's root, and every session's events must chain from the genesis hash. The report
names what differs: a broken chain (an edited, forged or missing event inside a session),
fewer events than the checkpoint covers (events or whole sessions removed from the end),
or another root (something among the covered events changed, went or came).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from ledger.domain import EVENT_FIELDS, ChainVerifier, Event, EventType, Status
from ledger.transparency.merkle import Frontier, leaf_hash
from ledger.transparency.note import Checkpoint

MAX_NAMED = 20  # problems named one by one; the rest are counted
HEX_HASH = re.compile(r"[0-9a-f]{64}")


class BadRecord(ValueError):
    pass


def event_from_record(record: Any) -> Event:
    """An export line's event, strictly: every field, of its type."""
    if not isinstance(record, dict):
        raise BadRecord("not a JSON object")
    missing = [name for name in EVENT_FIELDS if name not in record]
    if missing:
        raise BadRecord(f"no {', '.join(missing)}")
    try:
        values = {name: record[name] for name in EVENT_FIELDS}
        values["session_id"] = UUID(str(record["session_id"]))
        values["type"] = EventType(record["type"])
        values["status"] = Status(record["status"])
        values["recorded_at"] = datetime.fromisoformat(str(record["recorded_at"]))
        for name in ("version", "position", "progress"):
            if not isinstance(record[name], int) or isinstance(record[name], bool):
                raise BadRecord(f"{name} is not an integer")
        digest = record["hash"]
        if not isinstance(digest, str) or not HEX_HASH.fullmatch(digest):
            raise BadRecord("hash is not 64 lowercase hex digits")
        if not isinstance(record["data"], dict):
            raise BadRecord("data is not an object")
    except (ValueError, TypeError) as exc:
        raise BadRecord(str(exc)) from None
    return Event(**values)


@dataclass
class ExportReport:
    checkpoint: Checkpoint
    events: int = 0
    sessions: int = 0
    root: bytes | None = None  # of the first checkpoint.size events, when there are as many
    problems: list[str] = field(default_factory=list)
    more_problems: int = 0

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_NAMED:
            self.problems.append(text)
        else:
            self.more_problems += 1

    @property
    def ok(self) -> bool:
        return not self.problems


def check_export(
    lines: Iterable[bytes],
    checkpoint: Checkpoint,
    progress: Callable[[int], Any] | None = None,
) -> ExportReport:
    report = ExportReport(checkpoint)
    chains: dict[UUID, ChainVerifier] = {}
    broken: set[UUID] = set()
    frontier = Frontier()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = event_from_record(json.loads(line))
        except (ValueError, BadRecord) as exc:
            report.problem(f"line {number}: not an exported event ({exc})")
            continue
        report.events += 1
        if frontier.size < checkpoint.size:
            frontier.append(leaf_hash(bytes.fromhex(event.hash)))
            if frontier.size == checkpoint.size:
                report.root = frontier.root()
        chain = chains.setdefault(event.session_id, ChainVerifier())
        if chain.feed(event) is not None and event.session_id not in broken:
            broken.add(event.session_id)
            assert chain.broken is not None
            report.problem(
                f"session {event.session_id}, version {chain.broken.version}: "
                f"{chain.broken.reason} (line {number})"
            )
        if progress is not None and number % 10_000 == 0:
            progress(number)
    report.sessions = len(chains)
    if checkpoint.size == 0:
        report.root = frontier.root()
    if report.events < checkpoint.size:
        report.problem(
            f"the export holds {report.events} events, the checkpoint covers {checkpoint.size}:"
            f" {checkpoint.size - report.events} signed events are missing"
        )
    elif report.root != checkpoint.root:
        assert report.root is not None
        report.problem(
            f"the export's first {checkpoint.size} events give the root {report.root.hex()},"
            f" the checkpoint signed {checkpoint.root.hex()}: an event among them was changed,"
            " removed, added or moved"
        )
    return report
