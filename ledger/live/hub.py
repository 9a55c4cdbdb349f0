"""The in-memory registry of this process's subscribers, and the fan-out to them.

Notifications are wake-up hints, the table is the truth (as procrastinate does it): the
listener reports which versions of which sessions were committed; the hub reads those
events once, encodes them once, and offers the same bytes to every local subscriber of that
session. Anything that might have lost a notification (a listener reconnect, a failed read,
a full queue, an unreadable payload) turns into "catch up from the table" for the
subscribers concerned. Idle subscribers cost no queries at all.

Scoped streams (many sessions on one connection) are found by session and by patient
(:mod:`ledger.live.routing`); while any is open and events are being appended, the hub
also sends a commit-safe mark once a second and hands each mark to them after everything
announced before it, which is what lets their cursors stay short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any
from uuid import UUID

from ledger import metrics
from ledger.domain import CarePair, Scope, VersionRange
from ledger.errors import Unavailable
from ledger.live.routing import ScopedRoutes
from ledger.live.sources import Assignments, ScopedEvents, SessionEvents
from ledger.live.subscription import Mailbox, ScopedSubscription, Subscription
from ledger.storage.database import DATABASE_ERRORS
from ledger.storage.notifications import AccessChange, Mark, Unreadable
from ledger.wire import Encoded

log = logging.getLogger(__name__)

# How often a mark is sent while scoped streams are open and events are appended: the
# longest a session stays in a scoped cursor's list once its transaction has ended.
MARK_SECONDS = 1.0


class Hub:
    def __init__(
        self,
        events: SessionEvents,
        care: Assignments,
        *,
        queue_size: int,
        scoped: ScopedEvents | None = None,
    ) -> None:
        self.events = events
        self.care = care
        self.scoped = scoped
        self.queue_size = queue_size
        self._sessions: dict[UUID, set[Subscription]] = {}
        self._global: set[Subscription] = set()
        self.routes = ScopedRoutes()
        self._pending: dict[UUID, tuple[int, int]] = {}
        self._mark: Mark | None = None
        self._dispatching: asyncio.Task[None] | None = None
        self._revalidating: asyncio.Task[None] | None = None
        self._marking: asyncio.Task[None] | None = None
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
        sub = self.register(session_id, access=access)
        try:
            yield sub
        finally:
            self.unregister(sub)

    def register(self, session_id: UUID | None, *, access: CarePair | None = None) -> Subscription:
        """:meth:`subscribe` for a stream that outlives the caller's block: its release is
        :meth:`unregister` (a stream holds no generator of its own while it idles)."""
        if self._closing:
            raise Unavailable("the server is shutting down: reconnect to resume")
        sub = Subscription(session_id, self.queue_size, access)
        if session_id is None:
            self._global.add(sub)
        else:
            self._sessions.setdefault(session_id, set()).add(sub)
        return sub

    def unregister(self, sub: Subscription) -> None:
        sub.close()
        session_id = sub.session_id
        if session_id is None:
            self._global.discard(sub)
            return
        subs = self._sessions.get(session_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._sessions[session_id]

    @contextlib.contextmanager
    def subscribe_scoped(
        self, scope: Scope, *, relied: frozenset[str] = frozenset()
    ) -> Iterator[ScopedSubscription]:
        """Register a scoped stream (by its sessions and patients) before it reads."""
        sub = self.register_scoped(scope, relied=relied)
        try:
            yield sub
        finally:
            self.unregister_scoped(sub)

    def register_scoped(
        self, scope: Scope, *, relied: frozenset[str] = frozenset()
    ) -> ScopedSubscription:
        """:meth:`subscribe_scoped` for a stream that outlives the caller's block, released
        by :meth:`unregister_scoped`."""
        if self._closing:
            raise Unavailable("the server is shutting down: reconnect to resume")
        sub = ScopedSubscription(scope, self.queue_size, relied=relied)
        self.routes.add(sub)
        if self.scoped is not None and (self._marking is None or self._marking.done()):
            self._marking = asyncio.create_task(self._mark_while_needed(), name="ledger-marks")
        return sub

    def unregister_scoped(self, sub: ScopedSubscription) -> None:
        sub.close()
        self.routes.discard(sub)

    def follow(self, sub: ScopedSubscription, patients: set[str]) -> None:
        """A scoped stream follows exactly these patients' sessions from now on."""
        self.routes.follow(sub, patients)

    def close_all(self) -> None:
        """On shutdown: every stream ends cleanly and its client resumes elsewhere."""
        self._closing = True
        for sub in self._everyone():
            sub.close()

    async def stop(self) -> None:
        self.close_all()
        for task in (self._dispatching, self._revalidating, self._marking):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _everyone(self) -> Iterator[Mailbox[Any]]:
        yield from list(self._global)
        yield from list(self.routes.streams)
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
            if entry.session_id not in self._sessions and not self.routes.wants(entry.session_id):
                continue
            first, last = entry.first, entry.last
            known = self._pending.get(entry.session_id)
            if known is not None:
                first, last = min(first, known[0]), max(last, known[1])
            self._pending[entry.session_id] = (first, last)
        if self._pending:
            self._start_dispatch()

    def marked(self, mark: Mark) -> None:
        """A commit-safe mark: handed to the scoped streams after what came before it."""
        if self.routes.streams:
            self._mark = mark
            self._start_dispatch()

    def _start_dispatch(self) -> None:
        if self._dispatching is None or self._dispatching.done():
            self._dispatching = asyncio.create_task(self._dispatch(), name="ledger-dispatch")

    def access_changed(self, change: AccessChange) -> None:
        if change.added:
            self.added(change.pair)
        else:
            self.removed(change.pair)

    def removed(self, pair: CarePair) -> None:
        """A care assignment was removed: its therapist's open streams that rest on it end
        now; scoped streams that only followed the patient as one of many stop following."""
        for sub in self._session_subscribers():
            if sub.access == pair:
                sub.revoke()
        for scoped in list(self.routes.streams):
            if scoped.scope.therapist != pair.therapist_id:
                continue
            if pair.patient_id in scoped.relied:
                scoped.revoke()
            elif pair.patient_id in scoped.patients:
                self.routes.follow(scoped, scoped.patients - {pair.patient_id})
                scoped.scope_changed()  # what is queued of that patient is not delivered

    def added(self, pair: CarePair) -> None:
        """A care assignment was added: the therapist's streams that follow all their
        patients follow this one too, from their cursor on."""
        for scoped in list(self.routes.streams):
            if scoped.scope.assigned and scoped.scope.therapist == pair.therapist_id:
                self.routes.follow(scoped, scoped.patients | {pair.patient_id})
                scoped.scope_changed()

    # -- background work ----------------------------------------------------------------

    async def _revalidate_access(self) -> None:
        """After a listener gap, a removal may have gone unheard: ask the table."""
        pairs = {sub.access for sub in self._session_subscribers() if sub.access is not None}
        for scoped in self.routes.streams:
            if scoped.scope.therapist is not None:
                therapist = scoped.scope.therapist
                pairs.update(CarePair(therapist_id=therapist, patient_id=p) for p in scoped.relied)
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
        """Read what notifications announced, for all notified sessions in one query; then
        hand the scoped streams the mark that came after it, if one did."""
        while self._pending or self._mark is not None:
            wanted, self._pending = self._pending, {}
            mark, self._mark = self._mark, None
            ranges = [
                VersionRange(session_id=sid, first=first, last=last)
                for sid, (first, last) in wanted.items()
                if sid in self._sessions or self.routes.wants(sid)
            ]
            try:
                for encoded in await self._read(ranges):
                    session_id = encoded.event.session_id
                    for sub in self._sessions.get(session_id, ()):
                        sub.offer(encoded)
                    if encoded.patient_id is not None:
                        for scoped in self.routes.targets(session_id, encoded.patient_id):
                            scoped.offer(encoded)
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
                for scoped in list(self.routes.streams):
                    scoped.catch_up()
                continue
            if mark is not None:
                for scoped in list(self.routes.streams):
                    scoped.offer_mark(mark)

    async def _read(self, ranges: list[VersionRange]) -> list[Encoded]:
        """The ranges, encoded once; with scoped streams open, read with each event's
        transaction and patient, by which they are routed."""
        if self.routes.streams and self.scoped is not None:
            placed = await self.scoped.ranges(ranges)
            return [Encoded(p.event, p.tx, p.patient_id) for p in placed]
        return [Encoded(event) for event in await self.events.ranges(ranges)]

    async def _mark_while_needed(self) -> None:
        """While scoped streams are open: a mark each second in which events were announced
        (none while nothing is appended, so idle streams cost no statements)."""
        assert self.scoped is not None
        sent_for = self.activity
        while self.routes.streams:
            await asyncio.sleep(MARK_SECONDS)
            if self.activity == sent_for:
                continue
            sent_for = self.activity
            try:
                await self.scoped.mark()
            except Exception as exc:
                log.warning("could not send a commit-safe mark: %s", exc)
