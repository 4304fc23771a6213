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
