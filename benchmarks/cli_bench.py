"""The ``libnet`` CLI as a user runs it: wall time of ``libnet network ls``.

A libnet-agent runs in a test host (SQLite store) with 20 networks; the
``libnet`` command (the installed console script next to this Python, else
``python -m agent.cli``) then lists them N times (N >= 20), each a new
process on the agent's unix socket, as an operator's shell would.  Reported:
the wall time p50/p90 of one call and its CPU time (user + system of the
child).  Peer, measured in the same run: the floor of any Python command on
this machine, ``python -c pass`` (interpreter start and exit).  The issue's
target is ``metrics.cli_network_ls_ms_p50`` <= 100 ms on an idle machine.

The CLI is measured as installed: ``pip install`` byte-compiles a package's
modules, but this tree is an editable install run with
``PYTHONDONTWRITEBYTECODE`` set (as on the test machines), so without
``__pycache__`` every call would compile the CLI's own modules from source
(about a third of its CPU).  The ``agent`` and ``libnet`` packages are
byte-compiled first (``compileall``; ``__pycache__`` is git-ignored).
"""

from __future__ import annotations

import compileall
import os
import resource
import subprocess
import sys
import tempfile
import time

from benchmarks.common import emit, parser, progress, start_agent
from libnet.testing.hosts import Testbed

NAME = "cli_bench"
NETWORKS = 20


def cli_command() -> list[str]:
    """The ``libnet`` console script of this environment, else the module."""
    script = os.path.join(os.path.dirname(sys.executable), "libnet")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "agent.cli"]


def byte_compile() -> bool:
    """Byte-compile the packages the CLI imports, as ``pip install`` would (True if all compiled)."""
    import agent
    import libnet

    return all(bool(compileall.compile_dir(os.path.dirname(pkg.__file__ or ""), quiet=1)) for pkg in (agent, libnet))


def sample(argv: list[str], n: int) -> tuple[list[float], float]:
    """Wall seconds of ``n`` runs of ``argv`` (each must exit 0), and the mean
    CPU seconds (user + system) of one run."""
    walls = []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30)
        walls.append(time.perf_counter() - t)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / n
    return walls, cpu


def pct_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


def main() -> dict:
    args = parser(NAME, __doc__).parse_args()
    n = 20 if args.quick else 50
    argv = cli_command()
    compiled = byte_compile()
    with Testbed(1) as bed, tempfile.TemporaryDirectory() as tmp:
        agent = start_agent(bed, tmp)
        try:
            from agent.client import Client

            client = Client(agent.socket)
            progress(f"creating {NETWORKS} networks")
            for i in range(NETWORKS):
                subnet = f"198.51.100.{8 * i}/29"  # the documentation range of the house rules
                client.request("POST", "/v1/networks", {"name": f"cli{i}", "ipv4_subnet": subnet, "ipv6": False})
            ls = [*argv, "--socket", agent.socket, "network", "ls"]
            out = subprocess.run(ls, check=True, capture_output=True, text=True, timeout=30).stdout
            if out.count("cli") < NETWORKS:
                raise SystemExit(f"libnet network ls did not list the {NETWORKS} networks:\n{out}")
            progress(f"libnet network ls x {n}")
            walls, cpu = sample(ls, n)
            progress(f"python -c pass x {n}")
            floor, floor_cpu = sample([sys.executable, "-c", "pass"], n)
        finally:
            agent.stop()
    metrics = {
        "cli_network_ls_ms_p50": pct_ms(walls, 0.5),
        "cli_network_ls_ms_p90": pct_ms(walls, 0.9),
        "cli_network_ls_ms_min": round(min(walls) * 1000, 1),
        "cli_network_ls_cpu_ms": round(cpu * 1000, 1),
    }
    peers = {"python_startup_ms_p50": pct_ms(floor, 0.5), "python_startup_cpu_ms": round(floor_cpu * 1000, 1)}
    ratios = {
        "cli_ls_vs_target_100ms": round(100 / metrics["cli_network_ls_ms_p50"], 2),
        "python_startup_share": round(peers["python_startup_ms_p50"] / metrics["cli_network_ls_ms_p50"], 2),
    }
    params = {
        "runs": n,
        "networks": NETWORKS,
        "command": " ".join(os.path.basename(a) for a in argv),
        "byte_compiled": compiled,
    }
    return emit(NAME, params, metrics, peers, ratios)


if __name__ == "__main__":
    main()
