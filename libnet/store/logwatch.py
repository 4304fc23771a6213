"""Watches for backends that keep an ordered event log (memory, SQLite).

A backend supplies ``_events_after(revision, limit)`` and ``_oldest_revision``
and calls :meth:`LogWatchMixin._notify_watchers` when new events may exist;
this mixin turns that into ``watch``/``watch_prefix`` iterators that yield
each event exactly once, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from libnet.errors import WatchCompacted
from libnet.store.base import WatchEvent, check_key

BATCH = 1000


class LogWatchMixin:
    """Generic watch over an event log; see module docstring."""

    _wakeups: set[asyncio.Event] | None = None

    async def _events_after(self, revision: int, limit: int) -> list[WatchEvent]:
        raise NotImplementedError

    async def _oldest_revision(self) -> int:
        """Oldest revision still in the log (0 if the log is complete)."""
        raise NotImplementedError

    async def revision(self) -> int:
        raise NotImplementedError

    async def _before_wait(self) -> None:
        """Hook run before sleeping: e.g. start a poller."""

    def _notify_watchers(self) -> None:
        for ev in self._wakeups or ():
            ev.set()

    def watch(self, key: str, start_revision: int | None = None) -> AsyncIterator[WatchEvent]:
        check_key(key)
        return self._watch(lambda k: k == key, start_revision)

    def watch_prefix(self, prefix: str, start_revision: int | None = None) -> AsyncIterator[WatchEvent]:
        check_key(prefix, prefix=True)
        return self._watch(lambda k: k.startswith(prefix), start_revision)

    async def _watch(self, match: Callable[[str], bool], start_revision: int | None) -> AsyncIterator[WatchEvent]:
        last = await self.revision() if start_revision is None else start_revision
        if self._wakeups is None:
            self._wakeups = set()
        changed = asyncio.Event()  # one per watcher: nobody clears another's wake-up
        self._wakeups.add(changed)
        try:
            while True:
                # clear before reading: a notification during the read is not lost
                changed.clear()
                if last + 1 < await self._oldest_revision():
                    raise WatchCompacted("watch history no longer holds the requested revision", revision=last)
                events = await self._events_after(last, BATCH)
                for ev in events:
                    last = ev.revision
                    if match(ev.key):
                        yield ev
                if len(events) < BATCH:
                    await self._before_wait()
                    await changed.wait()
        finally:
            self._wakeups.discard(changed)
