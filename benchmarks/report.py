"""The benchmark report: ``benchmarks/results/REPORT.md`` and its plots, from the saved results.

Input: each benchmark's result as ``make bench`` saved it (the JSON line of
DESIGN.md, "Benchmarks", plus a ``run`` block from
:func:`benchmarks.run_all.run`: commit, date, machine, load averages before
and after, seconds).  Output, in the results directory:

- ``REPORT.md``: the targets (:mod:`benchmarks.targets`) met or not, with the
  commit and date of each figure; then every benchmark's figures with the
  commit, date, machine and load of its run;
- with matplotlib (the ``bench`` extra; without it the report has tables
  only): ``targets.png`` (each target's figure over its bound: 1 or more is
  met), ``ratios.png`` (every ratio of every benchmark), ``latency.png``
  (latency distributions: the samples a result carries under ``samples``,
  else the percentiles its metrics and peers name, ``*_ms_p50``/``_p90``/``_p99``),
  ``convergence.png`` (time to reachable against host count, in-process and
  agent processes, p50 and p99).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

from benchmarks.common import flatten
from benchmarks.targets import TARGETS, Target, Verdict, check

#: a percentile figure: ``attach_ms_p90`` -> (``attach_ms``, 90)
PERCENTILE = re.compile(r"^(?P<stem>.+_ms)_p(?P<q>\d{2})$")
#: the benchmarks whose latency distributions the report draws
LATENCY_BENCHMARKS = ("attach_bench", "api_bench", "cli_bench")
#: ``n30`` / ``procs_n30`` -> mode and host count
SIZE = re.compile(r"^(?P<mode>procs_)?n(?P<n>\d+)$")


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _stamp(result: dict[str, Any]) -> str:
    run = result.get("run") or {}
    if not run:
        return "commit, date and machine not recorded (a result saved before the report recorded them)"
    load = run.get("load_before") or run.get("load") or []
    after = run.get("load_after") or []
    return (
        f"commit `{run.get('commit', '?')}`, {run.get('date', '?')}, {run.get('machine', '?')}; "
        f"load {' '.join(map(str, load))}"
        + (f" -> {' '.join(map(str, after))}" if after else "")
        + (f"; {run['seconds']:.0f} s" if "seconds" in run else "")
    )


def convergence_series(result: dict[str, Any]) -> dict[str, list[tuple[int, float, float]]]:
    """``{"in-process": [(hosts, p50, p99), ...], "agent processes": [...]}``, by host count."""
    out: dict[str, list[tuple[int, float, float]]] = {}
    for key, m in result.get("metrics", {}).items():
        match = SIZE.match(key)
        if not match or not isinstance(m, dict) or "reachable_p50_s" not in m:
            continue
        mode = "agent processes" if match["mode"] else "in-process"
        out.setdefault(mode, []).append((int(match["n"]), m["reachable_p50_s"], m["reachable_p99_s"]))
    return {mode: sorted(points) for mode, points in out.items()}


def latency_series(result: dict[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """Per latency figure, (percentile, ms) points: from ``samples`` (every 1%), else from the
    ``*_ms_pNN`` metrics and peers."""
    out: dict[str, list[tuple[float, float]]] = {}
    for stem, values in (result.get("samples") or {}).items():
        ordered = sorted(values)
        if ordered:
            out[stem] = [(100 * (i + 1) / len(ordered), v) for i, v in enumerate(ordered)]
    for section in ("metrics", "peers"):
        for key, value in result.get(section, {}).items():
            match = PERCENTILE.match(key)
            if match and match["stem"] not in (result.get("samples") or {}) and isinstance(value, int | float):
                label = match["stem"] if section == "metrics" else f"{match['stem']} (peer)"
                out.setdefault(label, []).append((float(match["q"]), float(value)))
    return {k: sorted(v) for k, v in out.items()}


def _plot_targets(plt: Any, verdicts: list[Verdict], path: str) -> None:
    shown = [v for v in verdicts if v.score is not None]
    fig, ax = plt.subplots(figsize=(9, 0.45 * max(3, len(shown)) + 1))
    scores = [min(v.score or 0.0, 10.0) for v in shown]
    colors = ["#2e9e44" if v.met else "#d8453b" for v in shown]
    ax.barh(range(len(shown)), scores, color=colors)
    ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_yticks(
        range(len(shown)), [f"{v.target.figure}\n{v.target.op} {v.target.bound:g}" for v in shown], fontsize=6
    )
    ax.invert_yaxis()
    ax.set_xlabel("figure vs target (1 or more: met; capped at 10)")
    ax.set_title("targets")
    fig.subplots_adjust(left=0.42, right=0.97, bottom=0.12, top=0.93)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_ratios(plt: Any, results: list[dict[str, Any]], path: str) -> bool:
    labels, values = [], []
    for r in results:
        for key, value in flatten(r["benchmark"], r.get("ratios", {})).items():
            if value > 0:  # a difference (e.g. gossip_bench's client overhead in ms) has no place on a log scale
                labels.append(key)
                values.append(value)
    if not values:
        return False
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(values) + 1))
    ax.barh(range(len(values)), values, color="#3b7dd8")
    for i, value in enumerate(values):
        ax.text(value, i, f" {value:.3g}", va="center", fontsize=6)
    ax.axvline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_yticks(range(len(values)), labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ratio (as each key names it; most are libnet against a peer, higher is better)")
    ax.set_title("ratios, each benchmark against its peer in the same run")
    fig.subplots_adjust(left=0.42, right=0.95, bottom=0.08, top=0.95)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_latency(plt: Any, results: dict[str, dict[str, Any]], path: str) -> bool:
    panels = [(name, latency_series(results[name])) for name in LATENCY_BENCHMARKS if name in results]
    panels = [(name, series) for name, series in panels if series]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, (name, series) in zip(axes[0], panels, strict=True):
        for label, points in series.items():
            ax.plot([p for p, _ in points], [v for _, v in points], marker="o", markersize=3, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("percentile")
        ax.set_ylabel("ms")
        ax.set_title(name)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_convergence(plt: Any, result: dict[str, Any], path: str) -> bool:
    series = convergence_series(result)
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for mode, points in series.items():
        hosts = [n for n, _, _ in points]
        ax.plot(hosts, [p50 for _, p50, _ in points], marker="o", label=f"{mode} p50")
        ax.plot(hosts, [p99 for _, _, p99 in points], marker="^", linestyle=":", label=f"{mode} p99")
    ax.axhline(0.3, color="grey", linewidth=0.8, linestyle="--", label="target p50 (N=30)")
    ax.axhline(0.6, color="grey", linewidth=0.8, linestyle="-.", label="target p99 (N=30)")
    ax.set_xlabel("hosts")
    ax.set_ylabel("s until every host reaches the new container")
    ax.set_title("overlay convergence")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _targets_section(verdicts: list[Verdict], results: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| figure | target | value | vs target | met | commit | date |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v in verdicts:
        run = results.get(v.target.benchmark, {}).get("run") or {}
        met = {True: "yes", False: "**no**", None: "not measured"}[v.met]
        score = "" if v.score is None else f"{v.score:.2f}"
        lines.append(
            f"| `{v.target.figure}` | {v.target.op} {v.target.bound:g} ({v.target.source}) | "
            f"{'-' if v.value is None else _fmt(v.value)} | {score} | {met} | "
            f"{run.get('commit', '?')} | {run.get('date', '?')} |"
        )
    return lines


def _benchmark_section(r: dict[str, Any]) -> list[str]:
    lines = [f"## {r['benchmark']}", "", _stamp(r), "", f"params: `{json.dumps(r.get('params', {}))}`", ""]
    rows = [(kind, k, v) for kind in ("metrics", "peers", "ratios") for k, v in flatten("", r.get(kind, {})).items()]
    if rows:
        lines += ["| kind | key | value |", "| --- | --- | --- |"]
        lines += [f"| {kind} | {key.lstrip('.')} | {_fmt(value)} |" for kind, key, value in rows]
    return [*lines, ""]


def write(
    results: list[dict[str, Any]],
    out_dir: str,
    run_info: dict[str, Any] | None = None,
    failures: dict[str, str] | None = None,
    targets: list[Target] = TARGETS,
) -> str:
    """Write ``REPORT.md`` (and the plots, with matplotlib) into ``out_dir``; returns the report's path.

    ``results``: each benchmark's saved result; ``run_info``: this ``make bench`` run (stamp,
    seconds, benchmarks run); ``failures``: benchmark -> why it failed in this run."""
    by_name = {r["benchmark"]: r for r in results}
    verdicts = check(by_name, targets)
    lines = ["# Benchmark report", "", "Produced by `make bench` (`python -m benchmarks.run_all`).", ""]
    if run_info:
        lines += [
            f"This run: {', '.join(run_info.get('benchmarks', [])) or 'no benchmark'} in "
            f"{run_info.get('seconds', 0):.0f} s, started {run_info.get('date', '?')} at commit "
            f"`{run_info.get('commit', '?')}` on {run_info.get('machine', '?')} (load {run_info.get('load', '?')}, "
            f"up {run_info.get('uptime_h', '?')} h).  Every figure names the run it comes from below; "
            "results of benchmarks not run this time are the last saved ones.",
            "",
        ]
    for name, why in (failures or {}).items():
        lines.append(f"- **{name} failed in this run**: {why}")
    if failures:
        lines.append("")
    plt = _pyplot()
    plots: dict[str, Callable[[str], bool]] = {}
    if plt is not None:
        plots = {
            "targets.png": lambda p: (_plot_targets(plt, verdicts, p), True)[1],
            "ratios.png": lambda p: _plot_ratios(plt, results, p),
            "latency.png": lambda p: _plot_latency(plt, by_name, p),
            "convergence.png": lambda p: _plot_convergence(plt, by_name.get("convergence_bench", {}), p),
        }
    drawn = {name for name, draw in plots.items() if draw(os.path.join(out_dir, name))}
    if plt is None:
        lines += ["(matplotlib is not installed: `pip install -e '.[bench]'` for the plots)", ""]
    lines += ["## Targets", "", *_targets_section(verdicts, by_name), ""]
    for name, title in (
        ("targets.png", "figures against their targets"),
        ("ratios.png", "ratios"),
        ("latency.png", "latency distributions"),
        ("convergence.png", "convergence against host count"),
    ):
        if name in drawn:
            lines += [f"![{title}]({name})", ""]
    conv = convergence_series(by_name.get("convergence_bench", {}))
    if conv:
        lines += [
            "## Convergence against host count",
            "",
            "| mode | hosts | p50 s | p99 s |",
            "| --- | --- | --- | --- |",
        ]
        lines += [f"| {mode} | {n} | {p50} | {p99} |" for mode, points in conv.items() for n, p50, p99 in points]
        lines.append("")
    for r in results:
        lines += _benchmark_section(r)
    path = os.path.join(out_dir, "REPORT.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path
