"""The process's one LISTEN connection and the in-memory registry of subscribers.

Notifications are wake-up hints, the table is the truth (as procrastinate does it): a
notification names a session and a version range; the hub reads those events once, encodes
them once, and offers the same bytes to every local subscriber of that session. Anything
that might have lost a notification (a listener reconnect, a failed read, a full queue)
turns into "catch up from the table" for the subscribers concerned. Idle subscribers cost
no queries at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Iterator
from uuid import UUID

import psycopg

from ledger import metrics
from ledger.errors import Unavailable
from ledger.eventlog import NOTIFY_CHANNEL
from ledger.store import ACCESS_CHANNEL, Store
from ledger.wire import Encoded

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 5.0
# Shown in pg_stat_activity, so an operator (or a fault test) can find the listener.
LISTENER_NAME = "ledger-listener"


class Subscription:
    """One stream's mailbox: a bounded queue of encoded events and a wake-up flag.

    ``needs_catchup`` tells the stream that the queue may be incomplete and that it must
    read from the table after its last delivered version before trusting the queue again.
    """

    __slots__ = (
        "access",
        "closed",
        "frames",
        "limit",
        "needs_catchup",
        "revoked",
        "session_id",
        "wake",
    )

    def __init__(
        self, session_id: UUID | None, limit: int, access: tuple[str, str] | None = None
    ) -> None:
        self.session_id = session_id
        self.limit = limit
        # (therapist, patient) when the reader's access rests on a care assignment.
        self.access = access
        self.frames: deque[Encoded] = deque()
        self.wake = asyncio.Event()
        self.needs_catchup = False
        self.closed = False
        self.revoked = False

    def offer(self, encoded: Encoded) -> None:
        if self.closed or self.needs_catchup:
            self.wake.set()
            return
        if len(self.frames) >= self.limit:
            metrics.QUEUE_OVERFLOWS.inc()
            self.catch_up()
            return
        self.frames.append(encoded)
        self.wake.set()

    def catch_up(self) -> None:
        self.frames.clear()
        self.needs_catchup = True
        self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.frames.clear()
        self.wake.set()

    def revoke(self) -> None:
        self.revoked = True
        self.close()


class Hub:
    def __init__(
        self, store: Store, listen_url: str, *, queue_size: int, probe_seconds: float
    ) -> None:
        self.store = store
        self.listen_url = listen_url
        self.queue_size = queue_size
        self.probe_seconds = probe_seconds
        self._sessions: dict[UUID, set[Subscription]] = {}
        self._global: set[Subscription] = set()
        self._pending: dict[UUID, tuple[int, int]] = {}
        self._dispatching: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._closing = False
        self._revalidating: asyncio.Task[None] | None = None

    # -- registry ---------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    @contextlib.contextmanager
    def subscribe(
        self, session_id: UUID | None, *, access: tuple[str, str] | None = None
    ) -> Iterator[Subscription]:
        """Register before reading the table, so nothing committed after the read is missed."""
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
        for sub in list(self._global):
            sub.close()
        for subs in list(self._sessions.values()):
            for sub in list(subs):
                sub.close()

    def _everyone_catches_up(self) -> None:
        for sub in self._global:
            sub.catch_up()
        for subs in self._sessions.values():
            for sub in subs:
                sub.catch_up()

    def _session_subscribers(self) -> Iterator[Subscription]:
        for subs in list(self._sessions.values()):
            yield from list(subs)

    def revoke(self, therapist_id: str, patient_id: str) -> None:
        """A care assignment was removed: its therapist's open streams end now."""
        for sub in self._session_subscribers():
            if sub.access == (therapist_id, patient_id):
                sub.revoke()

    async def _revalidate_access(self) -> None:
        """After a listener gap, a removal may have gone unheard: ask the table."""
        pairs = {sub.access for sub in self._session_subscribers() if sub.access is not None}
        if not pairs:
            return
        try:
            still = await self.store.assigned_pairs(sorted(pairs))
        except Exception as exc:
            log.warning("could not re-check care assignments: %s", exc)
            return
        for therapist_id, patient_id in pairs - still:
            self.revoke(therapist_id, patient_id)

    # -- the listener -----------------------------------------------------------------

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen_forever(), name="ledger-listener")

    async def wait_listening(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._listening.wait()
        return self.listening

    async def stop(self) -> None:
        self.close_all()
        for task in (self._listener, self._dispatching, self._revalidating):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _listen_forever(self) -> None:
        backoff = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.listen_url,
                    autocommit=True,
                    application_name=LISTENER_NAME,
                    # A peer that vanished without closing TCP is noticed in seconds.
                    keepalives=1,
                    keepalives_idle=10,
                    keepalives_interval=5,
                    keepalives_count=3,
                ) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    await conn.execute(f"LISTEN {ACCESS_CHANNEL}")
                    self._listening.set()
                    metrics.LISTENER_UP.set(1)
                    metrics.LISTENER_RECONNECTS.inc()
                    # Whatever was committed while nobody listened is only in the table.
                    self._everyone_catches_up()
                    self._revalidating = asyncio.create_task(self._revalidate_access())
                    backoff = 0.1
                    await self._receive(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("listener connection lost: %s", exc)
            finally:
                self._listening.clear()
                metrics.LISTENER_UP.set(0)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def _receive(self, conn: psycopg.AsyncConnection[object]) -> None:
        while True:
            received = 0
            async for notify in conn.notifies(timeout=self.probe_seconds):
                received += 1
                if notify.channel == ACCESS_CHANNEL:
                    self._note_revocation(notify.payload)
                else:
                    self._note(notify.payload)
            if received == 0:
                # Silence: make sure the connection is still alive rather than assume it.
                async with asyncio.timeout(self.probe_seconds):
                    metrics.DB_STATEMENTS.inc()
                    await conn.execute("SELECT 1")
            if conn.closed:
                raise psycopg.OperationalError("the LISTEN connection was closed")

    def _note_revocation(self, payload: str) -> None:
        try:
            therapist_id, patient_id = json.loads(payload)
        except (ValueError, TypeError):
            log.warning("ignoring malformed access notification %r", payload)
            return
        self.revoke(str(therapist_id), str(patient_id))

    def _note(self, payload: str) -> None:
        """A notification names one line per session: ``<session> <from> <to>``."""
        metrics.NOTIFICATIONS.inc()
        for sub in self._global:
            sub.catch_up()
        for line in payload.split("\n"):
            try:
                raw_id, raw_lo, raw_hi = line.split(" ")
                session_id, lo, hi = UUID(raw_id), int(raw_lo), int(raw_hi)
            except ValueError:
                # Unreadable (another version's format?): whatever it announced is in the
                # table, so everyone looks there.
                log.warning("unreadable notification %r: every subscriber catches up", line)
                self._everyone_catches_up()
                continue
            if session_id not in self._sessions:
                continue
            known = self._pending.get(session_id)
            if known is not None:
                lo, hi = min(lo, known[0]), max(hi, known[1])
            self._pending[session_id] = (lo, hi)
        if self._pending and (self._dispatching is None or self._dispatching.done()):
            self._dispatching = asyncio.create_task(self._dispatch(), name="ledger-dispatch")

    async def _dispatch(self) -> None:
        """Read what notifications announced, for all notified sessions in one query."""
        while self._pending:
            wanted, self._pending = self._pending, {}
            ranges = [(sid, lo, hi) for sid, (lo, hi) in wanted.items() if sid in self._sessions]
            try:
                found = await self.store.ranges(ranges)
                for event in found:
                    encoded = Encoded(event)
                    for sub in self._sessions.get(event.session_id, ()):
                        sub.offer(encoded)
            except Exception:
                # Whatever this batch held is still in the table: its readers go there.
                log.exception("fan-out failed; the subscribers concerned read the table")
                for sid, _, _ in ranges:
                    for sub in self._sessions.get(sid, ()):
                        sub.catch_up()
