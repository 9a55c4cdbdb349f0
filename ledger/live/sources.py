"""What the live package reads from storage, as interfaces.

The storage classes satisfy them as they are; the unit tests hand the hub and the feeds an
in-memory ledger instead.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection, Mapping, Sequence
from datetime import datetime
from typing import Protocol
from uuid import UUID

from ledger.cursor import CursorIds, Point
from ledger.domain import CarePair, Event, Scope, VersionRange
from ledger.storage.global_order import GlobalPage
from ledger.storage.scoped import Placed, Resolved, ScopeRead


class SessionEvents(Protocol):
    """Events by session (:class:`ledger.storage.history.History`)."""

    async def latest(self, session_id: UUID) -> Event | None: ...

    async def ranges(self, wanted: Sequence[VersionRange]) -> list[Event]: ...

    def replay(
        self, session_id: UUID, after: int, *, page_size: int = ...
    ) -> AsyncGenerator[list[Event]]: ...


class GlobalEvents(Protocol):
    """All sessions in commit-safe order (:class:`ledger.storage.global_order.GlobalOrder`)."""

    async def check_cursor(self, position: int) -> None: ...

    async def page(
        self,
        after: int,
        limit: int,
        *,
        start: datetime | None = ...,
        end: datetime | None = ...,
    ) -> GlobalPage: ...

    async def tail(self) -> int: ...


class Assignments(Protocol):
    """Care assignments (:class:`ledger.storage.care.CareAssignments`)."""

    async def still_assigned(self, pairs: Collection[CarePair]) -> set[CarePair]: ...


class ScopedEvents(Protocol):
    """What scoped streams read (:class:`ledger.storage.scoped.ScopedReads`)."""

    async def ranges(self, wanted: Sequence[VersionRange]) -> list[Placed]: ...

    async def mark(self) -> None: ...

    async def states(
        self, scope: Scope, safe: Point = ..., known: Mapping[UUID, int] | None = ...
    ) -> ScopeRead: ...

    async def page(
        self, wanted: Mapping[UUID, int], limit: int, *, below: int = ...
    ) -> list[Placed]: ...

    async def resolve(self, ids: CursorIds) -> Resolved: ...

    async def patients_of(self, therapist_id: str) -> set[str]: ...
