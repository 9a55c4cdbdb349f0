"""Giving memory back to the system once a load has gone.

CPython frees a closed stream's objects, but glibc's allocator keeps the pages for reuse:
RSS stays at its peak after thousands of streams have closed (measured in
docs/ARCHITECTURE.md, "Memory after a load"). ``malloc_trim(0)`` returns the free pages;
it runs in a thread every ``LEDGER_MEMORY_TRIM_SECONDS``, costing milliseconds. On a libc
without it (musl, macOS) nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def malloc_trim() -> Callable[[], int] | None:
    """glibc's ``malloc_trim(0)``, or None where there is none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own libc, already loaded
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def release() -> int:
        return int(trim(0))

    return release


async def trim_every(seconds: float) -> None:
    """Return free memory to the system every ``seconds`` (in a thread: ctypes lets go of
    the GIL while glibc walks its arenas)."""
    release = malloc_trim()
    if release is None:
        log.info("no malloc_trim in this libc: memory is not trimmed")
        return
    while True:
        await asyncio.sleep(seconds)
        await asyncio.to_thread(release)
