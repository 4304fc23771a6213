"""IPAM: allocation speed on memory and SQLite, against CNI's host-local, and on etcd under contention.

(a) Fill a /16 (65,533 addresses after the gateway) and empty it again, on the
    memory store and on SQLite; the same with an IPv6 /64.
(b) 1,000 allocations on SQLite against 1,000 ADDs of CNI's reference
    ``host-local`` IPAM plugin (``/usr/lib/cni/host-local``, Debian
    ``containernetworking-plugins``) on the same kind of pool, in the same
    run; the ratio is libnet's per-allocation speed-up.
(c) 4 processes allocate 1,000 addresses each from one pool on a real
    single-node etcd at once: allocations/s over the whole run and the number
    of duplicates (must be 0).

Its pools (a /16 and /20s of 198.51.0.0/16) are store data only, as in the
unit tests: no address reaches a kernel (host-local only writes its files),
so the test hosts' rule (198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32)
does not bind them, and a /24 could not hold the 65,533 addresses filled.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import subprocess
import tempfile
import time

from benchmarks.common import emit, parser, progress, require
from ipam.ipam import StoreIpam
from libnet.store import open_store
from libnet.testing.etcd import EtcdServer, find_etcd

NAME = "ipam_bench"
HOST_LOCAL = "/usr/lib/cni/host-local"


async def fill_and_empty(url: str, subnet: str, v6: bool, limit: int | None = None) -> tuple[float, float, int]:
    """(allocations/s, releases/s, count) filling ``subnet`` then emptying it."""
    store = open_store(url)
    try:
        ipam = StoreIpam(store)
        pool = await ipam.request_pool("local", subnet, v6=v6)
        got: list[str] = []
        t = time.perf_counter()
        while limit is None or len(got) < limit:
            try:
                got.append(await ipam.request_address(pool.id))
            except Exception:  # PoolExhausted: the pool is full
                break
        alloc = len(got) / (time.perf_counter() - t)
        t = time.perf_counter()
        for a in got:
            await ipam.release_address(pool.id, a)
        release = len(got) / (time.perf_counter() - t)
        assert len(set(got)) == len(got)
        await ipam.release_pool(pool.id)
        return alloc, release, len(got)
    finally:
        await store.close()


def host_local_rate(n: int, tmp: str) -> float:
    """ADDs per second through the host-local binary."""
    conf = json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "bench",
            "type": "bridge",
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "198.51.96.0/20"}]],
                "dataDir": os.path.join(tmp, "host-local"),
            },
        }
    ).encode()
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_NETNS": "/proc/self/ns/net",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": os.path.dirname(HOST_LOCAL),
        "PATH": os.environ.get("PATH", ""),
    }
    t = time.perf_counter()
    for i in range(n):
        subprocess.run(
            [HOST_LOCAL], input=conf, env={**env, "CNI_CONTAINERID": f"bench{i}"}, check=True, capture_output=True
        )
    return n / (time.perf_counter() - t)


def _etcd_worker(url: str, pool_id: str, n: int, out) -> None:
    async def run() -> tuple[list[str], int]:
        store = open_store(url)
        try:
            ipam = StoreIpam(store, store)
            return [await ipam.request_address(pool_id) for _ in range(n)], ipam.conflicts
        finally:
            await store.close()

    out.put(asyncio.run(run()))


def etcd_concurrent(url: str, procs: int, each: int, subnet: str = "198.51.96.0/20") -> tuple[float, int, int]:
    """(allocations/s, duplicates, lost races) for ``procs`` processes at once."""

    async def create() -> str:
        store = open_store(url)
        try:
            return (await StoreIpam(store, store).request_pool("global", subnet)).id
        finally:
            await store.close()

    pool_id = asyncio.run(create())
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    workers = [ctx.Process(target=_etcd_worker, args=(url, pool_id, each, out)) for _ in range(procs)]
    t = time.perf_counter()
    for w in workers:
        w.start()
    results = [out.get(timeout=600) for _ in workers]
    elapsed = time.perf_counter() - t
    for w in workers:
        w.join(timeout=60)
    everything = [a for r, _ in results for a in r]
    conflicts = sum(c for _, c in results)
    return len(everything) / elapsed, len(everything) - len(set(everything)), conflicts


def main() -> dict:
    args = parser(NAME, __doc__).parse_args()
    require(HOST_LOCAL, "containernetworking-plugins")
    if find_etcd() is None:
        raise SystemExit("ipam_bench needs etcd: install the Debian package 'etcd-server'")
    subnet, limit = ("198.51.0.0/16", 2000) if args.quick else ("198.51.0.0/16", None)
    n_cmp = 100 if args.quick else 1000
    each = 100 if args.quick else 1000
    with tempfile.TemporaryDirectory() as tmp:
        progress(f"memory: fill and empty {subnet}")
        mem_a, mem_r, filled = asyncio.run(fill_and_empty("memory://", subnet, False, limit))
        progress("memory: IPv6 /64, as many addresses")
        v6_a, _v6_r, _ = asyncio.run(fill_and_empty("memory://", "2001:db8:1:2::/64", True, filled))
        progress(f"sqlite: fill and empty {subnet}")
        sq_a, sq_r, _ = asyncio.run(fill_and_empty(f"sqlite://{tmp}/fill.db", subnet, False, limit))
        sq6_a, _, _ = asyncio.run(fill_and_empty(f"sqlite://{tmp}/fill6.db", "2001:db8:1:2::/64", True, filled))
        progress(f"sqlite vs host-local: {n_cmp} allocations each")
        sq_cmp, _, _ = asyncio.run(fill_and_empty(f"sqlite://{tmp}/cmp.db", "198.51.96.0/20", False, n_cmp))
        hl = host_local_rate(n_cmp, tmp)
    progress(f"etcd: 4 processes x {each} allocations")
    with EtcdServer() as server:
        etcd_rate, dups, conflicts = etcd_concurrent(server.url, 4, each)
        progress("etcd: 1 process, for the contention ratio")
        etcd_single, _, _ = etcd_concurrent(server.url, 1, each, "198.51.112.0/20")
    metrics = {
        "memory_allocs_per_s": round(mem_a),
        "memory_releases_per_s": round(mem_r),
        "sqlite_allocs_per_s": round(sq_a),
        "sqlite_releases_per_s": round(sq_r),
        "v6_allocs_per_s": round(v6_a),
        "sqlite_v6_allocs_per_s": round(sq6_a),
        "sqlite_1000_allocs_per_s": round(sq_cmp),
        "etcd_concurrent_allocs_per_s": round(etcd_rate),
        "etcd_duplicates": dups,
        "etcd_lost_races": conflicts,
        "etcd_single_process_allocs_per_s": round(etcd_single),
    }
    peers = {"host_local_allocs_per_s": round(hl, 1)}
    ratios = {
        "speedup_vs_host_local": round(sq_cmp / hl, 1),
        "v6_vs_v4_memory": round(v6_a / mem_a, 2),
        "etcd_4_processes_vs_1": round(etcd_rate / etcd_single, 2),
    }
    params = {
        "fill_subnet": subnet,
        "filled": filled,
        "compare_allocations": n_cmp,
        "etcd_processes": 4,
        "etcd_each": each,
    }
    return emit(NAME, params, metrics, peers, ratios)


if __name__ == "__main__":
    main()
