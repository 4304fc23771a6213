"""glibc malloc arenas of the agent (issue 22): limited to a few, so worker threads do not
each keep a heap of their own."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent import malloc

# four threads allocate C heap blocks at once; malloc_info(3) lists one <heap nr=...> per arena
_PROBE = """
import ctypes, ctypes.util, os, sys, tempfile, threading
sys.path.insert(0, {root!r})
from agent import malloc
limit = int(sys.argv[1])
if limit:
    assert malloc.limit_arenas(limit)
start = threading.Barrier(4)
def work():
    start.wait()
    keep = [bytearray(200_000) for _ in range(20)]
    del keep
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.fopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
with tempfile.NamedTemporaryFile(delete=False) as f:
    path = f.name
fp = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, fp)
libc.fclose(fp)
print(open(path).read().count("<heap nr="))
os.unlink(path)
"""


def _arenas(limit: int) -> int:
    import os

    root = os.path.dirname(os.path.dirname(malloc.__file__))
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(root=root), str(limit)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_threads_share_the_limited_arenas() -> None:
    if _arenas(0) < 2:
        pytest.skip("this C library gave the threads no arenas of their own")
    assert _arenas(1) == 1


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        malloc.limit_arenas(0)


class _Heap:
    def __init__(self) -> None:
        self.blocks, self.released = 100_000, 0

    def release(self) -> None:
        self.released += 1


def test_idle_trim_after_a_burst_once_quiet() -> None:
    """issue 22: the free pages a burst leaves are given back once the agent is quiet, once;
    not while the burst goes on (even a slow one), and not again while nothing changes."""
    heap = _Heap()
    t = malloc.IdleTrim(burst=10_000, quiet=300, blocks=lambda: heap.blocks, release=heap.release)
    assert not t.tick()  # the first look has nothing to compare with
    assert t.tick() and heap.released == 1  # quiet after start: the start's pages
    heap.blocks += 3
    assert not any(t.tick() for _ in range(5))  # idle: nothing again
    for _ in range(10):  # a slow burst: 2,000 blocks a look, 20,000 in all
        heap.blocks += 2_000
        assert not t.tick()
    heap.blocks -= 10_000  # the end of it frees a lot at once: still moving
    assert not t.tick()
    heap.blocks += 5  # quiet now
    assert t.tick() and heap.released == 2
    assert not t.tick()
    heap.blocks += 5_000  # a little work: not a burst
    assert not t.tick() and not t.tick() and heap.released == 2


async def test_idle_trim_runs_until_cancelled() -> None:
    import asyncio

    heap = _Heap()
    t = malloc.IdleTrim(interval=0.01, blocks=lambda: heap.blocks, release=heap.release)
    task = asyncio.create_task(t.run())
    for _ in range(200):
        await asyncio.sleep(0.01)
        if heap.released:
            break
    task.cancel()
    assert heap.released == 1 and t.trims == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_trim_gives_free_heap_pages_back() -> None:
    code = (
        "import sys; sys.path.insert(0, {root!r})\n"
        "from agent import malloc\n"
        "def rss():\n"
        "    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1])\n"
        "keep = [bytearray(1000) for _ in range(20_000)]\n"  # malloc (above pymalloc, below mmap)
        "del keep[:-1]\n"
        "before = rss(); assert malloc.trim(); print(before - rss())\n"
    )
    import os

    root = os.path.dirname(os.path.dirname(malloc.__file__))
    out = subprocess.run([sys.executable, "-c", code.format(root=root)], capture_output=True, text=True, check=True)
    assert int(out.stdout) > 4096  # KiB given back


def test_start_up_objects_are_frozen_out_of_later_collections() -> None:
    """Issue 22: every full collection scanned start-up's objects (38 per API run, 57 ms each)."""
    import gc

    from agent.malloc import freeze_startup

    made_at_start = [{"n": i} for i in range(1000)]
    before = gc.get_freeze_count()
    try:
        freeze_startup()
        assert gc.get_freeze_count() >= before + len(made_at_start)
        assert not any(o is made_at_start for o in gc.get_objects(generation=2))
    finally:
        gc.unfreeze()
