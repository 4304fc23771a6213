"""Consul KV store (``consul://host:8500``), through ``py-consul``'s asyncio client.

- revisions are Consul's ``ModifyIndex``; CAS is ``?cas=<ModifyIndex>``
  (``cas=0``: create only);
- TTLs are sessions with ``behavior=delete`` (Consul's session TTL is
  10 s to 24 h; a shorter TTL is raised to 10 s); the key is written with
  ``acquire`` so it goes when the session expires; writing the key again
  with a TTL renews its session;
- watches are blocking queries on the prefix, turned into put/delete events
  by comparing ``ModifyIndex`` snapshots: each change is reported once, but
  several writes to one key between two answers arrive as one event (Consul
  reports state, not history); a reconnect resumes from the snapshot held;
- locks are the CAS lock with a session TTL.

No Consul server is installable on libnet's CI machines: the conformance
tests run against one only when ``LIBNET_TEST_CONSUL=host:port`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import aiohttp
import consul
import consul.aio

from libnet.errors import KeyNotFound, StoreUnavailable
from libnet.store.base import (
    DEFAULT_TIMEOUT,
    KVPair,
    WatchEvent,
    check_key,
    check_previous,
    check_ttl,
    check_value,
)
from libnet.store.locking import cas_lock

T = TypeVar("T")
MIN_SESSION_TTL = 10
_UNAVAILABLE = (consul.Timeout, consul.ConsulException, aiohttp.ClientError, asyncio.TimeoutError, OSError)


def _pair(item: dict[str, Any]) -> KVPair:
    return KVPair(item["Key"], item.get("Value") or b"", item["ModifyIndex"])


class ConsulStore:
    """libnet's Store on Consul's KV; see the module docstring."""

    scheme = "consul"

    def __init__(self, host: str, port: int = 8500, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._client: consul.aio.Consul | None = None
        self._sessions: dict[str, str] = {}  # key -> session id of its TTL
        self._closed = False

    @property
    def url(self) -> str:
        return f"consul://{self.host}:{self.port}"

    def _consul(self) -> consul.aio.Consul:
        if self._closed:
            raise StoreUnavailable("store is closed", url=self.url)
        if self._client is None:
            self._client = consul.aio.Consul(host=self.host, port=self.port)
        return self._client

    async def _call(self, fn: Callable[[consul.aio.Consul], Awaitable[T]], timeout: float | None = None) -> T:
        try:
            return await asyncio.wait_for(fn(self._consul()), timeout or self.timeout)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"consul did not answer: {exc!r}", url=self.url) from exc

    async def _session(self, key: str, ttl: float | None) -> str | None:
        if ttl is None:
            return None
        sid = self._sessions.get(key)
        if sid is not None:
            with contextlib.suppress(StoreUnavailable):  # an expired session cannot be renewed
                if await self._call(lambda c: c.session.renew(sid)) is not None:
                    return sid
        seconds = max(MIN_SESSION_TTL, math.ceil(ttl))
        created: str = await self._call(lambda c: c.session.create(behavior="delete", ttl=seconds, lock_delay=0))
        self._sessions[key] = created
        return created

    async def revision(self) -> int:
        index, _ = await self._call(lambda c: c.kv.get("libnet-revision-probe"))
        return int(index)

    async def get(self, key: str) -> KVPair:
        check_key(key)
        _, item = await self._call(lambda c: c.kv.get(key))
        if item is None:
            raise KeyNotFound("no such key", key=key)
        return _pair(item)

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> KVPair:
        check_key(key)
        check_value(key, value)
        sid = await self._session(key, check_ttl(key, ttl))
        ok = await self._call(lambda c: c.kv.put(key, value, acquire=sid))
        if not ok:
            raise StoreUnavailable("consul refused the write (key locked by another session)", key=key)
        return await self.get(key)

    async def delete(self, key: str) -> bool:
        check_key(key)
        existed = await self._current(key) is not None  # Consul's DELETE does not tell
        await self._call(lambda c: c.kv.delete(key))
        self._drop_session(key)
        return existed

    def _drop_session(self, key: str) -> None:
        sid = self._sessions.pop(key, None)
        if sid is not None and self._client is not None:
            client = self._client
            task = asyncio.create_task(client.session.destroy(sid))
            task.add_done_callback(lambda t: t.exception())

    async def exists(self, key: str) -> bool:
        check_key(key)
        _, item = await self._call(lambda c: c.kv.get(key))
        return item is not None

    async def list(self, prefix: str) -> list[KVPair]:
        check_key(prefix, prefix=True)
        _, items = await self._call(lambda c: c.kv.get(prefix, recurse=True))
        return sorted((_pair(i) for i in items or []), key=lambda p: p.key)

    async def atomic_put(self, key: str, value: bytes, previous: KVPair | None, ttl: float | None = None) -> KVPair:
        check_key(key)
        check_value(key, value)
        ttl = check_ttl(key, ttl)
        sid = await self._session(key, ttl)
        cas = 0 if previous is None else previous.revision
        ok = await self._call(lambda c: c.kv.put(key, value, cas=cas, acquire=sid))
        now = await self._current(key)
        if not ok:
            check_previous(key, now, previous)
            raise StoreUnavailable("consul refused the write", key=key)
        if now is None:
            raise KeyNotFound("key vanished right after the write", key=key)
        return now

    async def _current(self, key: str) -> KVPair | None:
        _, item = await self._call(lambda c: c.kv.get(key))
        return None if item is None else _pair(item)

    async def atomic_delete(self, key: str, previous: KVPair) -> None:
        check_key(key)
        ok = await self._call(lambda c: c.kv.delete(key, cas=previous.revision))
        if not ok:
            now = await self._current(key)
            if now is None:
                raise KeyNotFound("no such key", key=key)
            check_previous(key, now, previous)
        self._drop_session(key)

    def lock(self, key: str, ttl: float = 15.0) -> AbstractAsyncContextManager[None]:
        return cas_lock(self, key, ttl)

    async def close(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            for sid in self._sessions.values():
                with contextlib.suppress(Exception):
                    await client.session.destroy(sid)
            await client.close()

    # --- watches --------------------------------------------------------------

    def watch(self, key: str, start_revision: int | None = None) -> AsyncIterator[WatchEvent]:
        check_key(key)
        return self._watch(key, lambda k: k == key, start_revision)

    def watch_prefix(self, prefix: str, start_revision: int | None = None) -> AsyncIterator[WatchEvent]:
        check_key(prefix, prefix=True)
        return self._watch(prefix, lambda k: k.startswith(prefix), start_revision)

    async def _watch(
        self, prefix: str, match: Callable[[str], bool], start_revision: int | None
    ) -> AsyncIterator[WatchEvent]:
        index, items = await self._call(lambda c: c.kv.get(prefix, recurse=True))
        seen = {i["Key"]: i["ModifyIndex"] for i in items or [] if match(i["Key"])}
        if start_revision is not None:  # puts since then that are still there
            for i in sorted(items or [], key=lambda i: i["ModifyIndex"]):
                if match(i["Key"]) and i["ModifyIndex"] > start_revision:
                    yield WatchEvent("put", i["Key"], i.get("Value") or b"", i["ModifyIndex"])
        delay = 0.05
        while True:

            def poll(c: consul.aio.Consul, i: Any = index) -> Any:  # python-consul is untyped
                return c.kv.get(prefix, recurse=True, index=i, wait="30s")

            try:
                new_index, items = await self._call(poll, timeout=40)
                delay = 0.05
            except StoreUnavailable:
                if self._closed:
                    return
                await asyncio.sleep(delay)
                delay = min(2 * delay, 2.0)
                continue
            if int(new_index) < int(index):  # Consul's index went backwards: start over
                index = 0
                continue
            index = new_index
            current = {i["Key"]: i for i in items or [] if match(i["Key"])}
            events = [
                WatchEvent("put", k, i.get("Value") or b"", i["ModifyIndex"])
                for k, i in current.items()
                if seen.get(k) != i["ModifyIndex"]
            ]
            events += [WatchEvent("delete", k, b"", int(index)) for k in seen if k not in current]
            seen = {k: i["ModifyIndex"] for k, i in current.items()}
            for ev in sorted(events, key=lambda e: (e.revision, e.key)):
                yield ev
