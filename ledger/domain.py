"""The event model, the status state machine and the per-session hash chain.

Nothing here touches the database or the network, so the rules can be read (and tested)
on their own.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol
from uuid import UUID

from ledger.errors import Conflict

GENESIS_HASH = "0" * 64


class Status(StrEnum):
    UPLOADED = "uploaded"
    QUEUED = "queued"
    TRANSCRIBING = "transcribing"
    DIARIZING = "diarizing"
    ANALYZING = "analyzing"
    PROCESSED = "processed"
    FAILED = "failed"


class EventType(StrEnum):
    PROGRESS = "progress"
    COMPLETE = "complete"
    ERROR = "error"


TERMINAL_TYPES = frozenset({EventType.COMPLETE, EventType.ERROR})


def event_type_for(status: Status) -> EventType:
    """The SSE event name follows from the status: the two terminal ones end the stream."""
    if status is Status.PROCESSED:
        return EventType.COMPLETE
    if status is Status.FAILED:
        return EventType.ERROR
    return EventType.PROGRESS


@dataclass(frozen=True, slots=True)
class NewEvent:
    """What a writer asks to append; the store adds version, actor, time and hashes."""

    status: Status
    progress: int | None = None
    message: str | None = None
    error: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    session_id: UUID
    version: int
    position: int
    type: EventType
    status: Status
    progress: int
    message: str | None
    error: str | None
    data: dict[str, Any]
    actor: str
    recorded_at: datetime
    prev_hash: str
    hash: str

    @property
    def is_terminal(self) -> bool:
        return self.type in TERMINAL_TYPES

    def to_json(self) -> dict[str, Any]:
        """The one public shape of an event: HTTP bodies, SSE ``data:`` and WebSocket."""
        return {
            "session_id": str(self.session_id),
            "version": self.version,
            "position": self.position,
            "type": self.type.value,
            "status": self.status.value,
            "progress": self.progress,
            "message": self.message,
            "error": self.error,
            "data": self.data,
            "actor": self.actor,
            "recorded_at": format_timestamp(self.recorded_at),
        }


# The one description of an event's stored columns, in order: the statements that read
# events, the rows they return, and the CSV export's columns all follow it.
EVENT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Event))


def uuid_prefix_range(prefix: str) -> tuple[UUID, UUID] | None:
    """The first and last UUID that start with these hex digits (dashes ignored), or None
    when it is not a prefix of any UUID: a range an index can scan, unlike ``LIKE``."""
    digits = prefix.replace("-", "").lower()
    if not digits or len(digits) > 32 or any(c not in "0123456789abcdef" for c in digits):
        return None
    return UUID(digits.ljust(32, "0")), UUID(digits.ljust(32, "f"))


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionRange:
    """Versions ``first`` to ``last`` (inclusive) of one session."""

    session_id: UUID
    first: int
    last: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CarePair:
    """A care assignment: ``therapist_id`` may read ``patient_id``'s sessions."""

    therapist_id: str
    patient_id: str


@functools.lru_cache(maxsize=4096)
def format_timestamp(moment: datetime) -> str:
    """UTC, always with microseconds, so the hashed text is the published text.

    Cached: a batch shares one timestamp, and each is formatted for the hash, the answer
    and every stream."""
    # isoformat is C and several times faster than strftime; in UTC it ends in "+00:00".
    return moment.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


class Hashed(Protocol):
    """The fields of an event that the chain covers (everything but position and hashes)."""

    @property
    def version(self) -> int: ...
    @property
    def type(self) -> EventType: ...
    @property
    def status(self) -> Status: ...
    @property
    def progress(self) -> int: ...
    @property
    def message(self) -> str | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def data(self) -> dict[str, Any]: ...


def canonical_json(session_id: UUID, actor: str, recorded_at: datetime, event: Hashed) -> str:
    """The hashed form: sorted keys, no spaces, UTF-8 as is (README: "Hash chain")."""
    return _canonical(
        session_id=str(session_id),
        actor=actor,
        recorded_at=format_timestamp(recorded_at),
        version=event.version,
        kind=event.type,
        status=event.status,
        progress=event.progress,
        message=event.message,
        error=event.error,
        data=event.data,
    )


