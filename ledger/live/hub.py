"""The in-memory registry of this process's subscribers, and the fan-out to them.

Notifications are wake-up hints, the table is the truth (as procrastinate does it): the
listener reports which versions of which sessions were committed; the hub reads those
events once, encodes them once, and offers the same bytes to every local subscriber of that
session. Anything that might have lost a notification (a listener reconnect, a failed read,
a full queue, an unreadable payload) turns into "catch up from the table" for the
subscribers concerned. Idle subscribers cost no queries at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from uuid import UUID

from ledger import metrics
from ledger.domain import CarePair, VersionRange
from ledger.errors import Unavailable
from ledger.live.sources import Assignments, SessionEvents
from ledger.live.subscription import Subscription
from ledger.storage.database import DATABASE_ERRORS
from ledger.storage.notifications import Unreadable
from ledger.wire import Encoded

log = logging.getLogger(__name__)


class Hub:
    def __init__(self, events: SessionEvents, care: Assignments, *, queue_size: int) -> None:
        self.events = events
        self.care = care
        self.queue_size = queue_size
        self._sessions: dict[UUID, set[Subscription]] = {}
        self._global: set[Subscription] = set()
        self._pending: dict[UUID, tuple[int, int]] = {}
        self._dispatching: asyncio.Task[None] | None = None
        self._revalidating: asyncio.Task[None] | None = None
        self._closing = False
        # Counts what the listener reported (notifications, reconnects): who works only
        # when something was committed (the checkpointer) looks here first.
        self.activity = 0

    # -- registry ---------------------------------------------------------------------

    @contextlib.contextmanager
    def subscribe(
        self, session_id: UUID | None, *, access: CarePair | None = None
    ) -> Iterator[Subscription]:
        """Register before reading the table, so nothing committed after the read is missed.

        ``session_id`` None subscribes to every session (the global stream).
        """
        if self._closing:
            raise Unavailable("the server is shutting down: reconnect to resume")
        sub = Subscription(session_id, self.queue_size, access)
        if session_id is None:
            self._global.add(sub)
        else:
            self._sessions.setdefault(session_id, set()).add(sub)
        try:
            yield sub
        finally:
            sub.close()
            if session_id is None:
                self._global.discard(sub)
            else:
                subs = self._sessions.get(session_id)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del self._sessions[session_id]

    def close_all(self) -> None:
        """On shutdown: every stream ends cleanly and its client resumes elsewhere."""
        self._closing = True
        for sub in self._everyone():
            sub.close()

    async def stop(self) -> None:
        self.close_all()
        for task in (self._dispatching, self._revalidating):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _everyone(self) -> Iterator[Subscription]:
        yield from list(self._global)
        yield from self._session_subscribers()

    def _session_subscribers(self) -> Iterator[Subscription]:
        for subs in list(self._sessions.values()):
            yield from list(subs)

    def _everyone_catches_up(self) -> None:
        for sub in self._everyone():
            sub.catch_up()

    # -- what the listener reports --------------------------------------------------------

    def connected(self) -> None:
        """The listener (re)connected: whatever was committed, or an assignment removed,
        while nobody listened is only in the tables."""
        self.activity += 1
        self._everyone_catches_up()
        self._revalidating = asyncio.create_task(self._revalidate_access())

    def announced(self, entries: Sequence[VersionRange | Unreadable]) -> None:
        """One notification's sessions and versions; read and fanned out in the background."""
        metrics.NOTIFICATIONS.inc()
        self.activity += 1
        for sub in self._global:
            sub.catch_up()
        for entry in entries:
            if isinstance(entry, Unreadable):
                # Whatever it announced is in the table, so everyone looks there.
                log.warning("unreadable notification %r: every subscriber catches up", entry.line)
                self._everyone_catches_up()
                continue
            if entry.session_id not in self._sessions:
                continue
            first, last = entry.first, entry.last
            known = self._pending.get(entry.session_id)
            if known is not None:
                first, last = min(first, known[0]), max(last, known[1])
            self._pending[entry.session_id] = (first, last)
        if self._pending and (self._dispatching is None or self._dispatching.done()):
            self._dispatching = asyncio.create_task(self._dispatch(), name="ledger-dispatch")

    def removed(self, pair: CarePair) -> None:
        """A care assignment was removed: its therapist's open streams end now."""
        for sub in self._session_subscribers():
            if sub.access == pair:
                sub.revoke()

    # -- background work ----------------------------------------------------------------

    async def _revalidate_access(self) -> None:
        """After a listener gap, a removal may have gone unheard: ask the table."""
        pairs = {sub.access for sub in self._session_subscribers() if sub.access is not None}
        if not pairs:
            return
        try:
            still = await self.care.still_assigned(pairs)
        except Exception as exc:
            log.warning("could not re-check care assignments: %s", exc)
            return
        for pair in pairs - still:
            self.removed(pair)

    async def _dispatch(self) -> None:
        """Read what notifications announced, for all notified sessions in one query."""
        while self._pending:
            wanted, self._pending = self._pending, {}
            ranges = [
                VersionRange(session_id=sid, first=first, last=last)
                for sid, (first, last) in wanted.items()
                if sid in self._sessions
            ]
            try:
                found = await self.events.ranges(ranges)
                for event in found:
                    encoded = Encoded(event)
                    for sub in self._sessions.get(event.session_id, ()):
                        sub.offer(encoded)
            except Exception as exc:
                # Whatever this batch held is still in the table: its readers go there. A
                # lost database (a restart, a failover) is expected, not a bug: one line.
                if isinstance(exc, DATABASE_ERRORS):
                    log.warning("fan-out read failed (%s); its subscribers read the table", exc)
                else:
                    log.exception("fan-out failed; the subscribers concerned read the table")
                for wanted_range in ranges:
                    for sub in self._sessions.get(wanted_range.session_id, ()):
                        sub.catch_up()
