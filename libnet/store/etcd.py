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

Failover (``aetcd`` talks to one endpoint): a call that fails with a
connection error or ``Unavailable`` (the member is down, has no leader, or
timed out forwarding to a leader that died) is retried on the next endpoint
until the deadline; each try gets at most ``ATTEMPT_S`` seconds, so a member
that hangs while its cluster elects a new leader does not use up the whole
deadline.  A dropped client is closed a while later, not at once: closing a
gRPC channel cancels every call on it, and other tasks' calls may still run
on it.  A failed try of a write may still have been applied (its answer was
lost with the member): a compare-and-swap retried after such a try that then
finds the key holding exactly what it wrote (at a newer revision; or, for a
delete, finds the key gone) reports success rather than a conflict, so an
operation is never reported failed while its write stands -- libnet's values
carry the writer's ids, so another writer's identical value does not happen.
The same holds when the deadline ends right after such a try (the member
forwarded it and the cluster applied it after electing a leader): a write
goes on being tried for up to another deadline until one try answers, whose
compare settles whether the earlier one landed; when none answers, the
error is ``StoreOutcomeUnknown`` (the write may stand), never a plain
``StoreUnavailable``.

A try that failed without an answer may also still wait in a member (one
stopped or cut off with the request in its socket buffer) and be applied
much later, after the key moved on -- a create-only write would bring back
a key deleted since, a plain put undo a newer one.  So every write is fenced:
each store object keeps a key of its own under ``~libnet-fence/`` (a lease
of an hour, made again when it ends; a rewrite moves it to a new lease and
revokes the old one, and closing the store revokes it: the key goes with
it), every write transaction also compares
its revision, and after a try that went unanswered (timed out, cut off, or
cancelled with its caller; also when its write then ended in
``StoreOutcomeUnknown``) the store's next try of any write first rewrites it;
the unanswered try, whenever it arrives, finds another revision there and
does nothing.  Plain puts and deletes are transactions for that reason.  The
fence keys are left out of listings and watches.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, TypeVar

import aetcd
import aetcd.exceptions
import aetcd.rpc
import aetcd.utils

