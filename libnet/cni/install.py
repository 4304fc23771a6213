"""``libnet cni install``: put the ``libnet`` and ``libnet-ipam`` executables in a CNI bin dir.

Each is a two-line script run by a Python with ``-IS`` (no site
packages, no user site, no environment): the plugins need only the standard
library and :mod:`libnet.cni` (relative imports only), imported as the top-level
package ``cni`` from ``libnet/``, which the script puts first on ``sys.path``.

Which Python: the one given, else the one of this Python and the system's
``/usr/bin/python3`` (if a CPython 3.9+) that starts faster here, measured
once per process (:func:`fastest_python`): every ADD and DEL pays the
interpreter's start, and a statically linked build (Debian's) starts ~15-20%
faster than a shared-library one (pyenv's, a venv's).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

PLUGINS = {"libnet": "cni.plugin", "libnet-ipam": "cni.ipam"}
SYSTEM_PYTHON = "/usr/bin/python3"
_PROBE = "import sys; sys.exit(not (sys.implementation.name == 'cpython' and sys.version_info >= (3, 9)))"
_RUNS = 7  # starts timed per candidate (the best counts: load only adds)
_chosen: dict[tuple[str, ...], str] = {}


def _start_time(python: str) -> float | None:
    """The best of a few ``python -IS`` starts in seconds; None if it is not a CPython 3.9+."""
    best = None
    for _ in range(_RUNS):
        t = time.perf_counter()
        try:
            r = subprocess.run([python, "-IS", "-c", _PROBE], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if r.returncode != 0:
            return None
        took = time.perf_counter() - t
        best = took if best is None else min(best, took)
    return best


def fastest_python(candidates: tuple[str, ...] = (sys.executable, SYSTEM_PYTHON)) -> str:
    """Of ``candidates`` that exist and are CPython 3.9+, the one that starts fastest (the first
    when none could be timed); measured once per process."""
    if candidates not in _chosen:
        timed = [(t, i, p) for i, p in enumerate(candidates) if os.path.exists(p) and (t := _start_time(p)) is not None]
        _chosen[candidates] = min(timed)[2] if timed else candidates[0]
    return _chosen[candidates]


def script(module: str, python: str | None = None) -> str:
    # the package's own directory: ``cni`` is imported as a top-level package, so
    # ``libnet/__init__`` (its errors and typing, ~15 ms) is not loaded at all
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return (
        f"#!{python or fastest_python()} -IS\n"
        f"import sys; sys.path.insert(0, {root!r})\n"
        f"from {module} import main; sys.exit(main())\n"
    )


def install(bin_dir: str, python: str | None = None) -> list[str]:
    """Write the executables into ``bin_dir`` (created if missing), run by ``python`` (default:
    :func:`fastest_python`); their paths."""
    os.makedirs(bin_dir, exist_ok=True)
    out = []
    for name, module in PLUGINS.items():
        path = os.path.join(bin_dir, name)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(script(module, python))
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
        out.append(path)
    return out
