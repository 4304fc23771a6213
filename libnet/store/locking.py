"""A mutex built on compare-and-swap with a TTL, for any Store backend.

The holder writes a random token create-only with a TTL, refreshes it while
the body runs, and deletes it only if it is still its own token; if the holder
dies, the TTL frees the lock.  Waiters poll with growing, jittered delays.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections.abc import AsyncIterator

from libnet.errors import KeyExists, KeyModified, KeyNotFound
from libnet.store.base import KVPair, Store, check_key, check_ttl


@contextlib.asynccontextmanager
async def cas_lock(store: Store, key: str, ttl: float = 15.0) -> AsyncIterator[None]:
    """Hold ``key`` as a lock for the duration of the ``async with`` body."""
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
    holder = _Holder(pair)
    refresher = asyncio.create_task(_refresh(store, key, token, ttl, holder))
    try:
        yield
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        with contextlib.suppress(KeyModified, KeyNotFound):
            await store.atomic_delete(key, holder.pair)


class _Holder:
    def __init__(self, pair: KVPair) -> None:
        self.pair = pair


async def _refresh(store: Store, key: str, token: bytes, ttl: float, holder: _Holder) -> None:
    while True:
        await asyncio.sleep(ttl / 3)
        holder.pair = await store.atomic_put(key, token, holder.pair, ttl=ttl)
