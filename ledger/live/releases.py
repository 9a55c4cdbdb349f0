"""What an open stream must undo when it ends: its subscription, its subject's slot.

``contextlib.ExitStack`` does this with a deque, whose first block is about 600 bytes, held
by every stream for its whole life (docs/ARCHITECTURE.md, "Memory per idle stream"); a
stream holds two or three undo steps, which a list keeps in under a hundred.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, Self


class Releases:
    """Undo steps, run last first on :meth:`close` (once). An error in one does not skip
    the others; as with ``ExitStack``, the last error is raised after all have run, with
    the earlier ones as its context."""

    __slots__ = ("_undo",)

    def __init__(self) -> None:
        self._undo: list[Callable[[], Any]] = []

    def callback(self, undo: Callable[[], Any]) -> None:
        self._undo.append(undo)

    def close(self) -> None:
        failed: BaseException | None = None
        while self._undo:
            try:
                self._undo.pop()()
            except BaseException as exc:  # the rest still run
                if failed is not None and exc.__context__ is None:
                    exc.__context__ = failed
                failed = exc
        if failed is not None:
            raise failed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
