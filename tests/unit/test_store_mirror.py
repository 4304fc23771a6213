"""The cluster store's local copy: degraded reads, refused writes, catching up (issue 16)."""

from __future__ import annotations

import asyncio

import pytest

from libnet.errors import KeyNotFound, StoreOutcomeUnknown, StoreUnavailable
from libnet.store.memory import MemoryStore
from libnet.store.mirror import ClusterStoreDegraded, MirroredStore


class Flaky:
    """A memory store that can be made unreachable."""

    scheme = "etcd"
    url = "etcd://203.0.113.9:2379"

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.down = False

    def __getattr__(self, name: str):
        attr = getattr(self.inner, name)
        if name in ("watch", "watch_prefix", "lock", "close") or not callable(attr):
            return attr

        async def call(*args, **kwargs):
            if self.down:
                raise StoreUnavailable("etcd did not answer within 5s", url=self.url)
            return await attr(*args, **kwargs)

        return call


async def test_degraded_reads_from_the_copy_refuses_writes_and_catches_up(tmp_path) -> None:
    remote = Flaky()
    path = str(tmp_path / "copy.json")
    store = MirroredStore(remote, path, probe_interval=0.05)
    await store.put("libnet/v1/overlay/networks/n1", b"300")
    await remote.inner.put("libnet/v1/overlay/peers/n1/e1", b"peer")
    assert [p.key for p in await store.list("libnet/v1/overlay/peers/")] == ["libnet/v1/overlay/peers/n1/e1"]
    await store.close()

    # a restart while the store is down: the copy on disk answers
    remote.down = True
    store = MirroredStore(remote, path, probe_interval=0.05)
    caught_up = []
    store.on_recovered(lambda: caught_up.append(1))
    assert not await store.probe()
    assert store.degraded and store.degraded_since
    assert (await store.get("libnet/v1/overlay/networks/n1")).value == b"300"
    assert [p.value for p in await store.list("libnet/v1/overlay/peers/n1/")] == [b"peer"]
    with pytest.raises(KeyNotFound):
        await store.get("libnet/v1/overlay/networks/n2")
    with pytest.raises(ClusterStoreDegraded, match=r"unreachable .*since"):
        await store.put("libnet/v1/overlay/networks/n2", b"301")
    with pytest.raises(ClusterStoreDegraded):
        async with store.lock("libnet/v1/locks/x"):
            pass

    remote.down = False
    for _ in range(100):
        if caught_up:
            break
        await asyncio.sleep(0.02)
    assert caught_up == [1] and not store.degraded
    await store.put("libnet/v1/overlay/networks/n2", b"301")
    await store.close()


async def test_a_write_of_unknown_outcome_stays_unknown_through_the_copy(tmp_path) -> None:
    """etcd's StoreOutcomeUnknown (the write may stand) is not turned into a plain
    refusal (which says it was not applied): still a ClusterStoreDegraded (503, degraded
    mode entered) and a StoreOutcomeUnknown naming the key."""
    remote = Flaky()
    store = MirroredStore(remote, str(tmp_path / "copy.json"), probe_interval=0.05)

    async def lost_answer(key, value, previous, ttl=None):  # type: ignore[no-untyped-def]
        await remote.inner.atomic_put(key, value, previous, ttl)  # applied; its answer lost
        remote.down = True
        raise StoreOutcomeUnknown("etcd did not answer within 10s", key=key, url=remote.url)

    remote.atomic_put = lost_answer  # type: ignore[method-assign]
    with pytest.raises(StoreOutcomeUnknown, match="may have been applied") as caught:
        await store.atomic_put("libnet/v1/overlay/networks/n3", b"302", None)
    assert isinstance(caught.value, ClusterStoreDegraded) and store.degraded
    assert caught.value.ids["key"] == "libnet/v1/overlay/networks/n3"
    with pytest.raises(ClusterStoreDegraded) as refused:  # not sent at all: a plain refusal
        await store.put("libnet/v1/overlay/networks/n4", b"303")
    assert not isinstance(refused.value, StoreOutcomeUnknown)
    await store.close()
