"""``make bench-quick``: every benchmark's ``--quick`` run, compared with a baseline.

Runs each benchmark of :data:`benchmarks.run_all.BENCHMARKS` with ``--quick``
(one after the other, each bounded by ``--timeout`` seconds), then prints a
table of each ratio (and of the few metrics in :data:`WATCHED`: convergence
latencies, agent RSS) now against
``benchmarks/baseline.json``, flagging a change for the worse of more than
25% (``DROP``).  Ratios are libnet against a peer measured in the same run,
so they travel between machines better than absolute figures -- still,
compare on one kind of machine and read the baseline's ``machine`` and
``note``.  It reports; it never fails: the exit code is 0 also with drops,
failed benchmarks or no baseline.  ``--save-baseline`` writes this run as
the new baseline (with the machine, commit and date).

Run it before resolving any change that touches a hot path (attach, the
API, the CLI, convergence, DNS, the store).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from benchmarks.common import flatten, parser, progress
from benchmarks.provenance import commit, machine
from benchmarks.run_all import BENCHMARKS

BASELINE = os.path.join(os.path.dirname(__file__), "baseline.json")
#: a change for the worse beyond this fraction is flagged
DROP = 0.25
#: figures where lower is better (every other ratio: higher is better)
LOWER_IS_BETTER = {
    "docker_bench.ratios.connect_vs_docker_bridge",
    "docker_bench.ratios.run_share_vs_docker_bridge",
    "convergence_bench.metrics.n3.reachable_p50_s",
    "convergence_bench.metrics.n3.reachable_p99_s",
    "convergence_bench.metrics.procs_n3.reachable_p50_s",
    "convergence_bench.metrics.procs_n3.reachable_p99_s",
    "memory_bench.metrics.rss_mib_idle",
    "memory_bench.metrics.rss_mib_one_overlay_container",
}
#: figures that are not ratios and are shown without a verdict
NOT_COMPARED = {"gossip_bench.ratios.client_overhead_p50_ms"}
#: metrics compared too, for benchmarks whose ratios miss a hot path
WATCHED = {
    "convergence_bench": [
        "metrics.n3.reachable_p50_s",
        "metrics.n3.reachable_p99_s",
        "metrics.procs_n3.reachable_p50_s",
        "metrics.procs_n3.reachable_p99_s",
    ],
    "memory_bench": ["metrics.rss_mib_idle", "metrics.rss_mib_one_overlay_container"],
}


def figures(result: dict[str, Any]) -> dict[str, float]:
    """The compared figures of one benchmark's result: its ratios and watched metrics."""
    name = result["benchmark"]
    out = flatten(f"{name}.ratios", result.get("ratios", {}))
    for path in WATCHED.get(name, []):
        value: Any = result
        for part in path.split("."):
            value = value.get(part, {}) if isinstance(value, dict) else {}
        out.update(flatten(f"{name}.{path}", value))
    return out


def run_one(name: str, timeout: float) -> tuple[dict[str, Any] | None, float, str]:
    """(result or None, seconds, why it failed)."""
    t = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", f"benchmarks.{name}", "--quick"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - t, f"timed out after {timeout:g} s"
    took = time.monotonic() - t
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return None, took, f"exit {proc.returncode}: {tail[:160]}"
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1]), took, ""
    except (ValueError, IndexError):
        return None, took, "no JSON result line"


def change(key: str, now: float, base: float) -> float | None:
    """The change for the better (+) or the worse (-) as a fraction, None if not comparable."""
    if key in NOT_COMPARED or base == 0 or now == 0:
        return None
    return (base / now - 1) if key in LOWER_IS_BETTER else (now / base - 1)


def compare(now: dict[str, float], base: dict[str, float]) -> list[tuple[str, str, str, str, str]]:
    """Rows (figure, baseline, now, change, verdict) for every figure of either side."""
    rows = []
    for key in sorted(set(now) | set(base)):
        b, n = base.get(key), now.get(key)
        if n is None:
            rows.append((key, f"{b:g}", "-", "", "missing now"))
            continue
        if b is None:
            rows.append((key, "-", f"{n:g}", "", "new"))
            continue
        c = change(key, n, b)
        if c is None:
            rows.append((key, f"{b:g}", f"{n:g}", "", "not a ratio"))
            continue
        verdict = "DROP" if c < -DROP else "ok"
        rows.append((key, f"{b:g}", f"{n:g}", f"{c * 100:+.0f}%", verdict))
    return rows


