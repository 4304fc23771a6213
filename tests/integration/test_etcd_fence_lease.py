"""etcd: a store's write fence does not outlive it, and a raised fence frees its old lease.

Each ``EtcdStore`` keeps a fence key (``~libnet-fence/<hex>``) on a one-hour lease
(:mod:`libnet.store.etcd`).  Before, a closed store's fence stayed for that hour (one
more key per agent restart in ``etcdctl get --prefix ""``), and every raise of the fence
after an unanswered try granted a new lease while the old one idled until it expired.
Against a real single-node etcd (the session's ``etcd_server``).
"""

from __future__ import annotations

import aetcd

from libnet.store.etcd import EtcdStore


async def _raw(endpoint: str) -> aetcd.Client:
    host, port = endpoint.rsplit(":", 1)
    client = aetcd.Client(host=host, port=int(port))
    await client.connect()
    return client


async def test_a_closed_store_takes_its_fence_and_a_raise_frees_the_old_lease(etcd_server) -> None:
    raw = await _raw(etcd_server.endpoint)
    host, port = etcd_server.endpoint.rsplit(":", 1)
    store = EtcdStore([(host, int(port))])
    try:
        await store.put("libnet/test/fence/a", b"1")
        fence = store._fence
        assert await raw.get(fence) is not None
        first = store._fence_lease
        assert first is not None and (await raw.get_lease_info(first)).TTL > 0

        store._unsafe_rev = store._fence_rev  # as after a try that went unanswered
        await store.put("libnet/test/fence/a", b"2")
        assert store._fence_lease not in (None, first)
        assert (await raw.get_lease_info(first)).TTL == -1  # revoked, not idling for an hour
        assert await raw.get(fence) is not None  # the fence itself is on the new lease
        second = store._fence_lease

        await store.close()
        assert await raw.get(fence) is None
        assert (await raw.get_lease_info(second)).TTL == -1
        assert (await raw.get(b"libnet/test/fence/a")).value == b"2"  # data stays
    finally:
        await store.close()
        await raw.delete(b"libnet/test/fence/a")
        await raw.close()
