"""The three NOTIFY channels and their payloads, written and read here only.

``ledger_events`` announces committed events, one line ``<session> <first> <last>`` per
session of a transaction (about 60 bytes each, within NOTIFY's 8,000); ``ledger_access``
announces a removed care assignment as the JSON array ``[therapist, patient]`` and an added
one as ``["added", therapist, patient]`` (which a process from before additions were
announced ignores); ``ledger_marks`` carries the commit-safe point of a moment (see
:class:`Mark`). All are wake-up hints: whatever they announce is in the tables, and a
payload that cannot be read makes its readers go there.
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
MARKS_CHANNEL = "ledger_marks"


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


@dataclass(frozen=True, slots=True)
class AccessChange:
    pair: CarePair
    added: bool


def announce_removal(pair: CarePair) -> str:
    return json.dumps([pair.therapist_id, pair.patient_id])


def announce_addition(pair: CarePair) -> str:
    return json.dumps(["added", pair.therapist_id, pair.patient_id])


def read_access(payload: str) -> AccessChange | None:
    """The added or removed assignment, or None when the payload is neither."""
    try:
        found = json.loads(payload)
        if not isinstance(found, list):
            raise TypeError(found)
        if len(found) == 3 and found[0] == "added":
            pair = CarePair(therapist_id=str(found[1]), patient_id=str(found[2]))
            return AccessChange(pair, True)
        therapist_id, patient_id = found
    except (ValueError, TypeError):
        log.warning("ignoring malformed access notification %r", payload)
        return None
    return AccessChange(CarePair(therapist_id=str(therapist_id), patient_id=str(patient_id)), False)


@dataclass(frozen=True, slots=True)
class Mark:
    """A moment's commit-safe point, announced in the order of the commits.

    ``xmin`` is the oldest transaction still open at that moment; ``tail`` is the last event
    in global order ``(tx_id, position)`` of the transactions before it (``tail_tx`` its
    transaction). Every transaction below ``xmin`` committed before the mark did, so its
    events were announced before the mark arrives: a process that has handed out everything
    announced before a mark has handed out every event up to ``tail``.
    """

    xmin: int
    tail: int
    tail_tx: int

    def merged(self, later: Mark) -> Mark:
        """Both marks applied one after the other, as one: the higher ``xmin`` and the
        later tail (a cursor's point only moves forward, and an entry below either
        ``xmin`` is dropped by one of them)."""
        tail_tx, tail = max((self.tail_tx, self.tail), (later.tail_tx, later.tail))
        return Mark(xmin=max(self.xmin, later.xmin), tail=tail, tail_tx=tail_tx)


def mark_statement(safe_point: str) -> str:
    """The statement that sends a mark, from one that selects ``(xmin, tail_tx, tail)``:
    the snapshot and the NOTIFY in one statement, so the mark follows every commit it
    covers."""
    return (
        f"SELECT pg_notify('{MARKS_CHANNEL}', p.xmin::text || ' ' || p.tail::text"
        f" || ' ' || p.tail_tx::text) FROM ({safe_point}) AS p(xmin, tail_tx, tail)"
    )


def read_mark(payload: str) -> Mark | None:
    try:
        xmin, tail, tail_tx = (int(part) for part in payload.split(" "))
    except ValueError:
        log.warning("ignoring malformed mark %r", payload)
        return None
    return Mark(xmin=xmin, tail=tail, tail_tx=tail_tx)
