"""Helpers shared by the benchmarks: argument parsing, progress, JSON output."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from libnet.testing.agents import AgentProcess
    from libnet.testing.hosts import Testbed


def parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the common ``--quick`` flag."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=doc)
    p.add_argument("--quick", action="store_true", help="a short smoke run (for tests)")
    return p


def progress(msg: str) -> None:
    """Progress goes to stderr; stdout is reserved for the JSON result."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def require(tool: str, package: str) -> str:
    """Path of ``tool``, or exit with a message naming the Debian package."""
    path = shutil.which(tool)
    if path is None:
        raise SystemExit(
            f"benchmark needs '{tool}': install the Debian package '{package}' (scripts/install-system-deps does)"
        )
    return path


def timed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` took."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def median(values: list[float]) -> float:
    return statistics.median(values)


def emit(name: str, params: dict, metrics: dict, peers: dict, ratios: dict) -> dict:
    """Print the result line and return it."""
    result = {"benchmark": name, "params": params, "metrics": metrics, "peers": peers, "ratios": ratios}
    print(json.dumps(result), flush=True)
    return result


def flatten(prefix: str, value: Any) -> dict[str, float]:
    """``{"a": {"b": 1}}`` -> ``{"prefix.a.b": 1.0}`` (numbers only)."""
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}", v))
        return out
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {prefix: float(value)}
    return {}


def start_agent(
    bed: Testbed, tmp: str, *extra: str, state: str = "state", local_v4: tuple[str, int] = ("198.51.100.0/24", 30)
) -> AgentProcess:
    """A libnet-agent in the bed's first host, state under ``tmp/state`` (SQLite store), log level
    warning, ``extra`` arguments; started (stop it when done).  Default pools: ``local_v4`` for local
    IPv4 networks (default the 64 /30s of 198.51.100.0/24, one per network), the test hosts' others
    (:mod:`libnet.testing.pools`)."""
    from libnet.testing.agents import AgentProcess
    from libnet.testing.pools import agent_toml

    conf = f"{tmp}/agent.toml"
    with open(conf, "w") as f:
        f.write(agent_toml(local_v4=local_v4) + 'log_level = "warning"\n')
    return AgentProcess(bed, bed.hosts[0], "--config", conf, *extra, state_dir=f"{tmp}/{state}").start()
