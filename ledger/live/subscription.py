"""One stream's mailbox in the hub."""

from __future__ import annotations

from typing import Generic, TypeVar
from uuid import UUID

from ledger import metrics
from ledger.domain import CarePair, Scope
from ledger.storage.notifications import Mark
from ledger.waiting import Wake
from ledger.wire import Encoded

FrameT = TypeVar("FrameT")


class Mailbox(Generic[FrameT]):
    """A bounded queue of frames and a wake-up flag.

    ``needs_catchup`` tells the stream that the queue may be incomplete and that it must
    read from the table after what it last delivered before trusting the queue again.
    """

    __slots__ = ("closed", "frames", "limit", "needs_catchup", "revoked", "wake")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # A list, not a deque: a deque's first block is ~600 bytes, held by every idle
        # stream; the queue is short (it is drained at each wake-up, and bounded).
        self.frames: list[FrameT] = []
        self.wake = Wake()
        self.needs_catchup = False
        self.closed = False
        self.revoked = False

    def offer(self, frame: FrameT) -> None:
        if self.closed or self.needs_catchup:
            self.wake.set()
            return
        if len(self.frames) >= self.limit:
            metrics.QUEUE_OVERFLOWS.inc()
            self.catch_up()
            return
        self.frames.append(frame)
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


class Subscription(Mailbox[Encoded]):
    """A session stream's (or, with ``session_id`` None, the global stream's) mailbox."""

    __slots__ = ("access", "session_id")

    def __init__(self, session_id: UUID | None, limit: int, access: CarePair | None = None) -> None:
        super().__init__(limit)
        self.session_id = session_id
        # The care assignment the reader's access rests on, if any: removing it ends the
        # stream.
        self.access = access


class ScopedSubscription(Mailbox[Encoded | Mark]):
    """A scoped stream's mailbox: the events of its sessions and patients, and the marks.

    ``patients`` are the patients whose sessions the hub routes here (those named, or the
    therapist's assigned ones); ``relied`` the patients whose assignment the stream's
    filters rest on: removing one of those ends the stream, removing another narrows it.
    """

    __slots__ = ("changes", "patients", "relied", "scope")

    def __init__(self, scope: Scope, limit: int, *, relied: frozenset[str] = frozenset()) -> None:
        super().__init__(limit)
        self.scope = scope
        self.patients: set[str] = set(scope.patients)
        self.relied = relied
        # How often the patients it follows changed: a table read that saw a change while
        # it ran is not delivered (a full queue, by contrast, does not spoil a read).
        self.changes = 0

    def offer_mark(self, mark: Mark) -> None:
        """Queue a mark without waking the stream: it changes nothing but the id of the
        stream's next message, so it waits for the next wake-up (an event, a heartbeat).
        Waking every stream for each mark put a burst of a thousand wake-ups once a second
        in front of the next event (the scoped fan-out's p99). One queued last is merged
        with it: everything queued before either is before both, and applying the two
        one after the other is applying the higher of each (marks of several processes
        may arrive out of order). While a table read is pending, the read's own safe point
        replaces it."""
        if self.closed or self.needs_catchup:
            return
        last = self.frames[-1] if self.frames else None
        if isinstance(last, Mark):
            self.frames[-1] = last.merged(mark)
        elif len(self.frames) >= self.limit:
            metrics.QUEUE_OVERFLOWS.inc()
            self.catch_up()
        else:
            self.frames.append(mark)

    def scope_changed(self) -> None:
        self.changes += 1
        self.catch_up()
