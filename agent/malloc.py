"""The agent's C heap: at most a few glibc malloc arenas.

glibc gives a thread its own arena once threads contend for malloc (up to 8
per core), and memory freed into an arena stays with it.  The agent is one
event loop plus a few worker threads (netlink in namespaces, SQLite, socket
opening): every worker's arena kept the peaks of its own bursts, about 1 MiB
of the agent's RSS at 300 containers on this kind of 2-core machine (issue
22, measured with ``MALLOC_ARENA_MAX``; ``M_ARENA_MAX`` is the same knob set
from inside, documented in mallopt(3)).  Python objects up to 512 bytes come
from Python's own allocator and are not affected.
"""

from __future__ import annotations

import ctypes
import ctypes.util

#: mallopt(3) parameter number of M_ARENA_MAX in glibc's malloc.h
M_ARENA_MAX = -8


def limit_arenas(n: int = 2) -> bool:
    """Let glibc's malloc use at most ``n`` arenas from now on (call it before threads
    start); False where the C library is not glibc or refuses (nothing changed then)."""
    if n < 1:
        raise ValueError(f"at least one arena is needed, got {n}")
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # musl & co.: mallopt is a stub or means else
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, n))