def _canonical(
    *,
    session_id: str,
    actor: str,
    recorded_at: str,
    version: int,
    kind: EventType,
    status: Status,
    progress: int,
    message: str | None,
    error: str | None,
    data: dict[str, Any],
) -> str:
    # The standard library, not orjson: stored hashes depend on these exact bytes (floats
    # such as 1e-07 are written differently by the two).
    return json.dumps(
        {
            "session_id": session_id,
            "version": version,
            "type": kind.value,
            "status": status.value,
            "progress": progress,
            "message": message,
            "error": error,
            "data": data,
            "actor": actor,
            "recorded_at": recorded_at,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def chain_hash(prev_hash: str, canonical: str) -> str:
    return hashlib.sha256((prev_hash + canonical).encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Head:
    """The latest event of a session, as far as appending needs it."""

    version: int = 0
    progress: int = 0
    hash: str = GENESIS_HASH
    terminal: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Sealed:
    """A new event with everything decided except its global position."""

    version: int
    type: EventType
    status: Status
    progress: int
    message: str | None
    error: str | None
    data: dict[str, Any]
    prev_hash: str
    hash: str

    def stored(
        self, session_id: UUID, position: int, *, actor: str, recorded_at: datetime
    ) -> Event:
        """The event as the table holds it once inserted at ``position``."""
        return Event(
            session_id=session_id,
            version=self.version,
            position=position,
            type=self.type,
            status=self.status,
            progress=self.progress,
            message=self.message,
            error=self.error,
            data=self.data,
            actor=actor,
            recorded_at=recorded_at,
            prev_hash=self.prev_hash,
            hash=self.hash,
        )


def seal(
    session_id: UUID,
    head: Head,
    batch: Sequence[NewEvent],
    *,
    actor: str,
    recorded_at: datetime,
) -> list[Sealed]:
    """Apply the state machine to a batch and chain it onto ``head``.

    A terminal status ends the session: nothing may follow it, neither in a later request
    nor later in the same batch. Omitted progress carries the last value forward, and
    ``processed`` means 100.
    """
    sealed: list[Sealed] = []
    session_text, stamp = str(session_id), format_timestamp(recorded_at)
    terminal = head.terminal
    version, progress, prev = head.version, head.progress, head.hash
    for new in batch:
        if terminal:
            raise Conflict("the session has ended: no event may follow a terminal event")
        version += 1
        kind = event_type_for(new.status)
        if new.progress is not None:
            progress = new.progress
        elif new.status is Status.PROCESSED:
            progress = 100
        canonical = _canonical(
            session_id=session_text,
            actor=actor,
            recorded_at=stamp,
            version=version,
            kind=kind,
            status=new.status,
            progress=progress,
            message=new.message,
            error=new.error,
            data=new.data,
        )
        digest = chain_hash(prev, canonical)
        sealed.append(
            Sealed(
                version=version,
                type=kind,
                status=new.status,
                progress=progress,
                message=new.message,
                error=new.error,
                data=new.data,
                prev_hash=prev,
                hash=digest,
            )
        )
        prev = digest
        terminal = kind in TERMINAL_TYPES
    return sealed


@dataclass(frozen=True, slots=True)
class ChainBreak:
    version: int
    reason: str


class ChainVerifier:
    """Checks a session's events one at a time, from version 1, in constant memory."""

    def __init__(self) -> None:
        self.expected_version = 1
        self.prev_hash = GENESIS_HASH
        self.broken: ChainBreak | None = None

    def feed(self, event: Event) -> ChainBreak | None:
        """The first break found (and the same one thereafter), or None while intact."""
        if self.broken is not None:
            return self.broken
        if event.version != self.expected_version:
            self.broken = ChainBreak(
                self.expected_version, f"version {self.expected_version} is missing"
            )
        elif event.prev_hash != self.prev_hash:
            self.broken = ChainBreak(
                event.version, "prev_hash does not match the previous event's hash"
            )
        elif event.hash != chain_hash(
            self.prev_hash, canonical_json(event.session_id, event.actor, event.recorded_at, event)
        ):
            self.broken = ChainBreak(
                event.version, "the stored hash does not match the event's content"
            )
        else:
            self.prev_hash = event.hash
            self.expected_version += 1
        return self.broken


def verify_chain(events: Sequence[Event]) -> ChainBreak | None:
    """Recompute a whole chain from version 1; the first mismatch is the answer."""
    verifier = ChainVerifier()
    for event in events:
        if verifier.feed(event) is not None:
            break
    return verifier.broken


@dataclass(frozen=True, slots=True, kw_only=True)
class Scope:
    """The sessions a scoped stream follows.

    The sessions named, and every session (present or future) of the patients named; with
    ``assigned``, also every session of the patients ``therapist`` is assigned to. With a
    ``therapist``, all of it only while the therapist is assigned to the session's patient:
    the table decides, at every read.
    """

    sessions: frozenset[UUID] = frozenset()
    patients: frozenset[str] = frozenset()
    therapist: str | None = None
    assigned: bool = False
