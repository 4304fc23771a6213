"""Run every benchmark, keep its JSON in benchmarks/results/, write the report.

``make bench`` calls this: every benchmark in full mode, one after the other,
each bounded by ``--timeout`` seconds; each result is saved as
``benchmarks/results/NAME.json`` with a ``run`` block (commit, date, machine,
load averages before and after, seconds), then :mod:`benchmarks.report`
writes ``REPORT.md`` and its plots from every saved result.  A benchmark that
fails or times out keeps its previous result (the report names the failure)
and the exit code is 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from benchmarks import report
from benchmarks.common import parser, progress
from benchmarks.provenance import load, stamp

#: the benchmarks in the order they run
BENCHMARKS = [
    "netlink_bench",
    "store_bench",
    "ipam_bench",
    "attach_bench",
    "gossip_bench",
    "api_bench",
    "cli_bench",
    "overlay_bench",
    "encryption_bench",
    "convergence_bench",
    "dns_bench",
    "restart_bench",
    "docker_bench",
    "proxy_bench",
    "cni_bench",
    "memory_bench",
]
RESULTS = os.path.join(os.path.dirname(__file__), "results")


def run(name: str, quick: bool, timeout: float, results_dir: str = RESULTS) -> dict[str, Any]:
    """Run one benchmark and save its result with a ``run`` block; raises RuntimeError when it fails."""
    progress(f"running {name}")
    cmd = [sys.executable, "-m", f"benchmarks.{name}"] + (["--quick"] if quick else [])
    before, t = stamp(), time.monotonic()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout:g} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode} (its stderr above)")
    try:
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError("no JSON result line") from None
    result["run"] = {
        "commit": before["commit"],
        "date": before["date"],
        "machine": before["machine"],
        "cores": before["cores"],
        "load_before": before["load"],
        "load_after": load(),
        "seconds": round(time.monotonic() - t, 1),
        "mode": "quick" if quick else "full",
    }
    with open(os.path.join(results_dir, f"{name}.json"), "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    progress(f"{name}: {result['run']['seconds']:.0f} s")
    return result


def saved(results_dir: str = RESULTS) -> list[dict[str, Any]]:
    """Every saved result, in :data:`BENCHMARKS` order."""
    out = []
    for name in BENCHMARKS:
        path = os.path.join(results_dir, f"{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                out.append(json.load(f))
    return out


def main() -> None:
    p = parser("run_all", __doc__)
    p.add_argument("--only", nargs="*", help="run only these benchmarks (the report shows all saved results)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark (default 1800)")
    args = p.parse_args()
    os.makedirs(RESULTS, exist_ok=True)
    names = args.only if args.only is not None else BENCHMARKS
    info, t0 = stamp(), time.monotonic()
    failures = {}
    for name in names:
        try:
            run(name, args.quick, args.timeout)
        except RuntimeError as exc:
            failures[name] = str(exc)
            progress(f"{name} failed: {exc}")
    info.update(seconds=round(time.monotonic() - t0, 1), benchmarks=names)
    progress(f"report: {report.write(saved(), RESULTS, info, failures)} ({info['seconds']:.0f} s of benchmarks)")
    if failures:
        raise SystemExit(f"{len(failures)} benchmark(s) failed: {', '.join(failures)}")


if __name__ == "__main__":
    main()
