"""The allocator trim is there on glibc and gives memory back."""

from __future__ import annotations

import platform

import pytest

from ledger.memory import malloc_trim


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_malloc_trim_returns_freed_memory_on_glibc() -> None:
    release = malloc_trim()
    assert release is not None
    blocks = [bytearray(1 << 16) for _ in range(2000)]  # 128 MiB through malloc
    del blocks
    assert release() in (0, 1)  # 1: memory was released; 0: there was none to release
