"""In-memory store for unit tests and single-process use (``memory://``).

Same semantics as the other backends (checked by the conformance tests),
nothing persisted.  TTL expiry runs on every operation and on a timer while
watchers wait, so expiry delete events reach watchers on time.
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
import heapq
import time
from contextlib import AbstractAsyncContextManager

from libnet.errors import KeyNotFound
from libnet.store.base import KVPair, WatchEvent, check_key, check_previous, check_ttl, check_value
from libnet.store.locking import cas_lock
from libnet.store.logwatch import LogWatchMixin


class MemoryStore(LogWatchMixin):
    """A dict with revisions, an event log and TTLs."""

    scheme = "memory"

    def __init__(self, history: int = 100_000) -> None:
        self._data: dict[str, tuple[bytes, int, float | None]] = {}  # key -> value, revision, expiry
        self._rev = 0
        self._log: list[WatchEvent] = []
        self._history = history
        self._oldest = 0
        self._expiry: list[tuple[float, str, int]] = []
        self._timer: asyncio.TimerHandle | None = None

    # --- internals ------------------------------------------------------------

    def _record(self, kind: str, key: str, value: bytes) -> int:
        self._rev += 1
        self._log.append(WatchEvent(kind, key, value, self._rev))  # type: ignore[arg-type]
        if len(self._log) > 2 * self._history:
            del self._log[: len(self._log) - self._history]
            self._oldest = self._log[0].revision
        self._notify_watchers()
        return self._rev

    def _expire(self) -> None:
        now = time.monotonic()
        while self._expiry and self._expiry[0][0] <= now:
            _, key, rev = heapq.heappop(self._expiry)
            cur = self._data.get(key)
            if cur is not None and cur[1] == rev:
                del self._data[key]
                self._record("delete", key, b"")

    def _current(self, key: str) -> KVPair | None:
        self._expire()
        cur = self._data.get(key)
        return None if cur is None else KVPair(key, cur[0], cur[1])

    def _write(self, key: str, value: bytes, ttl: float | None) -> KVPair:
        rev = self._record("put", key, value)
        expires = None if ttl is None else time.monotonic() + ttl
        self._data[key] = (value, rev, expires)
        if expires is not None:
            heapq.heappush(self._expiry, (expires, key, rev))
        return KVPair(key, value, rev)

    def _remove(self, key: str) -> None:
        del self._data[key]
        self._record("delete", key, b"")

    # --- Store ----------------------------------------------------------------

    async def revision(self) -> int:
        self._expire()
        return self._rev

    async def get(self, key: str) -> KVPair:
        pair = self._current(check_key(key))
        if pair is None:
            raise KeyNotFound("no such key", key=key)
        return pair

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> KVPair:
        check_key(key)
        check_value(key, value)
        ttl = check_ttl(key, ttl)
        self._expire()
        return self._write(key, value, ttl)

    async def delete(self, key: str) -> bool:
        if self._current(check_key(key)) is None:
            return False
        self._remove(key)
        return True

    async def exists(self, key: str) -> bool:
        return self._current(check_key(key)) is not None

    async def list(self, prefix: str) -> list[KVPair]:
        check_key(prefix, prefix=True)
        self._expire()
        return [KVPair(k, v[0], v[1]) for k, v in sorted(self._data.items()) if k.startswith(prefix)]

    async def atomic_put(self, key: str, value: bytes, previous: KVPair | None, ttl: float | None = None) -> KVPair:
        check_key(key)
        check_value(key, value)
        ttl = check_ttl(key, ttl)
        cur = self._current(key)
        check_previous(key, cur, previous)
        return self._write(key, value, ttl)

    async def atomic_delete(self, key: str, previous: KVPair) -> None:
        check_key(key)
        cur = self._current(key)
        if cur is None:
            raise KeyNotFound("no such key", key=key)
        check_previous(key, cur, previous)
        self._remove(key)

    def lock(self, key: str, ttl: float = 15.0) -> AbstractAsyncContextManager[None]:
        return cas_lock(self, key, ttl)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    # --- watch log ------------------------------------------------------------

    async def _events_after(self, revision: int, limit: int) -> builtins.list[WatchEvent]:
        self._expire()
        i = bisect.bisect_right(self._log, revision, key=lambda e: e.revision)
        return self._log[i : i + limit]

    async def _oldest_revision(self) -> int:
        return self._oldest

    async def _before_wait(self) -> None:
        # wake watchers when the next TTL falls due
        if not self._expiry:
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + max(0.0, self._expiry[0][0] - time.monotonic())
        if self._timer is None or self._timer.when() > due + 0.001:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._expire()
        self._notify_watchers()
