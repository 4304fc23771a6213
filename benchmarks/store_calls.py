"""Store calls per connect and per disconnect (issue 22): attach_bench's libnet side with a
counting wrapper around the SQLite store's methods; prints calls per operation by kind and key.

Run as root: ``python -m benchmarks.store_calls [-n 50] [--keys]``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import re
import tempfile
import time
from typing import Any

from libnet import Config, Controller
from libnet.store.sqlite import SQLiteStore
from libnet.testing.hosts import Testbed
from libnet.testing.pools import ipam_config

READS = ("get", "exists", "list", "revision")
WRITES = ("put", "delete", "atomic_put", "atomic_delete", "atomic_batch")
calls: collections.Counter[tuple[str, str]] = collections.Counter()
spent = [0.0]  # seconds inside store calls


def _wrap(name: str) -> None:
    orig = getattr(SQLiteStore, name)

    @functools.wraps(orig)
    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        key = str(args[0]) if args and isinstance(args[0], str) else ""
        key = "/".join(p if len(p) < 40 else "<id>" for p in key.split("/"))
        key = re.sub(r"/(addresses/[^/]+)/[^/]+$", r"/\1/<addr>", key)
        key = re.sub(r"/c-[0-9a-f]{12}$", "/<name>", key)
        calls[(name, key)] += 1
        t = time.perf_counter()
        try:
            return await orig(self, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t

    setattr(SQLiteStore, name, counted)


for _n in READS + WRITES:
    _wrap(_n)


def summary(counter: collections.Counter[tuple[str, str]], n: int, keys: bool) -> str:
    reads = sum(v for (k, _), v in counter.items() if k in READS) / n
    writes = sum(v for (k, _), v in counter.items() if k in WRITES) / n
    lines = [f"  reads {reads:.1f}  writes {writes:.1f}  total {reads + writes:.1f} per operation"]
    if keys:
        for (name, key), v in sorted(counter.items(), key=lambda kv: -kv[1]):
            lines.append(f"    {v / n:5.1f}  {name:14} {key}")
    return "\n".join(lines)


def timing(start: float, n: int) -> str:
    wall = (time.perf_counter() - start) / n * 1000
    return f"\n  {wall:.2f} ms per operation, {spent[0] / n * 1000:.2f} ms of it in store calls"


async def run(bed: Testbed, paths: list[str], tmp: str, keys: bool) -> None:
    config = Config(
        store=f"sqlite://{tmp}/store.db",
        state_dir=tmp,
        host_netns=bed.hosts[0].ns,
        sandbox_prefix=bed.prefix + "sb-",
        ipam=ipam_config(),
    )
    async with Controller(config) as ctl:
        await ctl.create_network("bench", ipv4_subnet="198.51.100.0/24", ipv6_subnet="2001:db8:a::/64")
        sbs = [await ctl.create_sandbox(netns=p) for p in paths]
        calls.clear()
        spent[0], t = 0.0, time.perf_counter()
        for sb in sbs:
            await ctl.connect("bench", sb.id, name=f"c-{sb.id[:12]}")
        print("connect:\n" + summary(calls, len(sbs), keys) + timing(t, len(sbs)))
        calls.clear()
        spent[0], t = 0.0, time.perf_counter()
        for sb in sbs:
            await ctl.disconnect("bench", sb.id)
        print("disconnect:\n" + summary(calls, len(sbs), keys) + timing(t, len(sbs)))
        for sb in sbs:
            await ctl.delete_sandbox(sb.id)
        await ctl.delete_network("bench")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--keys", action="store_true")
    args = ap.parse_args()
    with Testbed(1) as bed, tempfile.TemporaryDirectory() as tmp:
        paths = [f"/run/netns/{bed.namespace(f'l{i}')}" for i in range(args.n)]
        asyncio.run(run(bed, paths, tmp, args.keys))


if __name__ == "__main__":
    main()
