"""``Wake`` and ``Inbox`` behave as the ``asyncio.Event`` and ``asyncio.Queue`` they stand in
for: checked step by step against them, over random sequences of operations."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.waiting import Inbox, Wake


async def test_a_wake_up_set_before_the_wait_is_not_lost() -> None:
    wake = Wake()
    wake.set()
    assert wake.is_set()
    async with asyncio.timeout(1):
        await wake.wait()  # returns at once
    wake.clear()
    assert not wake.is_set()


async def test_a_cancelled_wait_leaves_the_wake_up_usable_and_holds_nothing() -> None:
    wake = Wake()
    waiting = asyncio.ensure_future(wake.wait())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert wake._waiters is None  # nobody waits: no list, no future
    wake.set()
    async with asyncio.timeout(1):
        await wake.wait()


# The loop runs only at "run" steps, so that a set and a clear with no turn of the loop
# between them (uvicorn's pause and resume of writing can do that) are checked too.
EVENT_STEPS = st.lists(
    st.sampled_from(["set", "clear", "wait", "cancel", "run"]), min_size=1, max_size=40
)


@settings(max_examples=300)  # cheap: hundreds of sequences in well under a second
@given(EVENT_STEPS)
def test_wake_does_what_asyncio_event_does(steps: list[str]) -> None:
    """The same steps on both: after each, the same flag and the same waiters woken."""

    async def run() -> None:
        ours, theirs = Wake(), asyncio.Event()
        waiters: list[tuple[asyncio.Task[Any], asyncio.Task[Any]]] = []
        started: list[asyncio.Task[Any]] = []
        for step in steps:
            if step == "set":
                ours.set()
                theirs.set()
            elif step == "clear":
                ours.clear()
                theirs.clear()
            elif step == "wait":
                waiters.append(
                    (asyncio.ensure_future(ours.wait()), asyncio.ensure_future(theirs.wait()))
                )
                started.extend(waiters[-1])
            elif step == "cancel" and waiters:
                for task in waiters.pop(0):
                    task.cancel()
            elif step == "run":
                for _ in range(3):  # let every woken waiter finish
                    await asyncio.sleep(0)
            assert ours.is_set() == theirs.is_set()
            assert [a.done() for a, _ in waiters] == [b.done() for _, b in waiters]
        for task in started:
            task.cancel()
        await asyncio.gather(*started, return_exceptions=True)
        assert ours._waiters is None  # every waiter gone, cancelled or woken: nothing held

    asyncio.run(run())


QUEUE_STEPS = st.lists(
    st.one_of(st.integers(0, 99), st.sampled_from(["get", "cancel", "run"])),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300)
@given(QUEUE_STEPS)
def test_inbox_does_what_asyncio_queue_does_for_one_reader(steps: list[int | str]) -> None:
    """Puts (the integers), a get at a time (uvicorn's protocol has one reader), and
    cancelled gets: the same items reach the reader in the same order, none lost."""

    async def run() -> None:
        ours: Inbox[int] = Inbox()
        theirs: asyncio.Queue[int] = asyncio.Queue()
        getting: tuple[asyncio.Task[int], asyncio.Task[int]] | None = None
        got: tuple[list[int], list[int]] = ([], [])
        for step in steps:
            if isinstance(step, int):
                ours.put_nowait(step)
                theirs.put_nowait(step)
            elif step == "get" and getting is None:
                getting = (asyncio.ensure_future(ours.get()), asyncio.ensure_future(theirs.get()))
            elif step == "cancel" and getting is not None and not any(t.done() for t in getting):
                for task in getting:
                    task.cancel()
                await asyncio.gather(*getting, return_exceptions=True)
                getting = None
            elif step == "run":
                for _ in range(3):
                    await asyncio.sleep(0)
            if getting is not None:
                assert getting[0].done() == getting[1].done()
                if getting[0].done():
                    got[0].append(getting[0].result())
                    got[1].append(getting[1].result())
                    getting = None
            assert got[0] == got[1]
            assert ours.empty() == theirs.empty()
        if getting is not None:
            for task in getting:
                task.cancel()
            await asyncio.gather(*getting, return_exceptions=True)
        while not theirs.empty():  # what was never read is still there, in order
            assert await ours.get() == await theirs.get()
        assert ours.empty()

    asyncio.run(run())
