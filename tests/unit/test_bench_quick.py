"""``make bench-quick``'s comparison (benchmarks/quick.py): which figures are
compared, in which direction, and what is flagged."""

from __future__ import annotations

import json

from benchmarks import quick


def test_figures_are_ratios_and_watched_metrics() -> None:
    result = {
        "benchmark": "convergence_bench",
        "metrics": {"n3": {"reachable_p50_s": 0.2, "reachable_p99_s": 0.3, "fdb_programmed_p50_s": 0.1}},
        "ratios": {"nested": {"x": 2}, "flag": True, "text": "a"},
    }
    assert quick.figures(result) == {
        "convergence_bench.ratios.nested.x": 2.0,
        "convergence_bench.metrics.n3.reachable_p50_s": 0.2,
        "convergence_bench.metrics.n3.reachable_p99_s": 0.3,
    }


def test_drops_beyond_a_quarter_are_flagged_in_the_right_direction() -> None:
    base = {
        "attach_bench.ratios.attach_speedup_vs_cni": 4.0,
        "api_bench.ratios.list_rps_vs_target_1000": 2.0,
        "docker_bench.ratios.connect_vs_docker_bridge": 0.8,  # lower is better
        "convergence_bench.metrics.n3.reachable_p50_s": 0.1,  # lower is better
        "gossip_bench.ratios.client_overhead_p50_ms": 0.1,  # not a ratio
        "old_bench.ratios.gone": 1.0,
    }
    now = {
        "attach_bench.ratios.attach_speedup_vs_cni": 2.9,  # -27.5%: DROP
        "api_bench.ratios.list_rps_vs_target_1000": 1.6,  # -20%: ok
        "docker_bench.ratios.connect_vs_docker_bridge": 1.2,  # slower than Docker by more: DROP
        "convergence_bench.metrics.n3.reachable_p50_s": 0.05,  # twice as fast: ok
        "gossip_bench.ratios.client_overhead_p50_ms": 5.0,
        "cli_bench.ratios.cli_ls_vs_target_100ms": 0.3,
    }
    rows = {r[0]: r for r in quick.compare(now, base)}
    assert rows["attach_bench.ratios.attach_speedup_vs_cni"][3:] == ("-28%", "DROP")
    assert rows["api_bench.ratios.list_rps_vs_target_1000"][3:] == ("-20%", "ok")
    assert rows["docker_bench.ratios.connect_vs_docker_bridge"][4] == "DROP"
    assert rows["convergence_bench.metrics.n3.reachable_p50_s"][3:] == ("+100%", "ok")
    assert rows["gossip_bench.ratios.client_overhead_p50_ms"][4] == "not a ratio"
    assert rows["old_bench.ratios.gone"][4] == "missing now"
    assert rows["cli_bench.ratios.cli_ls_vs_target_100ms"][4] == "new"


def test_the_committed_baseline_covers_every_benchmark() -> None:
    with open(quick.BASELINE) as f:
        doc = json.load(f)
    assert {"machine", "commit", "date", "note", "figures"} <= set(doc)
    covered = {k.split(".", 1)[0] for k in doc["figures"]} | set(doc.get("failed", {}))
    assert covered == set(quick.BENCHMARKS)


def test_saving_part_of_a_baseline_keeps_the_rest(tmp_path, monkeypatch) -> None:
    path = tmp_path / "baseline.json"
    monkeypatch.setattr(quick, "BASELINE", str(path))
    monkeypatch.setattr(quick, "commit", lambda: "new1234")
    old = {
        "commit": "old5678",
        "date": "2026-01-01T00:00:00Z",
        "note": "loaded",
        "figures": {"a_bench.ratios.x": 1.0, "b_bench.ratios.y": 2.0},
        "failed": {"c_bench": "exit 1"},
    }
    quick.save(old, ["b_bench", "c_bench"], {"b_bench.ratios.y": 3.0, "c_bench.ratios.z": 4.0}, {"b_bench": 1}, {}, "")
    doc = json.loads(path.read_text())
    assert doc["figures"] == {"a_bench.ratios.x": 1.0, "b_bench.ratios.y": 3.0, "c_bench.ratios.z": 4.0}
    assert doc["failed"] == {} and doc["note"] == "loaded"
    assert doc["runs"]["a_bench"]["commit"] == "old5678" and doc["runs"]["b_bench"]["commit"] == "new1234"
