"""A stream's undo steps: last first, each once, none skipped by another's failure."""

from __future__ import annotations

import pytest

from ledger.live.releases import Releases


def test_steps_run_last_first_and_only_once() -> None:
    done: list[str] = []
    with Releases() as releases:
        releases.callback(lambda: done.append("slot"))
        releases.callback(lambda: done.append("timer"))
        releases.callback(lambda: done.append("subscription"))
    assert done == ["subscription", "timer", "slot"]
    releases.close()  # closing again undoes nothing twice
    assert done.count("slot") == 1


def test_a_failing_step_does_not_skip_the_others_and_its_error_is_raised() -> None:
    done: list[str] = []
    releases = Releases()
    releases.callback(lambda: done.append("first"))
    releases.callback(lambda: 1 / 0)
    releases.callback(lambda: done.append("last"))
    with pytest.raises(ZeroDivisionError):
        releases.close()
    assert done == ["last", "first"]


def test_of_several_errors_the_last_is_raised_with_the_earlier_as_its_context() -> None:
    releases = Releases()
    missing: dict[str, int] = {}
    releases.callback(lambda: missing["key"])  # runs last
    releases.callback(lambda: 1 / 0)  # runs first
    with pytest.raises(KeyError) as raised:
        releases.close()
    assert isinstance(raised.value.__context__, ZeroDivisionError)
