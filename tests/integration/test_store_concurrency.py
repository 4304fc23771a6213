"""Store behaviour under concurrency and faults, with real processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import time

import pytest

from libnet import model
from libnet.errors import StoreUnavailable
from libnet.store import open_store
from libnet.testing.etcd import EtcdServer, find_etcd

PROCS = 8
INCREMENTS = 500


def _add(url: str, key: str, n: int) -> None:
    async def run() -> None:
        store = open_store(url)
        try:
            for _ in range(n):
                await model.update(store, key, lambda raw: str(int(raw or b"0") + 1).encode())
        finally:
            await store.close()

    asyncio.run(run())


def _counter_total(url: str) -> int:
    key = "libnet/test/counter"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_add, args=(url, key, INCREMENTS)) for _ in range(PROCS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]

    async def read() -> int:
        store = open_store(url)
        try:
            return int((await store.get(key)).value)
        finally:
            await store.close()

    return asyncio.run(read())


def test_counter_exact_on_sqlite(tmp_path) -> None:
    assert _counter_total(f"sqlite://{tmp_path}/store.db") == PROCS * INCREMENTS


def test_counter_exact_on_etcd(etcd_server) -> None:
    assert _counter_total(etcd_server.url) == PROCS * INCREMENTS


def test_sqlite_watch_sees_other_process_within_100ms(tmp_path) -> None:
    url = f"sqlite://{tmp_path}/store.db"

    async def run() -> list[float]:
        watcher = open_store(url)
        start = await watcher.revision()
        it = watcher.watch_prefix("libnet/test/", start_revision=start)
        lat: list[float] = []
        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(target=_writer, args=(url, 20))
        proc.start()
        try:

            async def consume() -> None:
                async for ev in it:
                    lat.append(time.time() - float(ev.value))
                    if len(lat) == 20:
                        return

            await asyncio.wait_for(consume(), 30)
        finally:
            proc.join(timeout=30)
            await watcher.close()
        return lat

    latencies = asyncio.run(run())
    assert len(latencies) == 20
    assert max(latencies) < 0.1, latencies


def _writer(url: str, n: int) -> None:
    async def run() -> None:
        store = open_store(url)
        await asyncio.sleep(0.2)
        for i in range(n):
            await store.put(f"libnet/test/k{i}", repr(time.time()).encode())
            await asyncio.sleep(0.02)
        await store.close()

    asyncio.run(run())


@pytest.mark.skipif(find_etcd() is None, reason="no etcd binary: run scripts/install-system-deps")
def test_etcd_outage_times_out_and_watch_resumes_after_restart() -> None:
    async def run(server: EtcdServer) -> None:
        store = open_store(server.url + "?timeout=2")
        watcher = open_store(server.url + "?timeout=2")
        try:
            await store.put("libnet/test/w/before", b"0")
            seen: list = []
            it = watcher.watch_prefix("libnet/test/w/", start_revision=await watcher.revision())

            async def consume() -> None:
                async for ev in it:
                    seen.append(ev)

            task = asyncio.create_task(consume())
            await store.put("libnet/test/w/a", b"1")
            await asyncio.sleep(0.3)

            server.stop()
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.get("libnet/test/w/a")
            assert time.monotonic() - t0 < 2 + 1.5, "must fail within the configured timeout"

            server.start()
            for i in range(5):
                await store.put(f"libnet/test/w/after{i}", str(i).encode())
            deadline = time.monotonic() + 20
            while len(seen) < 6 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # a duplicate would arrive now
            task.cancel()
            keys = [e.key.rsplit("/", 1)[1] for e in seen]
            assert keys == ["a"] + [f"after{i}" for i in range(5)], keys
            revs = [e.revision for e in seen]
            assert revs == sorted(set(revs))
        finally:
            await store.close()
            await watcher.close()

    with EtcdServer() as server:
        asyncio.run(run(server))
