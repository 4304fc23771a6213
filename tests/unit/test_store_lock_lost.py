"""``Store.lock``: a holder whose lock is lost while its body runs is told so (``LockLost``).

Before, the refresher task died with its error unretrieved and the body ran on without the
lock while a second holder could take it: two holders of one mutex.  Now, as an etcd session's
lock, the body is cancelled and the ``async with`` raises ``LockLost`` (with the key).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from libnet.errors import LockLost, StoreOutcomeUnknown, StoreUnavailable, Unavailable
from libnet.store.memory import MemoryStore

KEY = "libnet/v1/locks/test"


class Outage:
    """A memory store whose refresh writes can fail as a store outage would."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.down = False  # every write and read: StoreUnavailable
        self.unknown_once = False  # the next write applied, its answer lost

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def atomic_put(self, key: str, value: bytes, previous: Any, ttl: float | None = None) -> Any:
        if self.down:
            raise StoreUnavailable("etcd did not answer within 5s", key=key)
        if self.unknown_once:
            self.unknown_once = False
            await self.inner.atomic_put(key, value, previous, ttl=ttl)
            raise StoreOutcomeUnknown("the answer was lost", key=key)
        return await self.inner.atomic_put(key, value, previous, ttl=ttl)

    async def get(self, key: str) -> Any:
        if self.down:
            raise StoreUnavailable("etcd did not answer within 5s", key=key)
        return await self.inner.get(key)

    def lock(self, key: str, ttl: float = 15.0) -> Any:
        from libnet.store.locking import cas_lock

        return cas_lock(self, key, ttl)  # type: ignore[arg-type]


async def test_a_lock_taken_away_cancels_the_body_and_raises_lock_lost() -> None:
    store = MemoryStore()
    reached_end = []
    with pytest.raises(LockLost) as caught:
        async with store.lock(KEY, ttl=0.3):
            await store.delete(KEY)  # expired and taken by nobody, or removed by hand
            await store.put(KEY, b"another holder's token")
            await asyncio.sleep(1.0)  # refreshes every ttl/3: the loss is seen within 0.1 s
            reached_end.append(1)
    assert not reached_end
    assert caught.value.ids["key"] == KEY
    assert isinstance(caught.value, Unavailable)
    # the other holder's lock is left alone
    assert (await store.get(KEY)).value == b"another holder's token"


async def test_an_outage_longer_than_the_ttl_loses_the_lock() -> None:
    store = Outage()
    with pytest.raises(LockLost, match="lost"):
        async with store.lock(KEY, ttl=0.3):
            store.down = True
            await asyncio.sleep(1.5)
    store.down = False


async def test_a_short_outage_keeps_the_lock() -> None:
    store = Outage()
    async with store.lock(KEY, ttl=0.6):
        await asyncio.sleep(0.25)  # one refresh done
        store.down = True
        await asyncio.sleep(0.25)  # a refresh fails; retried before the TTL runs out
        store.down = False
        await asyncio.sleep(0.6)
    assert not await store.inner.exists(KEY)  # released at the end


async def test_a_refresh_whose_answer_was_lost_but_stood_keeps_the_lock() -> None:
    store = Outage()
    async with store.lock(KEY, ttl=0.3):
        store.unknown_once = True
        await asyncio.sleep(0.8)  # several refreshes after the lost answer
    assert not await store.inner.exists(KEY)


async def test_cancelling_the_holder_from_outside_still_cancels() -> None:
    store = MemoryStore()
    started = asyncio.Event()

    async def hold() -> None:
        async with store.lock(KEY, ttl=0.3):
            started.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(hold())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await store.exists(KEY)


async def test_a_body_that_ends_before_the_loss_is_seen_ends_normally() -> None:
    store = MemoryStore()
    async with store.lock(KEY, ttl=0.3):
        await store.delete(KEY)  # lost, but the body ends before the next refresh
    assert not await store.exists(KEY)
