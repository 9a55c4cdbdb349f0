"""``asyncio.Event`` and ``asyncio.Queue``, as much of them as an open stream uses, holding
nothing while nobody waits.

An Event keeps a deque of waiters from its birth, whose first block alone is about 600
bytes; a Queue keeps three deques and an Event. Every open stream holds an event for its
whole life, and every WebSocket connection an event and a queue (uvicorn's), so at
thousands of idle streams those empty blocks were a large share of each one's memory
(docs/ARCHITECTURE.md, "Memory per idle stream"). Here a waiter's future, and the list
that holds it, exist only while someone waits.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class Wake:
    """``asyncio.Event``'s ``set``, ``clear``, ``is_set`` and ``wait``: ``set`` wakes every
    waiter, and a set flag lets ``wait`` return at once."""

    __slots__ = ("_flag", "_waiters")

    def __init__(self) -> None:
        self._flag = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        if self._flag:
            return
        self._flag = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._flag = False

    async def wait(self) -> None:
        if self._flag:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = [waiter]
        else:
            self._waiters.append(waiter)
        try:
            await waiter
        finally:
            waiters = self._waiters
            if waiters is not None and waiter in waiters:  # cancelled before a set
                waiters.remove(waiter)
                if not waiters:
                    self._waiters = None


class Inbox(Generic[T]):
    """``asyncio.Queue``'s ``put_nowait``, ``get`` and ``empty``, unbounded: what uvicorn's
    WebSocket protocol uses of its receive queue (``ledger.cli.protocols``)."""

    __slots__ = ("_items", "_ready")

    def __init__(self) -> None:
        self._items: list[T] = []  # a few messages at most: the protocol pauses reading
        self._ready = Wake()

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: T) -> None:
        self._items.append(item)
        self._ready.set()

    async def get(self) -> T:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.pop(0)
