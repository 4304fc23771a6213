"""Benchmarks run (--quick) and print the documented JSON keys.

Behaviour only: the numbers are reported by `make bench`, not asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _run(name: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--quick"], capture_output=True, text=True, timeout=300, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.root
def test_netlink_bench_quick() -> None:
    r = _run("netlink_bench")
    assert r["benchmark"] == "netlink_bench"
    for key in ("add_entries_per_s", "delete_entries_per_s", "flush_fdb_ms", "flush_neighbours_ms"):
        assert r["metrics"][key] > 0
    for key in ("iproute2_batch_add_entries_per_s", "iproute2_batch_delete_entries_per_s"):
        assert r["peers"][key] > 0
    assert set(r["ratios"]) == {"add_vs_iproute2_batch", "delete_vs_iproute2_batch"}


def test_store_bench_quick() -> None:
    r = _run("store_bench")
    assert set(r["metrics"]) == {"memory", "sqlite", "etcd"}
    for backend in r["metrics"].values():
        for key in ("get_per_s", "put_per_s", "cas_per_s", "watch_p50_ms", "watch_p99_ms"):
            assert backend[key] > 0


def test_ipam_bench_quick() -> None:
    r = _run("ipam_bench")
    for key in ("memory_allocs_per_s", "sqlite_allocs_per_s", "etcd_concurrent_allocs_per_s", "v6_allocs_per_s"):
        assert r["metrics"][key] > 0
    assert r["metrics"]["etcd_duplicates"] == 0
    assert r["peers"]["host_local_allocs_per_s"] > 0
    assert r["ratios"]["speedup_vs_host_local"] > 0


@pytest.mark.root
def test_attach_bench_quick() -> None:
    r = _run("attach_bench")
    for key in ("attach_ms_p50", "detach_ms_p50"):
        assert r["metrics"][key] > 0
    for key in ("cni_add_ms_p50", "cni_del_ms_p50"):
        assert r["peers"][key] > 0
    assert set(r["ratios"]) == {"attach_speedup_vs_cni", "detach_speedup_vs_cni"}


@pytest.mark.root
def test_gossip_bench_quick() -> None:
    r = _run("gossip_bench")
    for size in ("n3", "n5"):
        m = r["metrics"][size]
        assert m["delivered"] == m["sent"] and m["last_host_p50_ms"] > 0 and m["agent_rss_mib"] > 0
    assert r["metrics"]["failure_detection_s"] > 0
    assert "client_overhead_p50_ms" in r["ratios"]


@pytest.mark.root
def test_api_bench_quick() -> None:
    r = _run("api_bench")
    for key in ("list_networks_rps", "list_networks_p99_ms", "connect_disconnect_rps", "connect_disconnect_p99_ms"):
        assert r["metrics"][key] > 0
    assert r["metrics"]["list_networks_agent_cpu_us"] > 0


@pytest.mark.root
def test_cli_bench_quick() -> None:
    r = _run("cli_bench")
    assert r["params"]["runs"] >= 20
    for key in ("cli_network_ls_ms_p50", "cli_network_ls_ms_p90", "cli_network_ls_cpu_ms"):
        assert r["metrics"][key] > 0
    assert r["peers"]["python_startup_ms_p50"] > 0
    assert set(r["ratios"]) == {"cli_ls_vs_target_100ms", "python_startup_share"}


@pytest.mark.root
def test_overlay_bench_quick() -> None:
    r = _run("overlay_bench")
    assert r["metrics"]["overlay_gbps"] > 0
    assert r["peers"]["handbuilt_vxlan_gbps"] > 0 and r["peers"]["underlay_gbps"] > 0
    assert set(r["ratios"]) == {"vs_handbuilt_vxlan", "vs_underlay"}


@pytest.mark.root
def test_encryption_bench_quick() -> None:
    def sockets() -> set[str]:  # wireguard-go's control sockets: one per running interface, machine-wide
        return set(os.listdir("/var/run/wireguard")) if os.path.isdir("/var/run/wireguard") else set()

    before = sockets()
    r = _run("encryption_bench")
    assert sockets() <= before, "the run left wireguard-go interfaces behind"  # breaker: two per run leaked
    assert r["metrics"]["encrypted_overlay_gbps"] > 0
    assert r["metrics"]["rotation_sent_packets"] > 0 and r["metrics"]["rotation_lost_packets"] >= 0
    assert r["peers"]["handbuilt_wireguard_gbps"] > 0 and r["peers"]["plain_overlay_gbps"] > 0
    assert set(r["ratios"]) == {"vs_handbuilt_wireguard", "vs_plain_overlay"}
    assert r["params"]["backend"] in ("wireguard-go", "kernel")


@pytest.mark.root
def test_convergence_bench_quick() -> None:
    r = _run("convergence_bench")
    m = r["metrics"]["n3"]
    for key in ("reachable_p50_s", "reachable_p99_s", "fdb_programmed_p50_s", "fdb_programmed_p99_s"):
        assert m[key] > 0
    procs = r["metrics"]["procs_n3"]  # three libnet-agent processes, etcd
    for key in ("reachable_p50_s", "reachable_p99_s", "agent_rss_mib_p50", "serf_rss_mib_p50"):
        assert procs[key] > 0


@pytest.mark.root
def test_dns_bench_quick() -> None:
    r = _run("dns_bench")
    assert r["metrics"]["qps"] > 0 and r["metrics"]["lost"] == 0 and r["metrics"]["not_noerror"] == 0
    assert r["peers"]["dnsmasq_qps"] > 0 and r["ratios"]["qps_vs_dnsmasq"] > 0
    assert r["metrics"]["forward_cached_qps"] > 0 and r["metrics"]["forward_lost"] == 0
    assert r["peers"]["dnsmasq_forward_qps"] > 0 and r["ratios"]["forward_cached_vs_dnsmasq"] > 0


@pytest.mark.root
def test_restart_bench_quick() -> None:
    r = _run("restart_bench")
    keys = {f"{kind}_{store}" for kind in ("sigterm", "sigkill") for store in ("sqlite", "etcd")}
    assert set(r["metrics"]["lost_packets"]) == keys and set(r["metrics"]["api_ready_s_p50"]) == keys
    for key in keys:
        assert r["metrics"]["lost_packets"][key] == 0 and r["metrics"]["packets_sent"][key] > 0
        assert r["metrics"]["api_ready_s_p50"][key] > 0
    assert r["peers"]["bare_serf_rpc_ready_s_p50"] > 0
    assert set(r["ratios"]) == {f"api_ready_vs_bare_serf.{key}" for key in keys}


@pytest.mark.root
def test_proxy_bench_quick() -> None:
    r = _run("proxy_bench")
    assert r["metrics"]["proxy_gbps"] > 0 and r["metrics"]["proxy_conn_per_s"] > 0
    assert r["metrics"]["proxy_cpu_ms_per_gb"] > 0 and r["metrics"]["proxy_conn_cpu_us"] > 0
    assert all(v > 0 for v in r["peers"].values()) and len(r["peers"]) == 12
    assert set(r["ratios"]) == {
        "throughput_vs_direct",
        "conn_rate_vs_direct",
        "throughput_vs_userspace_proxy",
        "throughput_vs_routed_hop",
        "routed_hop_throughput_vs_direct",
        "cpu_per_gb_vs_direct",
        "cpu_per_gb_vs_routed_hop",
        "conn_cpu_vs_direct",
        "conn_cpu_vs_routed_hop",
    }


def test_cni_bench_quick() -> None:
    r = _run("cni_bench")
    assert r["benchmark"] == "cni_bench" and r["params"]["namespaces"] == 10
    for side in (r["metrics"], {k.removeprefix("reference_"): v for k, v in r["peers"].items()}):
        for key in ("add", "del", "version"):
            assert 0 < side[f"{key}_ms_p50"] <= side[f"{key}_ms_p90"]
    assert set(r["ratios"]) == {"add_speedup_vs_reference", "del_speedup_vs_reference"}
    assert all(v > 0 for v in r["ratios"].values())


def test_memory_bench_quick() -> None:
    r = _run("memory_bench")
    n, m = r["params"]["endpoints"], r["params"]["remote_peers"]
    for key in ("rss_mib_idle", f"rss_mib_{n}_endpoints", f"rss_mib_{m}_remote_peers"):
        assert r["metrics"][key] > 0
    assert r["metrics"]["remote_peers_programmed"] == m
    assert set(r["ratios"]) == {f"rss_{n}_endpoints_vs_target_60mib"}
