"""Where a figure came from: the commit, the date, the machine and how loaded it was.

Figures move between machines and with load (DESIGN.md, "Benchmarks"), so
every result ``make bench`` keeps and every baseline ``make bench-quick``
saves carries these.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from typing import Any


def machine() -> str:
    """``"2 cores AMD EPYC ..., Linux 6.1, Python 3.11.7"``."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{os.cpu_count()} cores {model}, Linux {platform.release()}, Python {platform.python_version()}"


def commit() -> str:
    """The short commit id of the checkout the benchmarks run from (``-dirty`` with local changes
    other than the saved results)."""
    here = os.path.dirname(__file__)
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here)
    head = r.stdout.strip() or "unknown"
    # the results make bench writes as it goes are no local change of the code measured
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", "..", ":!results"],
        capture_output=True,
        text=True,
        cwd=here,
    ).stdout.strip()
    return f"{head}-dirty" if dirty and head != "unknown" else head


def now_utc() -> str:
    """``2026-12-01T05:20:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages (as ``uptime`` shows them)."""
    return [round(x, 2) for x in os.getloadavg()]


def uptime_s() -> float:
    """Seconds since boot."""
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def stamp() -> dict[str, Any]:
    """Commit, date, machine, load averages and uptime, now."""
    return {
        "commit": commit(),
        "date": now_utc(),
        "machine": machine(),
        "cores": os.cpu_count(),
        "load": load(),
        "uptime_h": round(uptime_s() / 3600, 1),
    }
