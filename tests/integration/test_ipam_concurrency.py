"""4 processes allocate from one pool at once: no address is handed out twice.

The pool is IPv6 (2001:db8:96::/64): 4,000 addresses do not fit in the IPv4
range test data may use (198.51.100.0/24)."""

from __future__ import annotations

import asyncio
import multiprocessing

from ipam.ipam import StoreIpam
from libnet.store import open_store

PROCS = 4
EACH = 1000


def _allocate(url: str, pool_id: str, owner: str, out) -> None:
    async def run() -> list[str]:
        store = open_store(url)
        try:
            ipam = StoreIpam(store, store)
            return [await ipam.request_address(pool_id, options={"owner": owner}) for _ in range(EACH)]
        finally:
            await store.close()

    out.put((owner, asyncio.run(run())))


def _run(url: str) -> None:
    async def create() -> str:
        store = open_store(url)
        try:
            return (await StoreIpam(store, store).request_pool("global", "2001:db8:96::/64", v6=True)).id
        finally:
            await store.close()

    pool_id = asyncio.run(create())
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_allocate, args=(url, pool_id, f"host{i}", out)) for i in range(PROCS)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)

    everything = [a for addrs in results.values() for a in addrs]
    assert len(everything) == PROCS * EACH
    assert len(set(everything)) == PROCS * EACH, "an address was handed out twice"

    async def check_and_release() -> None:
        store = open_store(url)
        try:
            ipam = StoreIpam(store, store)
            audit = {a.address: a.owner for a in await ipam.audit(pool_id)}
            for owner, addrs in results.items():
                assert all(audit[a] == owner for a in addrs)
            for addrs in results.values():
                for a in addrs:
                    await ipam.release_address(pool_id, a)
            assert [a.owner for a in await ipam.audit(pool_id)] == ["gateway"]  # the pool is empty
        finally:
            await store.close()

    asyncio.run(check_and_release())


def test_four_processes_on_sqlite(tmp_path) -> None:
    _run(f"sqlite://{tmp_path}/store.db")


def test_four_processes_on_etcd(etcd_server) -> None:
    _run(etcd_server.url)