from libnet.errors import KeyNotFound, StoreOutcomeUnknown, StoreUnavailable, WatchCompacted
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
#: seconds one try of a call may take before the next endpoint is tried
ATTEMPT_S = 2.0
#: where each store object keeps its write fence: '~' starts no key libnet's
#: check_key accepts, so no libnet key or prefix reaches it
FENCE_PREFIX = "~libnet-fence/"
#: seconds a fence key lives after its last raise (its lease); gone, it is made again
FENCE_TTL_S = 3600
#: how often one try may find the fence moved by another write before giving up
MAX_FENCE_MOVES = 8

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
        self._retired: set[asyncio.Task[None]] = set()
        self._closed = False
        self._fence = (FENCE_PREFIX + secrets.token_hex(8)).encode()
        self._fence_rev = 0  # the fence key's revision this store's writes compare with; 0: not made
        self._fence_lease: int | None = None  # the lease the fence key is on now
        #: the newest fence revision a try compared whose answer never came (it may still wait in
        #: a member): no write compares with it again, the fence is raised past it first
        self._unsafe_rev = 0
        self._raising = asyncio.Lock()  # one raise for the many tries that need it at once

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

    async def _drop_client(self, client: aetcd.Client | None = None) -> None:
        """Stop using ``client`` (default: the current one) and move on to the next endpoint.

        Only the current client is dropped (many tasks fail at once when a
        member dies: the endpoint moves on once, not once per task), and it
        is closed later, when the calls other tasks still run on it ended."""
        if client is None:
            client = self._client
        if client is None:  # no client was made: just try the next endpoint
            self._idx = (self._idx + 1) % len(self.endpoints)
            return
        if client is not self._client:
            return
        self._client = None
        self._idx = (self._idx + 1) % len(self.endpoints)
        if self._closed:
            await self._close_client(client)
            return
        task = asyncio.get_running_loop().create_task(self._close_client(client, after=self.timeout + 1))
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    @staticmethod
    async def _close_client(client: aetcd.Client, after: float = 0) -> None:
        try:
            await asyncio.sleep(after)
        finally:  # also when cancelled by close(): close it now
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 1)

    async def _call(self, fn: Callable[[aetcd.Client], Awaitable[T]], write: str | None = None) -> T:
        """Run ``fn(client)`` within the deadline, retrying across the endpoints until it ends.

        ``write``: the key of a write ``fn`` makes.  A failed try of a write may
        still have been applied (its answer lost with the member, or cut off by
        this deadline), so when the deadline passes after such a try the write
        is tried for up to another ``timeout``: a later try's answer settles it
        (the callers' retries are idempotent or see their own earlier value).
        If none answers, ``StoreOutcomeUnknown``; a plain ``StoreUnavailable``
        means no try can have been applied."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        last: BaseException | None = None
        pause = 0.05
        maybe_applied = settling = False
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                if maybe_applied and not settling:
                    settling = True
                    deadline = loop.time() + self.timeout
                    pause = 0.05
                    continue
                break
            client = None
            sent = False
            try:
                client = await self._connected()
                sent = True
                return await asyncio.wait_for(fn(client), min(remaining, ATTEMPT_S))
            except (*_UNAVAILABLE, aetcd.exceptions.ClientError) as exc:
                if isinstance(exc, aetcd.exceptions.ClientError) and not _unavailable(exc):
                    raise
                last = exc
                maybe_applied = maybe_applied or (write is not None and sent and not _not_sent(exc))
                await self._drop_client(client)
                await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))
                pause = min(pause * 2, 0.5)
        if maybe_applied:
            raise StoreOutcomeUnknown(
                f"etcd did not answer within {2 * self.timeout:g}s and a try of this write may have been applied: "
                f"{last!r}",
                key=write,
                url=self.url,
            )
        raise StoreUnavailable(f"etcd did not answer within {self.timeout:g}s: {last!r}", url=self.url)

    # --- Store ----------------------------------------------------------------

    async def revision(self) -> int:
        # a range read of an empty range still carries the store's revision
        result = await self._call(lambda c: c.get_prefix(b"\x00"))
        revision: int = result.header.revision
        return revision

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
        k = key.encode()

        async def put(c: aetcd.Client) -> Any:
            return c.transactions.put(k, value, lease=await self._lease(c, ttl))

        _ok, responses, _retried = await self._write(key, None, [put])
        value_, meta = responses[-1][0]
        return KVPair(key, value_, meta.mod_revision)

    async def delete(self, key: str) -> bool:
        check_key(key)
        k = key.encode()

        async def delete(c: aetcd.Client) -> Any:
            return c.transactions.delete(k)

        _ok, responses, _retried = await self._write(key, None, [delete])
        return bool(responses[0].response_delete_range.deleted)

    async def exists(self, key: str) -> bool:
        check_key(key)
        return await self._call(lambda c: c.get(key.encode())) is not None

    async def list(self, prefix: str) -> list[KVPair]:
        check_key(prefix, prefix=True)

        async def body(c: aetcd.Client) -> builtins.list[KVPair]:
            if prefix:
                result = await c.get_prefix(prefix.encode())
            else:
                result = await c.get_range(b"\x00", b"\x00")  # every key
            pairs = (KVPair(kv.key.decode(), kv.value, kv.mod_revision) for kv in result)
            return [p for p in pairs if not p.key.startswith(FENCE_PREFIX)]  # stores' fences are no data

        return sorted(await self._call(body), key=lambda p: p.key)

    async def _raise_fence(self, c: aetcd.Client) -> None:
        """(Re)write this store's fence key: every try sent before compares with
        an older revision of it and can no longer apply, wherever it waits."""
        lease = await c.lease(FENCE_TTL_S)
        result = await c.put(self._fence, b"", lease=lease)
        self._fence_rev = result.header.revision
        old, self._fence_lease = self._fence_lease, lease.id
        if old is not None and old != lease.id:  # the key is on the new one: the old would idle for its hour
            with contextlib.suppress(Exception):
                await c.revoke_lease(old)

    async def _fence_for_try(self, c: aetcd.Client) -> int:
        """The fence revision a try may compare: raised first when not made yet or
        when a try that compared it went unanswered (timed out, cut off, cancelled)."""
        if self._fence_rev and self._fence_rev > self._unsafe_rev:
            return self._fence_rev
        async with self._raising:
            if not self._fence_rev or self._fence_rev <= self._unsafe_rev:  # not raised meanwhile
                await self._raise_fence(c)
        return self._fence_rev

    async def _write(
        self, key: str, compare: Any, success: builtins.list[Callable[[aetcd.Client], Awaitable[Any]]]
    ) -> tuple[bool, builtins.list[Any], bool]:
        """One fenced write transaction: ``success`` ops if ``compare`` (None: always)
        holds and the fence is where this store left it.  Returns (succeeded, the
        responses -- on success the ops' then the key's range, on failure the key's
        range first --, whether an earlier try failed and so may have been applied).

        The fence (module docstring): a try that went unanswered -- whatever
        write of this store it belonged to, and also when that write was given
        up or cancelled -- marks the fence revision it compared unsafe, and the
        store's next try first raises the fence past it, so the unanswered one,
        if it still waits in a member, fails its compare when it arrives; a
        fence moved by another write of this store (or gone with its lease) is
        taken as it is and the try repeated."""
        k = key.encode()
        unanswered = False  # a try of this write was sent and got no answer: it may stand

        async def body(c: aetcd.Client) -> tuple[bool, builtins.list[Any]]:
            nonlocal unanswered
            ops = [await op(c) for op in success]
            for _ in range(MAX_FENCE_MOVES):
                rev = await self._fence_for_try(c)
                fence = c.transactions.mod(self._fence) == rev
                try:
                    ok, responses = await c.transaction(
                        compare=[fence] if compare is None else [compare(c), fence],
                        success=[*ops, c.transactions.get(k)],
                        failure=[c.transactions.get(k), c.transactions.get(self._fence)],
                    )
                except BaseException as exc:  # also a cancel, by the try's deadline or the caller
                    if not _not_sent(exc):
                        self._unsafe_rev = max(self._unsafe_rev, rev)
                        unanswered = True
                    raise
                if ok:
                    return True, responses
                there = responses[-1]
                if there and there[0][1].mod_revision == rev:
                    return False, responses  # the fence held: the compare failed
                if self._fence_rev == rev:  # not moved on since by another write of this store
                    if there:
                        self._fence_rev = there[0][1].mod_revision
                    else:
                        self._fence_rev = 0  # its lease ended: made again
            if unanswered:  # an earlier try may stand
                raise StoreOutcomeUnknown("etcd: this store's write fence kept moving", key=key, url=self.url)
            raise StoreUnavailable("etcd: this store's write fence kept moving", key=key)

        ok, responses = await self._call(body, write=key)
        return ok, responses, unanswered

    async def _txn(
        self, key: str, compare: Any, success: builtins.list[Callable[[aetcd.Client], Any]]
    ) -> tuple[bool, KVPair | None, bool]:
        """A fenced compare-and-write; returns (succeeded, the key's pair afterwards/now,
        whether an earlier try failed -- and so may have been applied)."""
        ok, responses, retried = await self._write(key, compare, [_lift(op) for op in success])
        kvs = responses[-1] if ok else responses[0]
        if not kvs:
            return ok, None, retried
        value, meta = kvs[0]
        return ok, KVPair(key, value, meta.mod_revision), retried

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
        ok, now, retried = await self._txn(key, compare, [lambda c: c.transactions.put(k, value, lease=lease)])
        if not ok and retried and now is not None and _ours(now, value, previous):
            return now  # an earlier try was applied, its answer lost
        if not ok:
            check_previous(key, now, previous)
            raise StoreUnavailable("etcd transaction failed without a conflict", key=key)
        assert now is not None
        return now

    async def atomic_delete(self, key: str, previous: KVPair) -> None:
        check_key(key)
        k = key.encode()
        ok, now, retried = await self._txn(
            key, lambda c: c.transactions.mod(k) == previous.revision, [lambda c: c.transactions.delete(k)]
        )
        if not ok:
            if now is None and retried:
                return  # an earlier try deleted it, its answer lost
            if now is None:
                raise KeyNotFound("no such key", key=key)
            check_previous(key, now, previous)

    def lock(self, key: str, ttl: float = 15.0) -> AbstractAsyncContextManager[None]:
        return cas_lock(self, key, ttl)

    async def close(self) -> None:
        if not self._closed and self._client is not None and self._fence_lease is not None:
            # the fence goes with its lease: no key of a gone store left for an hour (best effort:
            # an unreachable store lets it expire)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client.revoke_lease(self._fence_lease), min(self.timeout, 2.0))
            self._fence_lease = None
        self._closed = True
        await self._drop_client()
        for task in list(self._retired):
            task.cancel()
        if self._retired:
            await asyncio.gather(*self._retired, return_exceptions=True)

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
                    name = ev.kv.key.decode()
                    if name.startswith(FENCE_PREFIX):
                        continue  # a store's write fence (watched with the empty prefix)
                    kind: Literal["put", "delete"] = "put" if ev.kind == "PUT" else "delete"
                    yield WatchEvent(kind, name, ev.kv.value if kind == "put" else b"", rev)
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
                await self._drop_client(client)
            finally:
                # cancel on the server only while its client is still ours;
                # a dropped client took its watches with it
                if watch is not None and client is self._client:
                    with contextlib.suppress(Exception):
                        await watch.cancel()
            await asyncio.sleep(delay)  # reconnect with backoff
            delay = min(delay * 2, 2.0)


#: what etcd members answer, with gRPC code Unknown, while the cluster changes leader
_TRANSIENT = ("proposal dropped", "leader", "timed out", "not capable", "too many requests", "stopped")


def _unavailable(exc: BaseException) -> bool:
    """Whether an aetcd error means "this member cannot serve now" (retry elsewhere)."""
    if isinstance(exc, _UNAVAILABLE):
        return True
    return isinstance(exc, aetcd.exceptions.ClientError) and any(t in str(exc).lower() for t in _TRANSIENT)


def _lift(op: Callable[[aetcd.Client], Any]) -> Callable[[aetcd.Client], Awaitable[Any]]:
    """A transaction op builder as the coroutine :meth:`EtcdStore._write` awaits."""

    async def run(c: aetcd.Client) -> Any:
        return op(c)

    return run


def _not_sent(exc: BaseException) -> bool:
    """Whether a failed try surely never reached a member (gRPC could not connect)."""
    return isinstance(exc, aetcd.exceptions.ConnectionFailedError) and "failed to connect" in str(exc).lower()


def _ours(now: KVPair | None, value: bytes, previous: KVPair | None) -> bool:
    """Whether ``now`` is the write of ``value`` over ``previous`` (None: a create)."""
    return now is not None and now.value == value and (previous is None or now.revision > previous.revision)
