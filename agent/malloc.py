"""The agent's C heap: at most a few glibc malloc arenas.

glibc gives a thread its own arena once threads contend for malloc (up to 8
per core), and memory freed into an arena stays with it.  The agent is one
event loop plus a few worker threads (netlink in namespaces, SQLite, socket
opening): every worker's arena kept the peaks of its own bursts, about 1 MiB
of the agent's RSS at 300 containers on this kind of 2-core machine (issue
22, measured with ``MALLOC_ARENA_MAX``; ``M_ARENA_MAX`` is the same knob set
from inside, documented in mallopt(3)).  Python objects up to 512 bytes come
from Python's own allocator and are not affected.

After a burst of work the agent gives freed memory back once it is quiet
(:class:`IdleTrim`).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc
import sys
from collections.abc import Callable

#: mallopt(3) parameter number of M_ARENA_MAX in glibc's malloc.h
M_ARENA_MAX = -8


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc (musl & co.: mallopt is a stub or means else), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not all(hasattr(libc, f) for f in ("gnu_get_libc_version", "mallopt", "malloc_trim")):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


def limit_arenas(n: int = 2) -> bool:
    """Let glibc's malloc use at most ``n`` arenas from now on (call it before threads
    start); False where the C library is not glibc or refuses (nothing changed then)."""
    if n < 1:
        raise ValueError(f"at least one arena is needed, got {n}")
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(M_ARENA_MAX, n))


def trim() -> bool:
    """Give the C heap's free pages back to the system (malloc_trim(3)); False where the C
    library is not glibc (nothing done then)."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def freeze_startup() -> None:
    """Collect once, then move every object start-up made into the garbage collector's
    permanent generation (``gc.freeze``, Python 3.7+), so no later collection scans them.

    Issue 22: start-up leaves most of the agent's objects (modules, functions, classes of
    aiohttp, pyroute2, dnslib, ...), and every full collection scanned them all: with 8
    clients connecting and disconnecting, 38 full collections in 50 s stopped the event
    loop 57 ms each on average, 96 ms at worst -- the API's p99; frozen, 27-31 ms and
    63-77 ms (CPU time of the collections, three runs; the young generations' collections,
    ~1 s per run, are the cost of the objects a request makes: larger thresholds made them
    dearer, not cheaper).  What start-up made and dropped in cycles is collected first; what it
    keeps lives as long as the agent anyway.
    """
    gc.collect()
    gc.freeze()


class IdleTrim:
    """After a burst of work, once the agent is quiet, give the C heap's free pages back.

    A burst (1,000 containers through the API, a flood of remote peers) leaves free pages in
    glibc's heap that it keeps: RSS stayed ~2 MiB above what the agent holds at 1,000
    containers, ~1.5 MiB after start (issue 22; malloc_trim in a running agent, 0.5-2 ms).
    Every ``interval`` seconds :meth:`tick` looks at the number of allocated blocks: once
    they moved by more than ``burst`` in all since the last trim, the first look at which
    they moved by less than ``quiet`` since the previous one (the burst is over: 1,000
    containers moved ~3,000 a second, an idle agent a few) trims, once.  (A full
    ``gc.collect`` as well freed ~1 MiB more at 1,000 containers but stopped the event loop
    for 80-250 ms: not done.)
    """

    def __init__(
        self,
        interval: float = 1.0,
        burst: int = 10_000,
        quiet: int = 300,
        blocks: Callable[[], int] = sys.getallocatedblocks,
        release: Callable[[], object] = trim,
    ) -> None:
        self.interval, self.burst, self.quiet = interval, burst, quiet
        self._blocks, self._release = blocks, release
        self._previous: int | None = None
        self._moved = burst + 1  # the first quiet look after start trims
        self.trims = 0

    def tick(self) -> bool:
        """One look; True when it trimmed."""
        now = self._blocks()
        previous, self._previous = self._previous, now
        if previous is None:
            return False
        step = abs(now - previous)
        self._moved += step
        if self._moved <= self.burst or step >= self.quiet:
            return False
        self._release()
        self._moved = 0
        self.trims += 1
        return True

    async def run(self) -> None:
        """:meth:`tick` every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            self.tick()
