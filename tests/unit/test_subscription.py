"""A stream's wake-up: ``asyncio.Event``'s behaviour for the one reader it has."""

from __future__ import annotations

import asyncio

import pytest

from ledger.live.subscription import Wake


async def test_a_wake_up_set_before_the_wait_is_not_lost() -> None:
    wake = Wake()
    wake.set()
    assert wake.is_set()
    async with asyncio.timeout(1):
        await wake.wait()  # returns at once
    wake.clear()
    assert not wake.is_set()


async def test_a_waiting_reader_is_woken_once_set_and_stays_asleep_otherwise() -> None:
    wake = Wake()
    waiting = asyncio.ensure_future(wake.wait())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    wake.set()
    wake.set()  # twice is once
    async with asyncio.timeout(1):
        await waiting
    wake.clear()
    again = asyncio.ensure_future(wake.wait())
    await asyncio.sleep(0.01)
    assert not again.done()  # cleared: the next wait sleeps until the next set
    wake.set()
    async with asyncio.timeout(1):
        await again


async def test_a_cancelled_wait_leaves_the_wake_up_usable() -> None:
    wake = Wake()
    waiting = asyncio.ensure_future(wake.wait())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    wake.set()  # nobody waits: nothing to resolve, and no error
    async with asyncio.timeout(1):
        await wake.wait()


async def test_a_second_reader_is_refused() -> None:
    wake = Wake()
    first = asyncio.ensure_future(wake.wait())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        await wake.wait()
    wake.set()
    await first
