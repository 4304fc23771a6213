"""The benchmark report (make bench) from a tiny synthetic result set: targets judged, each figure's
commit and date shown, plots drawn when matplotlib is there (the ``bench`` extra), tables without it."""

from __future__ import annotations

import importlib.util

from benchmarks import report
from benchmarks.targets import Target, check


def _run(commit: str) -> dict:
    return {"commit": commit, "date": "2026-12-01T05:00:00Z", "machine": "2 cores test", "load_before": [1.5]}


RESULTS = [
    {
        "benchmark": "attach_bench",
        "params": {"sandboxes": 3},
        "metrics": {"attach_ms_p50": 2.0, "attach_ms_p90": 3.0, "detach_ms_p50": 1.0},
        "peers": {"cni_add_ms_p50": 40.0, "cni_add_ms_p90": 45.0},
        "ratios": {"attach_speedup_vs_cni": 20.0, "detach_speedup_vs_cni": 8.0},
        "run": _run("abc1234"),
    },
    {
        "benchmark": "convergence_bench",
        "params": {},
        "metrics": {
            "n10": {"reachable_p50_s": 0.1, "reachable_p99_s": 0.2},
            "n30": {"reachable_p50_s": 0.25, "reachable_p99_s": 0.5},
            "procs_n30": {"reachable_p50_s": 0.4, "reachable_p99_s": 0.7, "agent_rss_mib_p50": 70.0},
        },
        "peers": {},
        "ratios": {},
        "samples": {"connect_ms": [1.0, 2.0, 3.0]},
        "run": _run("def5678"),
    },
]


def test_targets_are_judged_in_either_direction() -> None:
    by_name = {r["benchmark"]: r for r in RESULTS}
    verdicts = check(
        by_name,
        [
            Target("attach_bench.ratios.attach_speedup_vs_cni", ">=", 10, "t"),
            Target("attach_bench.ratios.detach_speedup_vs_cni", ">=", 10, "t"),
            Target("convergence_bench.metrics.n30.reachable_p50_s", "<=", 0.3, "t"),
            Target("convergence_bench.metrics.procs_n30.reachable_p99_s", "<=", 0.6, "t"),
            Target("memory_bench.metrics.rss_mib_1000_endpoints", "<=", 60, "t"),
        ],
    )
    assert [v.met for v in verdicts] == [True, False, True, False, None]
    assert verdicts[0].score == 2.0
    assert round(verdicts[3].score or 0, 3) == round(0.6 / 0.7, 3)


def test_report_names_each_figure_s_run_and_draws_the_plots(tmp_path) -> None:
    path = report.write(RESULTS, str(tmp_path), {"commit": "fff0000", "seconds": 12.0, "benchmarks": ["attach_bench"]})
    with open(path) as f:
        text = f.read()
    row = next(line for line in text.splitlines() if "`attach_bench.ratios.detach_speedup_vs_cni`" in line)
    assert "**no**" in row and "abc1234" in row
    row = next(line for line in text.splitlines() if "`convergence_bench.metrics.n30.reachable_p50_s`" in line)
    assert "| yes |" in row and "def5678" in row
    assert "| agent processes | 30 | 0.4 | 0.7 |" in text
    assert "commit `abc1234`, 2026-12-01T05:00:00Z, 2 cores test" in text
    assert "fff0000" in text
    assert "n30.reachable_p50_s | 0.25" in text  # nested metrics flattened, not a Python repr
    if importlib.util.find_spec("matplotlib") is None:
        assert "matplotlib is not installed" in text
        return
    for name in ("targets.png", "ratios.png", "latency.png", "convergence.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
        assert f"]({name})" in text


def test_latency_series_from_percentiles_and_samples() -> None:
    attach = report.latency_series(RESULTS[0])
    assert attach["attach_ms"] == [(50.0, 2.0), (90.0, 3.0)]
    assert attach["cni_add_ms (peer)"] == [(50.0, 40.0), (90.0, 45.0)]
    conv = report.latency_series(RESULTS[1])
    assert conv["connect_ms"][-1] == (100.0, 3.0)
