"""The two NOTIFY channels and their payloads, written and read here only.

``ledger_events`` announces committed events, one line ``<session> <first> <last>`` per
session of a transaction (about 60 bytes each, within NOTIFY's 8,000); ``ledger_access``
announces a removed care assignment as the JSON array ``[therapist, patient]``. Both are
wake-up hints: whatever they announce is in the tables, and a payload that cannot be read
makes its readers go there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from uuid import UUID

from ledger.domain import CarePair, VersionRange

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "ledger_events"
ACCESS_CHANNEL = "ledger_access"


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A line of an events payload that could not be read (another version's format?)."""

    line: str


def announce_events(ranges: Iterable[VersionRange]) -> str:
    return "\n".join(f"{r.session_id} {r.first} {r.last}" for r in ranges)


def read_events(payload: str) -> list[VersionRange | Unreadable]:
    """One entry per line, in order; a line that cannot be read is :class:`Unreadable`."""
    found: list[VersionRange | Unreadable] = []
    for line in payload.split("\n"):
        try:
            raw_id, raw_first, raw_last = line.split(" ")
            found.append(
                VersionRange(session_id=UUID(raw_id), first=int(raw_first), last=int(raw_last))
            )
        except ValueError:
            found.append(Unreadable(line))
    return found


def announce_removal(pair: CarePair) -> str:
    return json.dumps([pair.therapist_id, pair.patient_id])


def read_removal(payload: str) -> CarePair | None:
    """The removed assignment, or None when the payload is not one."""
    try:
        therapist_id, patient_id = json.loads(payload)
    except (ValueError, TypeError):
        log.warning("ignoring malformed access notification %r", payload)
        return None
    return CarePair(therapist_id=str(therapist_id), patient_id=str(patient_id))
