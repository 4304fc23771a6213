"""The cluster store with a local copy: degraded mode when it cannot be reached.

DESIGN.md, "Liveness": without the cluster store the agent starts from its
last known state and catches up when the store returns.  :class:`MirroredStore`
wraps the cluster store (etcd, Consul) and keeps a copy of every pair it has
read, written or seen in a watch -- the overlay networks this host serves,
their VNIs, their peers, the endpoints -- in a JSON file in the state dir
(written at most every :data:`FLUSH_DELAY` seconds and on close).

- **Healthy**: every call goes to the cluster store; results update the copy.
- **Degraded** (a call raised ``StoreUnavailable``, or :meth:`probe` found the
  store unreachable): reads (``get``, ``list``, ``exists``, ``revision``) are
  answered from the copy at once; writes and locks raise
  :class:`ClusterStoreDegraded` (an ``Unavailable``: the API answers 503) with
  a message naming the store and since when; watches wait for the store and
  then end with ``StoreUnavailable``, so their owners read everything again.
  A probe (every :data:`PROBE_INTERVAL` seconds) notices the store's return;
  then the listeners given to :meth:`on_recovered` run (the agent reconciles:
  a full re-read, then repair).

The copy is never written back to the cluster store: it only answers reads
while the store is away.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

from libnet.errors import KeyNotFound, StoreOutcomeUnknown, StoreUnavailable
from libnet.store.base import KVPair, Store, WatchEvent

T = TypeVar("T")

log = logging.getLogger("libnet.store.mirror")
PROBE_INTERVAL = 1.0
FLUSH_DELAY = 0.5
CACHE_VERSION = 1


class ClusterStoreDegraded(StoreUnavailable):
    """A write needs the cluster store, which cannot be reached (degraded mode)."""


class ClusterStoreOutcomeUnknown(ClusterStoreDegraded, StoreOutcomeUnknown):
    """A write reached the cluster store, which then stopped answering: it may stand
    (the store's ``StoreOutcomeUnknown``, kept through degraded mode)."""


class MirroredStore:
    """A :class:`~libnet.store.base.Store` over another, with a local copy; see the module docstring."""

    def __init__(self, remote: Store, cache_path: str, probe_interval: float = PROBE_INTERVAL) -> None:
        self.remote = remote
        self.scheme = remote.scheme
        self.cache_path = cache_path
        self.probe_interval = probe_interval
        #: time.time() when the store was found unreachable; None while healthy
        self.degraded_since: float | None = None
        self.last_error = ""
        self._cache: dict[str, tuple[bytes, int]] | None = None
        self._rev = 0
        self._dirty = False
        self._flush_handle: asyncio.TimerHandle | None = None
        self._probe: asyncio.Task[None] | None = None
        self._recovered = asyncio.Event()
        self._listeners: list[Callable[[], Awaitable[None] | None]] = []
        self._closed = False

    @property
    def url(self) -> str:
        return str(getattr(self.remote, "url", self.scheme))

    @property
    def degraded(self) -> bool:
        return self.degraded_since is not None

    def on_recovered(self, listener: Callable[[], Awaitable[None] | None]) -> None:
        """Call ``listener`` (sync or async) each time the store is back after an outage."""
        self._listeners.append(listener)

    # --- the copy -------------------------------------------------------------

    def _pairs(self) -> dict[str, tuple[bytes, int]]:
        if self._cache is None:
            self._cache = {}
            try:
                with open(self.cache_path) as f:
                    doc = json.load(f)
                if doc.get("version") == CACHE_VERSION:
                    self._cache = {k: (base64.b64decode(v), int(r)) for k, (v, r) in doc["pairs"].items()}
                    self._rev = int(doc.get("revision", 0))
            except FileNotFoundError:
                pass
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("the copy of the cluster store %s is unreadable (%s): starting without it", self.url, exc)
        return self._cache

    def _keep(self, key: str, value: bytes, revision: int) -> None:
        self._pairs()[key] = (value, revision)
        self._rev = max(self._rev, revision)
        self._changed()

    def _drop(self, key: str) -> None:
        if self._pairs().pop(key, None) is not None:
            self._changed()

    def _changed(self) -> None:
        self._dirty = True
        if self._flush_handle is None and not self._closed:
            with contextlib.suppress(RuntimeError):  # no running loop: flushed on close
                self._flush_handle = asyncio.get_running_loop().call_later(FLUSH_DELAY, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if not self._dirty or self._cache is None:
            return
        doc = {
            "version": CACHE_VERSION,
            "url": self.url,
            "revision": self._rev,
            "saved": time.time(),
            "pairs": {k: [base64.b64encode(v).decode(), r] for k, (v, r) in self._cache.items()},
        }
        tmp = f"{self.cache_path}.tmp"
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.cache_path)), exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f)
            os.replace(tmp, self.cache_path)
            self._dirty = False
        except OSError as exc:
            log.warning("cannot save the copy of the cluster store to %s: %s", self.cache_path, exc)

    # --- degraded mode ----------------------------------------------------------

    def _degrade(self, exc: BaseException) -> None:
        self.last_error = str(exc)
        if self.degraded_since is None:
            self.degraded_since = time.time()
            self._recovered.clear()
            log.warning(
                "the cluster store %s is unreachable (%s): degraded mode -- reads from the local copy, "
                "writes that need the cluster store refused until it returns",
                self.url,
                exc,
            )
        if self._probe is None or self._probe.done():
            with contextlib.suppress(RuntimeError):
                self._probe = asyncio.get_running_loop().create_task(self._probe_until_back())

    def refusal(self) -> ClusterStoreDegraded:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.degraded_since or time.time()))
        return ClusterStoreDegraded(
            f"the cluster store {self.url} is unreachable (since {since}): the agent runs degraded from its "
            "last known state; this change needs the cluster store -- retry when it is back "
            "(libnet agent status)",
            url=self.url,
            degraded_since=since,
        )

    async def probe(self) -> bool:
        """Ask the store once; enters degraded mode if it does not answer.  True if it answered."""
        try:
            self._rev = max(self._rev, await self.remote.revision())
        except StoreUnavailable as exc:
            self._degrade(exc)
            return False
        if self.degraded_since is not None:
            await self._recover()
        return True

    async def _probe_until_back(self) -> None:
        while self.degraded_since is not None and not self._closed:
            await asyncio.sleep(self.probe_interval)
            try:  # a short deadline: the store's own (5 s) would delay noticing its return
                rev = await asyncio.wait_for(self.remote.revision(), max(1.0, 2 * self.probe_interval))
            except (StoreUnavailable, TimeoutError) as exc:
                self.last_error = str(exc) or "no answer"
                continue
            self._rev = max(self._rev, rev)
            await self._recover()

    async def _recover(self) -> None:
        down = time.time() - (self.degraded_since or time.time())
        self.degraded_since = None
        self.last_error = ""
        self._recovered.set()
        log.warning("the cluster store %s is back after %.1fs: catching up", self.url, down)
        for listener in list(self._listeners):
            try:
                result = listener()
                if asyncio.iscoroutine(result):
                    asyncio.get_running_loop().create_task(result)
            except Exception:
                log.exception("catching up after the cluster store's return failed")

    async def _call(self, fn: Callable[[], Awaitable[T]], write: bool = False) -> T:
        if self.degraded_since is not None and write:
            raise self.refusal()
        try:
            return await fn()
        except StoreUnavailable as exc:
            self._degrade(exc)
            if write and isinstance(exc, StoreOutcomeUnknown):
                refusal = self.refusal()
                raise ClusterStoreOutcomeUnknown(
                    f"{refusal.message}; this write reached it and may have been applied: read it again "
                    "once the store is back",
                    **{**exc.ids, **refusal.ids},
                ) from exc
            if write:
                raise self.refusal() from exc
            raise

    # --- Store ------------------------------------------------------------------

    async def revision(self) -> int:
        if self.degraded_since is None:
            with contextlib.suppress(StoreUnavailable):
                rev = await self._call(self.remote.revision)
                self._rev = max(self._rev, rev)
                return rev
        self._pairs()
        return self._rev

    async def get(self, key: str) -> KVPair:
        if self.degraded_since is None:
            try:
                pair = await self._call(lambda: self.remote.get(key))
            except KeyNotFound:
                self._drop(key)
                raise
            except StoreUnavailable:
                pass
            else:
                self._keep(pair.key, pair.value, pair.revision)
                return pair
        hit = self._pairs().get(key)
        if hit is None:
            raise KeyNotFound("no such key (in the local copy of the cluster store)", key=key)
        return KVPair(key, hit[0], hit[1])

    async def exists(self, key: str) -> bool:
        try:
            await self.get(key)
        except KeyNotFound:
            return False
        return True

    async def list(self, prefix: str) -> list[KVPair]:
        if self.degraded_since is None:
            try:
                pairs = await self._call(lambda: self.remote.list(prefix))
            except StoreUnavailable:
                pass
            else:
                cache = self._pairs()
                fresh = {p.key for p in pairs}
                for key in [k for k in cache if k.startswith(prefix) and k not in fresh]:
                    self._drop(key)
                for p in pairs:
                    if cache.get(p.key) != (p.value, p.revision):
                        self._keep(p.key, p.value, p.revision)
                return pairs
        return [KVPair(k, v, r) for k, (v, r) in sorted(self._pairs().items()) if k.startswith(prefix)]

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> KVPair:
        pair = await self._call(lambda: self.remote.put(key, value, ttl), write=True)
        self._keep(pair.key, pair.value, pair.revision)
        return pair

    async def delete(self, key: str) -> bool:
        gone = await self._call(lambda: self.remote.delete(key), write=True)
        self._drop(key)
        return gone

    async def atomic_put(self, key: str, value: bytes, previous: KVPair | None, ttl: float | None = None) -> KVPair:
        pair = await self._call(lambda: self.remote.atomic_put(key, value, previous, ttl), write=True)
        self._keep(pair.key, pair.value, pair.revision)
        return pair

    async def atomic_delete(self, key: str, previous: KVPair) -> None:
        await self._call(lambda: self.remote.atomic_delete(key, previous), write=True)
        self._drop(key)

    def watch(self, key: str, start_revision: int | None = None) -> AsyncIterator[WatchEvent]:
        return self._watch(lambda: self.remote.watch(key, start_revision))

    def watch_prefix(self, prefix: str, start_revision: int | None = None) -> AsyncIterator[WatchEvent]:
        return self._watch(lambda: self.remote.watch_prefix(prefix, start_revision))

    async def _watch(self, open_watch: Callable[[], AsyncIterator[WatchEvent]]) -> AsyncIterator[WatchEvent]:
        if self.degraded_since is not None:
            # what was read came from the copy: once the store is back, make the owner read it all again
            await self._recovered.wait()
            raise StoreUnavailable("the cluster store is back: read everything again", url=self.url)
        try:
            async for ev in open_watch():
                if ev.kind == "put":
                    self._keep(ev.key, ev.value, ev.revision)
                else:
                    self._drop(ev.key)
                    self._rev = max(self._rev, ev.revision)
                yield ev
        except StoreUnavailable as exc:
            self._degrade(exc)
            raise

    def lock(self, key: str, ttl: float = 15.0) -> AbstractAsyncContextManager[None]:
        return self._lock(key, ttl)

    @contextlib.asynccontextmanager
    async def _lock(self, key: str, ttl: float) -> AsyncIterator[None]:
        if self.degraded_since is not None:
            raise self.refusal()
        try:
            async with self.remote.lock(key, ttl):
                yield
        except ClusterStoreDegraded:
            raise
        except StoreUnavailable as exc:
            self._degrade(exc)
            raise

    async def close(self) -> None:
        self._closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._flush()
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self.remote.close()
