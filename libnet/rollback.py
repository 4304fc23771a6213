"""Undo the done steps of an operation when a later step fails.

::

    async with Rollback() as undo:
        pool = await ipam.request_pool(...)
        undo.push(lambda: ipam.release_pool(pool.id), "release pool")
        await driver.create_network(info)   # raises -> release_pool runs
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

log = logging.getLogger("libnet.rollback")


class Rollback:
    """A stack of undo actions run (newest first) if the block raises."""

    def __init__(self) -> None:
        self._undo: list[tuple[Callable[[], Awaitable[object]], str]] = []

    def push(self, action: Callable[[], Awaitable[object]], what: str) -> None:
        """Register how to undo the step just done."""
        self._undo.append((action, what))

    async def __aenter__(self) -> Rollback:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if exc_type is not None:
            for action, what in reversed(self._undo):
                try:
                    await action()
                except Exception:  # keep undoing the rest; the original error wins
                    log.exception("rollback step failed: %s", what)
        self._undo.clear()
        return False
