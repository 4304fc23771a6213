"""Store backends: get, put and CAS operations per second, and watch latency.

Per backend (memory, SQLite, etcd): one process, one task, sequential calls
(get of one key, put of one key, CAS as a chain of ``atomic_put`` calls each
on the pair the previous one returned).  Watch latency: a second store object
(for SQLite and etcd its own connection, so SQLite's cross-process path is
measured) watches a prefix while the first writes a timestamp every 5 ms;
p50/p99 of arrival minus write.  etcd runs as a real single-node server on
127.0.0.1 started here.  No peer is named for this benchmark; the figures are
compared with the targets (SQLite >= 2,000 CAS/s and watch p99 <= 100 ms,
etcd watch p99 <= 20 ms).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time

from benchmarks.common import emit, parser, progress
from libnet.store import open_store
from libnet.store.base import Store
from libnet.testing.etcd import EtcdServer, find_etcd

NAME = "store_bench"


async def _rate(n: int, op) -> float:
    t = time.perf_counter()
    for _ in range(n):
        await op()
    return n / (time.perf_counter() - t)


async def measure(url: str, n: int, watch_n: int) -> dict[str, float]:
    store: Store = open_store(url)
    other: Store = store if url == "memory://" else open_store(url)
    try:
        key = "libnet/bench/key"
        await store.put(key, b"0" * 200)
        get_rate = await _rate(n, lambda: store.get(key))
        put_rate = await _rate(n, lambda: store.put(key, b"1" * 200))
        pair = await store.get(key)

        async def cas() -> None:
            nonlocal pair
            pair = await store.atomic_put(key, b"2" * 200, pair)

        cas_rate = await _rate(n, cas)

        latencies: list[float] = []
        it = other.watch_prefix("libnet/bench/w/", start_revision=await other.revision())

        async def consume() -> None:
            async for ev in it:
                latencies.append(time.perf_counter() - float(ev.value))
                if len(latencies) == watch_n:
                    return

        consumer = asyncio.create_task(consume())
        await asyncio.sleep(0.2)  # let the watch start
        for i in range(watch_n):
            await store.put(f"libnet/bench/w/{i % 10}", repr(time.perf_counter()).encode())
            await asyncio.sleep(0.005)
        await asyncio.wait_for(consumer, 30)
        await it.aclose()
        q = statistics.quantiles(latencies, n=100)
        return {
            "get_per_s": round(get_rate),
            "put_per_s": round(put_rate),
            "cas_per_s": round(cas_rate),
            "watch_p50_ms": round(statistics.median(latencies) * 1000, 2),
            "watch_p99_ms": round(q[98] * 1000, 2),
        }
    finally:
        await store.close()
        if other is not store:
            await other.close()


def main() -> dict:
    args = parser(NAME, __doc__).parse_args()
    n = 300 if args.quick else 3000
    watch_n = 50 if args.quick else 500
    metrics: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        progress("memory")
        metrics["memory"] = asyncio.run(measure("memory://", n, watch_n))
        progress("sqlite")
        metrics["sqlite"] = asyncio.run(measure(f"sqlite://{tmp}/store.db", n, watch_n))
    if find_etcd() is None:
        raise SystemExit("store_bench needs etcd: install the Debian package 'etcd-server'")
    progress("etcd (single node on 127.0.0.1)")
    with EtcdServer() as server:
        metrics["etcd"] = asyncio.run(measure(server.url, n, watch_n))
    targets = {
        "sqlite_cas_per_s_target": 2000,
        "sqlite_watch_p99_ms_target": 100,
        "etcd_watch_p99_ms_target": 20,
    }
    ratios = {
        "sqlite_cas_vs_target": round(metrics["sqlite"]["cas_per_s"] / 2000, 2),
        "sqlite_watch_p99_vs_target": round(100 / max(metrics["sqlite"]["watch_p99_ms"], 1e-3), 2),
        "etcd_watch_p99_vs_target": round(20 / max(metrics["etcd"]["watch_p99_ms"], 1e-3), 2),
    }
    params = {"ops": n, "watch_events": watch_n, "value_bytes": 200, **targets}
    return emit(NAME, params, metrics, {}, ratios)


if __name__ == "__main__":
    main()
