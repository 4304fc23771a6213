"""etcd v3 store (``etcd://host:2379[,host:2379]``), for clusters.

Client: ``aetcd`` (PyPI), an asyncio gRPC client.  Compared:

- ``aetcd``: native asyncio, the whole v3 API we need (transactions on
  ``mod_revision``, leases, watches with ``start_revision``), maintained
  (1.0, 2026);
- ``etcd3gw``: OpenStack's client for the HTTP gateway, well kept but
  synchronous (requests), watches on a thread per watch;
- ``etcd3`` / ``aioetcd3``: unmaintained since 2020, pinned to old protobuf.

So ``aetcd``.  On top of it this module adds what libnet's contract needs:
a deadline on every call (``StoreUnavailable`` instead of a hang), failover
across the listed endpoints, CAS as a transaction comparing ``mod_revision``
(``version == 0`` for create-only), TTLs as leases (etcd rounds a TTL up to
its minimum lease TTL, about 2 s on a default single node), and watches that
reconnect with backoff and resume from the revision after the last event
seen, so no event is lost or repeated across an etcd restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import aetcd
import aetcd.exceptions
import aetcd.rpc
import aetcd.utils

from libnet.errors import KeyNotFound, StoreUnavailable, WatchCompacted
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

_UNAVAILABLE = (
    aetcd.exceptions.ConnectionFailedError,
    aetcd.exceptions.ConnectionTimeoutError,
    aetcd.exceptions.WatchTimeoutError,
    aetcd.exceptions.InternalError,
    asyncio.TimeoutError,
    OSError,
)


class EtcdStore:
    """libnet's Store on etcd v3; see the module docstring."""

    scheme = "etcd"

    def __init__(self, endpoints: list[tuple[str, int]], timeout: float = DEFAULT_TIMEOUT) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = endpoints
        self.timeout = timeout
        self._idx = 0
        self._client: aetcd.Client | None = None
        self._closed = False

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(f"{h}:{p}" for h, p in self.endpoints)

    # --- plumbing -------------------------------------------------------------

    async def _connected(self) -> aetcd.Client:
        if self._closed:
            raise StoreUnavailable("store is closed", url=self.url)
        if self._client is None:
            host, port = self.endpoints[self._idx]
            client = aetcd.Client(
                host=host,
                port=port,
                timeout=math.ceil(self.timeout),
                options={
                    # a channel of its own, and quick reconnects: gRPC otherwise shares a subchannel
                    # that sits in reconnect backoff for seconds after etcd was away
                    "grpc.use_local_subchannel_pool": 1,
                    "grpc.initial_reconnect_backoff_ms": 100,
                    "grpc.max_reconnect_backoff_ms": 1000,
                },
            )
            await client.connect()
            self._client = client
        return self._client

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 1)

    async def _call(self, fn: Callable[[aetcd.Client], Awaitable[T]]) -> T:
        """Run ``fn(client)`` within the deadline, retrying across the endpoints until it ends."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        last: BaseException | None = None
        pause = 0.05
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                return await asyncio.wait_for(fn(await self._connected()), remaining)
            except _UNAVAILABLE as exc:
                last = exc
                await self._drop_client()
                self._idx = (self._idx + 1) % len(self.endpoints)
                await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))
                pause = min(pause * 2, 0.5)
        raise StoreUnavailable(f"etcd did not answer within {self.timeout:g}s: {last!r}", url=self.url)

    # --- Store ----------------------------------------------------------------

    async def revision(self) -> int:
        # a range read of an empty range still carries the store's revision
        result = await self._call(lambda c: c.get_prefix(b"\x00"))
        return result.header.revision

    async def get(self, key: str) -> KVPair:
        check_key(key)
        kv = await self._call(lambda c: c.get(key.encode()))
        if kv is None:
            raise KeyNotFound("no such key", key=key)
        return KVPair(key, kv.value, kv.mod_revision)

    async def _lease(self, c: aetcd.Client, ttl: float | None) -> Any:
        return None if ttl is None else await c.lease(max(1, math.ceil(ttl)))

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> KVPair:
        check_key(key)
        check_value(key, value)
        ttl = check_ttl(key, ttl)

        async def body(c: aetcd.Client) -> KVPair:
            result = await c.put(key.encode(), value, lease=await self._lease(c, ttl))
            return KVPair(key, value, result.header.revision)

        return await self._call(body)

    async def delete(self, key: str) -> bool:
        check_key(key)
        result = await self._call(lambda c: c.delete(key.encode()))
        return bool(result and result.deleted)

    async def exists(self, key: str) -> bool:
        check_key(key)
        return await self._call(lambda c: c.get(key.encode())) is not None

    async def list(self, prefix: str) -> list[KVPair]:
        check_key(prefix, prefix=True)

        async def body(c: aetcd.Client) -> list[KVPair]:
            if prefix:
                result = await c.get_prefix(prefix.encode())
            else:
                result = await c.get_range(b"\x00", b"\x00")  # every key
            return [KVPair(kv.key.decode(), kv.value, kv.mod_revision) for kv in result]

        return sorted(await self._call(body), key=lambda p: p.key)

    async def _txn(self, key: str, compare: Any, success: list[Any]) -> tuple[bool, KVPair | None]:
        """Run a transaction; returns (succeeded, the key's pair afterwards/now)."""
        k = key.encode()

        async def body(c: aetcd.Client) -> tuple[bool, KVPair | None]:
            ops = [op(c) for op in success]
            ok, responses = await c.transaction(
                compare=[compare(c)], success=[*ops, c.transactions.get(k)], failure=[c.transactions.get(k)]
            )
            kvs = responses[-1]
            if not kvs:
                return ok, None
            value, meta = kvs[0]
            return ok, KVPair(key, value, meta.mod_revision)

        return await self._call(body)

    async def atomic_put(self, key: str, value: bytes, previous: KVPair | None, ttl: float | None = None) -> KVPair:
        check_key(key)
        check_value(key, value)
        ttl = check_ttl(key, ttl)
        k = key.encode()
        lease = None
        if ttl is not None:
            lease = await self._call(lambda c: self._lease(c, ttl))
        if previous is None:
            compare = lambda c: c.transactions.version(k) == 0  # noqa: E731
        else:
            compare = lambda c: c.transactions.mod(k) == previous.revision  # noqa: E731
        ok, now = await self._txn(key, compare, [lambda c: c.transactions.put(k, value, lease=lease)])
        if not ok:
            check_previous(key, now, previous)
            raise StoreUnavailable("etcd transaction failed without a conflict", key=key)
        assert now is not None
        return now

    async def atomic_delete(self, key: str, previous: KVPair) -> None:
        check_key(key)
        k = key.encode()
        ok, now = await self._txn(
            key, lambda c: c.transactions.mod(k) == previous.revision, [lambda c: c.transactions.delete(k)]
        )
        if not ok:
            if now is None:
                raise KeyNotFound("no such key", key=key)
            check_previous(key, now, previous)

    def lock(self, key: str, ttl: float = 15.0) -> AbstractAsyncContextManager[None]:
        return cas_lock(self, key, ttl)

    async def close(self) -> None:
        self._closed = True
        await self._drop_client()

    # --- watches --------------------------------------------------------------

    def watch(self, key: str, start_revision: int | None = None) -> AsyncIterator[WatchEvent]:
        check_key(key)
        return self._watch(key.encode(), None, start_revision)

    def watch_prefix(self, prefix: str, start_revision: int | None = None) -> AsyncIterator[WatchEvent]:
        check_key(prefix, prefix=True)
        start = prefix.encode() or b"\x00"
        end = aetcd.utils.prefix_range_end(prefix.encode()) if prefix else b"\x00"
        return self._watch(start, end, start_revision)

    async def _watch(
        self, key: bytes, range_end: bytes | None, start_revision: int | None
    ) -> AsyncIterator[WatchEvent]:
        last = await self.revision() if start_revision is None else start_revision
        delay = 0.05
        while True:
            watch = client = None
            try:
                client = await self._connected()
                watch = await asyncio.wait_for(
                    client.watch(key, range_end=range_end, start_revision=last + 1), self.timeout
                )
                delay = 0.05
                async for ev in watch:
                    rev = ev.kv.mod_revision
                    if rev <= last:
                        continue  # already delivered before a reconnect
                    last = rev
                    kind = "put" if ev.kind == "PUT" else "delete"
                    yield WatchEvent(kind, ev.kv.key.decode(), ev.kv.value if kind == "put" else b"", rev)
                # the stream ended without an error: its client was closed,
                # by close() (stop) or by a failing call elsewhere (resume)
                if self._closed:
                    return
            except aetcd.exceptions.RevisionCompactedError as exc:
                raise WatchCompacted("etcd compacted the watched history", revision=last) from exc
            except StoreUnavailable:
                if self._closed:
                    return
                raise
            except (*_UNAVAILABLE, aetcd.exceptions.ClientError, aetcd.rpc.AioRpcError):
                await self._drop_client()
                self._idx = (self._idx + 1) % len(self.endpoints)
            finally:
                # cancel on the server only while its client is still ours;
                # a dropped client took its watches with it
                if watch is not None and client is self._client:
                    with contextlib.suppress(Exception):
                        await watch.cancel()
            await asyncio.sleep(delay)  # reconnect with backoff
            delay = min(delay * 2, 2.0)
