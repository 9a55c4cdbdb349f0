"""Per-subject limits with a hand-driven clock."""

from __future__ import annotations

import pytest

from ledger.errors import TooManyRequests
from ledger.quotas import Quotas


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_streams_are_held_while_open_and_counted_per_subject() -> None:
    quotas = Quotas(streams_per_subject=2, appends_per_second=0)
    with quotas.stream("p"), quotas.stream("p"):
        with pytest.raises(TooManyRequests) as refused, quotas.stream("p"):
            pass
        assert refused.value.status_code == 429
        assert refused.value.retry_after >= 1
        with quotas.stream("someone else"):
            assert quotas.open_streams("p") == 2
    assert quotas.open_streams("p") == 0
    with quotas.stream("p"):  # slots come back when streams close
        pass


def test_appends_may_burst_a_seconds_worth_then_follow_the_rate() -> None:
    clock = Clock()
    quotas = Quotas(streams_per_subject=0, appends_per_second=4, clock=clock)
    for _ in range(4):
        quotas.append("svc")
    with pytest.raises(TooManyRequests) as refused:
        quotas.append("svc")
    assert refused.value.retry_after == 1
    quotas.append("other")  # each subject has its own bucket
    clock.now += 0.5  # two appends' worth comes back
    quotas.append("svc")
    quotas.append("svc")
    with pytest.raises(TooManyRequests):
        quotas.append("svc")
    clock.now += 60  # never more than a second's worth saved up
    for _ in range(4):
        quotas.append("svc")
    with pytest.raises(TooManyRequests):
        quotas.append("svc")


def test_zero_turns_the_limits_off() -> None:
    quotas = Quotas(streams_per_subject=0, appends_per_second=0)
    with quotas.stream("p"), quotas.stream("p"), quotas.stream("p"):
        for _ in range(1000):
            quotas.append("p")


def test_a_rate_below_one_still_lets_an_append_through_now_and_then() -> None:
    clock = Clock()
    quotas = Quotas(streams_per_subject=0, appends_per_second=0.5, clock=clock)
    quotas.append("svc")
    with pytest.raises(TooManyRequests) as refused:
        quotas.append("svc")
    assert refused.value.retry_after == 2
    clock.now += 2
    quotas.append("svc")
