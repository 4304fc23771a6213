"""The cluster store's local copy: degraded reads, refused writes, catching up (issue 16)."""

from __future__ import annotations

import asyncio

import pytest

from libnet.errors import KeyNotFound, StoreUnavailable
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
