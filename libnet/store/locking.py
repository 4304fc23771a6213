"""A mutex built on compare-and-swap with a TTL, for any Store backend.

The holder writes a random token create-only with a TTL, refreshes it while
the body runs, and deletes it only if it is still its own token; if the holder
dies, the TTL frees the lock.  Waiters poll with growing, jittered delays.  A
lock lost while its body runs cancels the body (``LockLost``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections.abc import AsyncIterator
from typing import Any

from libnet.errors import KeyExists, KeyModified, KeyNotFound, LibnetError, LockLost, StoreUnavailable, Unavailable
from libnet.store.base import KVPair, Store, check_key, check_ttl


@contextlib.asynccontextmanager
async def cas_lock(store: Store, key: str, ttl: float = 15.0) -> AsyncIterator[None]:
    """Hold ``key`` as a lock for the duration of the ``async with`` body.

    The key is refreshed every ``ttl / 3`` seconds.  If it is lost while the body runs
    (another writer removed or took it; the store unreachable until the TTL ran out),
    the body is cancelled and ``LockLost`` (with ``key``) raised in its place, as an etcd
    session's lock does: the body must not run on believing it is alone.  A loss seen
    only after the body ended raises nothing (the release finds the key not its own and
    leaves it).  Cancelling the holder from outside cancels as usual.
    """
    check_key(key)
    ttl = check_ttl(key, ttl) or 15.0
    token = secrets.token_hex(16).encode()
    delay = 0.005
    while True:
        try:
            pair = await store.atomic_put(key, token, None, ttl=ttl)
            break
        except KeyExists:
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)
    holder = _Holder(pair, asyncio.current_task())
    refresher = asyncio.create_task(_refresh(store, key, token, ttl, holder))
    try:
        yield
    except asyncio.CancelledError:
        holder.ending = True
        if holder.lost is not None and holder.task is not None and holder.task.uncancel() == 0:
            raise LockLost(f"the lock was lost while its body ran: {holder.lost}", key=key) from None
        raise
    finally:
        holder.ending = True
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        if holder.lost is None:
            with contextlib.suppress(KeyModified, KeyNotFound):
                await store.atomic_delete(key, holder.pair)
    if holder.lost is not None:  # seen by the refresher, but the body swallowed the cancellation
        if holder.task is not None and holder.task.cancelling():
            holder.task.uncancel()
        raise LockLost(f"the lock was lost while its body ran: {holder.lost}", key=key)


class _Holder:
    def __init__(self, pair: KVPair, task: asyncio.Task[Any] | None) -> None:
        self.pair = pair
        self.task = task  # the body's task: cancelled when the lock is lost
        self.lost: LibnetError | None = None
        self.ending = False  # the body is over: a loss seen now cancels nothing


async def _refresh(store: Store, key: str, token: bytes, ttl: float, holder: _Holder) -> None:
    """Refresh the key every ``ttl / 3``.  A failed refresh reads the key back: a write whose
    answer was lost may have stood (a new revision of our token: refreshed then), another
    holder may have it (lost); else it is tried again until the TTL since the last good
    refresh runs out (lost)."""
    loop = asyncio.get_running_loop()
    good = loop.time()
    while True:
        await asyncio.sleep(ttl / 3)
        while True:
            tried = loop.time()
            try:
                holder.pair = await store.atomic_put(key, token, holder.pair, ttl=ttl)
                good = tried
                break
            except (StoreUnavailable, KeyModified, KeyNotFound) as exc:
                problem: LibnetError = exc
            try:
                now = await store.get(key)
            except KeyNotFound:
                return _lose(holder, "its key is gone")
            except StoreUnavailable as exc:
                problem = exc
            else:
                if now.value != token:
                    return _lose(holder, "another holder took it")
                if now.revision != holder.pair.revision:  # our write stood, its answer lost
                    holder.pair, good = now, tried
                    break
            if loop.time() - good >= ttl * 0.9:
                return _lose(holder, f"not refreshed within its TTL of {ttl:g}s: {problem}")
            await asyncio.sleep(min(ttl / 10, 0.5))


def _lose(holder: _Holder, why: str) -> None:
    holder.lost = Unavailable(why)
    if not holder.ending and holder.task is not None:
        holder.task.cancel()
