"""One stream's mailbox in the hub."""

from __future__ import annotations

import asyncio
from collections import deque
from uuid import UUID

from ledger import metrics
from ledger.domain import CarePair
from ledger.wire import Encoded


class Subscription:
    """A bounded queue of encoded events and a wake-up flag.

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

    def __init__(self, session_id: UUID | None, limit: int, access: CarePair | None = None) -> None:
        self.session_id = session_id
        self.limit = limit
        # The care assignment the reader's access rests on, if any: removing it ends the
        # stream.
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