def main() -> None:
    p = parser("quick", __doc__)
    p.add_argument("--only", nargs="*", help="run only these benchmarks")
    p.add_argument("--timeout", type=float, default=150, help="seconds per benchmark (default 150)")
    p.add_argument("--save-baseline", action="store_true", help=f"write this run to {BASELINE}")
    p.add_argument("--note", default="", help="a note kept with a saved baseline (e.g. the machine was loaded)")
    args = p.parse_args()
    names = args.only if args.only else BENCHMARKS
    now: dict[str, float] = {}
    timings: dict[str, float] = {}
    failures: dict[str, str] = {}
    t0 = time.monotonic()
    for name in names:
        progress(f"{name} --quick")
        result, took, why = run_one(name, args.timeout)
        timings[name] = round(took, 1)
        if result is None:
            failures[name] = why
            progress(f"{name} failed ({why})")
            continue
        now.update(figures(result))
    total = time.monotonic() - t0
    base_doc: dict[str, Any] = {}
    if os.path.exists(BASELINE):
        with open(BASELINE) as f:
            base_doc = json.load(f)
    base = {k: v for k, v in base_doc.get("figures", {}).items() if k.split(".", 1)[0] in names}
    report(compare(now, base), base_doc, timings, failures, total)
    if args.save_baseline:
        save(base_doc, names, now, timings, failures, args.note)


def save(
    old: dict[str, Any],
    names: list[str],
    now: dict[str, float],
    timings: dict[str, float],
    failures: dict[str, str],
    note: str,
) -> None:
    """Write the baseline: this run's benchmarks replace theirs; the others
    (a run with --only) keep their figures and the commit and date they came from."""
    stamp = {"commit": commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    ran = set(names)
    earlier = {k.split(".", 1)[0] for k in old.get("figures", {})} | set(old.get("failed", {}))
    old_runs = old.get("runs") or {k: {"commit": old.get("commit"), "date": old.get("date")} for k in earlier}
    doc = {
        **stamp,
        "machine": machine(),
        "note": note or old.get("note", ""),
        "runs": {**{k: v for k, v in old_runs.items() if k not in ran}, **{k: stamp for k in names}},
        "seconds": {**{k: v for k, v in old.get("seconds", {}).items() if k not in ran}, **timings},
        "failed": {**{k: v for k, v in old.get("failed", {}).items() if k not in ran}, **failures},
        "figures": {**{k: v for k, v in old.get("figures", {}).items() if k.split(".", 1)[0] not in ran}, **now},
    }
    with open(BASELINE, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write("\n")
    progress(f"baseline written: {BASELINE}")


def report(
    rows: list[tuple[str, str, str, str, str]],
    base_doc: dict[str, Any],
    timings: dict[str, float],
    failures: dict[str, str],
    total: float,
) -> None:
    """Print the comparison (stdout)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    if base_doc:
        console.print(
            f"baseline: commit {base_doc.get('commit')} of {base_doc.get('date')} on {base_doc.get('machine')}"
            + (f" -- {base_doc['note']}" if base_doc.get("note") else ""),
            highlight=False,
        )
    else:
        console.print(f"no baseline at {BASELINE}: run with --save-baseline to make one", highlight=False)
    table = Table(title=f"bench-quick: now vs baseline (a change for the worse beyond {DROP:.0%} is a DROP)")
    for col in ("figure", "baseline", "now", "change", "verdict"):
        table.add_column(col, justify="right" if col in ("baseline", "now", "change") else "left")
    for key, b, n, c, verdict in rows:
        style = {"DROP": "bold red", "ok": "green"}.get(verdict, "yellow")
        table.add_row(key, b, n, c, f"[{style}]{verdict}[/]")
    console.print(table)
    for name, why in failures.items():
        console.print(f"[red]{name} failed:[/] {why}", highlight=False)
    drops = sum(r[4] == "DROP" for r in rows)
    console.print(
        f"{len(rows)} figures, {drops} DROP(s), {len(failures)} failed benchmark(s); "
        f"{total:.0f} s in all ({', '.join(f'{k} {v:g} s' for k, v in timings.items())})",
        highlight=False,
    )


if __name__ == "__main__":
    main()
