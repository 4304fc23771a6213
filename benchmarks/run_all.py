"""Run every benchmark, keep its JSON in benchmarks/results/, write a report.

``make bench`` calls this.  The report (benchmarks/results/REPORT.md) lists
each benchmark's metrics, peer figures and ratios, with a bar chart of the
ratios (matplotlib) when it is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks.common import parser, progress

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


def run(name: str, quick: bool) -> dict:
    progress(f"running {name}")
    cmd = [sys.executable, "-m", f"benchmarks.{name}"] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def _plot(results: list[dict]) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        progress("matplotlib not installed: report without plots")
        return None
    labels, values = [], []
    for r in results:
        for key, value in r["ratios"].items():
            labels.append(f"{r['benchmark']}\n{key}")
            values.append(value)
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(values)), 3.5))
    ax.bar(range(len(values)), values, color="#3b7dd8")
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(values)), labels, fontsize=7)
    ax.set_ylabel("libnet / peer (higher is better)")
    ax.set_title("libnet against its peers, same run")
    fig.tight_layout()
    path = os.path.join(RESULTS, "ratios.png")
    fig.savefig(path, dpi=120)
    return "ratios.png"


def report(results: list[dict]) -> str:
    lines = ["# Benchmark report", "", "Produced by `make bench` (`python -m benchmarks.run_all`).", ""]
    plot = _plot(results)
    if plot:
        lines += [f"![ratios]({plot})", ""]
    for r in results:
        lines += [
            f"## {r['benchmark']}",
            "",
            f"params: `{json.dumps(r['params'])}`",
            "",
            "| kind | key | value |",
            "| --- | --- | --- |",
        ]
        for kind in ("metrics", "peers", "ratios"):
            lines += [f"| {kind} | {k} | {v} |" for k, v in r[kind].items()]
        lines.append("")
    path = os.path.join(RESULTS, "REPORT.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def main() -> None:
    p = parser("run_all", __doc__)
    p.add_argument("--only", nargs="*", help="run only these benchmarks (the report shows all saved results)")
    args = p.parse_args()
    os.makedirs(RESULTS, exist_ok=True)
    for name in args.only if args.only is not None else BENCHMARKS:
        run(name, args.quick)
    results = []
    for name in BENCHMARKS:
        path = os.path.join(RESULTS, f"{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                results.append(json.load(f))
    progress(f"report: {report(results)}")


if __name__ == "__main__":
    main()
