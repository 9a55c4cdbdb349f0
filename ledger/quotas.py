"""Per-subject limits, so that one token cannot take a server: concurrent streams and the
rate of appends, each per process (``--workers N`` allows N times as much in all).

A stream holds a slot for as long as it is open; appends draw from a token bucket that
refills at the configured rate and holds one second's worth, so a burst is allowed and a
flood is not. A refusal is a 429 whose ``Retry-After`` says when to try again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ledger import metrics
from ledger.errors import TooManyRequests

# Buckets of subjects idle this long are forgotten (they are full again by then).
IDLE_SECONDS = 60.0


class Quotas:
    def __init__(
        self,
        *,
        streams_per_subject: int,
        appends_per_second: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``0`` turns a limit off."""
        self.streams_per_subject = streams_per_subject
        self.appends_per_second = appends_per_second
        self.clock = clock
        self._streams: dict[str, int] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # subject: (tokens, when)

    @contextmanager
    def stream(self, subject: str) -> Iterator[None]:
        """Hold one of the subject's stream slots while the stream is open."""
        self.take_stream(subject)
        try:
            yield
        finally:
            self.release_stream(subject)

    def take_stream(self, subject: str) -> None:
        """:meth:`stream` for a stream that outlives the caller's block, released by
        :meth:`release_stream`."""
        held = self._streams.get(subject, 0)
        if self.streams_per_subject and held >= self.streams_per_subject:
            metrics.LIMITED.labels("streams").inc()
            raise TooManyRequests(
                f"at most {self.streams_per_subject} open streams per subject: close one "
                "(one stream of all sessions, /api/events/stream, serves many)",
                retry_after=5,
            )
        self._streams[subject] = held + 1

    def release_stream(self, subject: str) -> None:
        left = self._streams[subject] - 1
        if left:
            self._streams[subject] = left
        else:
            del self._streams[subject]

    def open_streams(self, subject: str) -> int:
        return self._streams.get(subject, 0)

    def append(self, subject: str) -> None:
        """Take one append from the subject's bucket, or refuse with when to retry."""
        rate = self.appends_per_second
        if not rate:
            return
        now = self.clock()
        capacity = max(rate, 1.0)  # a second's worth, and at least one append
        tokens, then = self._buckets.get(subject, (capacity, now))
        tokens = min(capacity, tokens + (now - then) * rate)
        if tokens < 1:
            metrics.LIMITED.labels("appends").inc()
            raise TooManyRequests(
                f"at most {rate:g} appends per second per subject: slow down (a batch of "
                "events is one append)",
                retry_after=max(1, math.ceil((1 - tokens) / rate)),
            )
        self._buckets[subject] = (tokens - 1, now)
        if len(self._buckets) > 10_000:
            self._forget_idle(now)

    def _forget_idle(self, now: float) -> None:
        for subject, (_, then) in list(self._buckets.items()):
            if now - then > IDLE_SECONDS:
                del self._buckets[subject]
