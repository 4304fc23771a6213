"""IPv6 pools of any size cost what is allocated, not what they could hold."""

from __future__ import annotations

import sys
import time
import tracemalloc

from ipam.ipam import StoreIpam
from libnet.store.memory import MemoryStore

N = 100_000


def _allocator_bytes(ipam: StoreIpam, pool_id: str) -> int:
    used = ipam._states[pool_id].used
    return sys.getsizeof(used._used) + sum(sys.getsizeof(n) for n in used._used)


async def _cycle(subnet: str, n: int, trace: bool = False) -> dict[str, float]:
    """Allocate and release n addresses; returns sizes and timings."""
    ipam = StoreIpam(MemoryStore(history=1000))
    pool = await ipam.request_pool("local", subnet, v6=True)
    if trace:
        tracemalloc.start()
    t = time.perf_counter()
    got = [await ipam.request_address(pool.id) for _ in range(n)]
    alloc_s = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1] if trace else 0
    full = _allocator_bytes(ipam, pool.id)
    for a in got:
        await ipam.release_address(pool.id, a)
    if trace:
        tracemalloc.stop()
    assert len(set(got)) == n
    assert [a.address for a in await ipam.audit(pool.id)] == [pool.gateway]
    assert len(ipam._states[pool.id].used) == 1  # only the gateway is left
    return {"alloc_s": alloc_s, "allocator_bytes": full, "empty_bytes": _allocator_bytes(ipam, pool.id), "peak": peak}


async def test_100k_in_a_64_and_a_48() -> None:
    r64 = await _cycle("2001:db8:1:2::/64", N)
    r48 = await _cycle("2001:db8:7::/48", N)
    for r in (r64, r48):
        assert r["allocator_bytes"] / N < 100, r  # bytes per allocated address
        assert r["empty_bytes"] < r["allocator_bytes"] / 100, r  # released: the memory goes too
    assert r48["allocator_bytes"] < 1.1 * r64["allocator_bytes"]
    assert r48["alloc_s"] < 2 * r64["alloc_s"] + 0.5


async def test_whole_process_memory_does_not_depend_on_pool_size() -> None:
    small = await _cycle("2001:db8:1:2::/64", 10_000, trace=True)
    large = await _cycle("2001:db8:7::/48", 10_000, trace=True)
    assert large["peak"] < 1.3 * small["peak"], (large["peak"], small["peak"])
