"""CNI ADD and DEL latency: the ``libnet`` plugin against the reference ``bridge`` + ``host-local``.

In one test host (a namespace) with a ``libnet-agent`` (SQLite store) and N
existing container namespaces per side, each plugin is exec'd exactly as a
runtime execs it (``libnet.testing.cni.CniRuntime``: the binary found in
``CNI_PATH``, the ``CNI_*`` environment, the config on stdin, inside the test
host), ADD then DEL per namespace, the two sides interleaved call by call so
that load on the machine hits both alike.  The same dual-stack layout on both
sides: an IPv4 /20 and an IPv6 /64, the gateway on the host side, IP
masquerade off, ``CNI_ARGS`` as podman sends them.  The first ADD of each side
creates its network (libnet: from the config's ``subnet``/``subnet6``; the
bridge plugin: its bridge).  Also measured: ``VERSION``, i.e. the cost of
starting each plugin binary.

Wall time per exec is what a runtime pays; for libnet it includes the agent's
work (a separate process).  Ratios compare medians: reference time / libnet
time (above 1.0: libnet is faster).  The plugins run on the interpreter
``libnet cni install`` picks (``libnet.cni.install.fastest_python``), or on
``--python``, as ``libnet cni install --python`` does.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from typing import Any

from benchmarks.common import emit, parser, progress, require
from libnet.cni.install import fastest_python
from libnet.kernel import netns
from libnet.testing.agents import AgentProcess
from libnet.testing.cni import REFERENCE_DIR, CniRuntime, Outcome, reference_bridge_conf
from libnet.testing.hosts import Testbed

NAME = "cni_bench"


def pct(values: list[float], q: int) -> float:
    """The ``q``-th percentile of ``values`` (seconds) in milliseconds."""
    return round(statistics.quantiles(values, n=100)[q - 1] * 1000, 2) if len(values) > 1 else values[0] * 1000


def confs(agent: AgentProcess, tmp: str) -> dict[str, dict[str, Any]]:
    """The two sides' configs: plugin type -> config."""
    return {
        "libnet": {
            "cniVersion": "1.0.0",
            "name": "bench",
            "type": "libnet",
            "socket": agent.socket,
            "subnet": "198.51.96.0/20",
            "subnet6": "2001:db8:a::/64",
        },
        "bridge": reference_bridge_conf(
            "bench-ref",
            "cni-bench0",
            "198.51.112.0/20",
            "2001:db8:b::/64",
            os.path.join(tmp, "host-local"),
            default_routes=True,
        ),
    }


def checked(o: Outcome, what: str) -> float:
    if not o.ok:
        raise SystemExit(f"{what} failed: {o.out} {o.err}")
    return o.seconds


def main() -> dict:
    p = parser(NAME, __doc__)
    p.add_argument("--python", help="the plugins' interpreter (libnet cni install --python; default: this one)")
    args = p.parse_args()
    require(os.path.join(REFERENCE_DIR, "bridge"), "containernetworking-plugins")
    require(os.path.join(REFERENCE_DIR, "host-local"), "containernetworking-plugins")
    n = 10 if args.quick else 120
    with Testbed(1) as bed, tempfile.TemporaryDirectory() as tmp:
        host = bed.hosts[0]
        agent = AgentProcess(bed, host, state_dir=os.path.join(tmp, "agent")).start()
        try:
            rt = CniRuntime(host.ns, os.path.join(tmp, "bin"), args.python)
            sides = confs(agent, tmp)
            progress(f"creating {2 * n} container namespaces")
            paths = {t: [netns.path_of(bed.namespace(f"{t[0]}{i}")) for i in range(n)] for t in sides}
            times: dict[str, dict[str, list[float]]] = {t: {"VERSION": [], "ADD": [], "DEL": []} for t in sides}
            progress(f"VERSION, then ADD and DEL of {n} namespaces per side, interleaved")
            for _ in range(n):
                for t in sides:
                    o = rt.exec(t, "VERSION", {"cniVersion": "1.0.0"}, netns_path="dummy")
                    times[t]["VERSION"].append(checked(o, f"{t} VERSION"))
            for command in ("ADD", "DEL"):
                for i in range(n):
                    for t, conf in sides.items():
                        o = rt.exec(
                            t,
                            command,
                            conf,
                            container_id=f"bench{i}",
                            netns_path=paths[t][i],
                            args=f"IgnoreUnknown=1;K8S_POD_NAME=bench-{i}",
                        )
                        times[t][command].append(checked(o, f"{t} {command} #{i}"))
            left = agent.cli_json("endpoint", "ls")
            if left:
                raise SystemExit(f"libnet DEL left {len(left)} endpoints")
        finally:
            agent.stop()

    def figures(t: str, prefix: str) -> dict[str, float]:
        out = {}
        for command, key in (("ADD", "add"), ("DEL", "del"), ("VERSION", "version")):
            for q in (50, 90):
                out[f"{prefix}{key}_ms_p{q}"] = pct(times[t][command], q)
        return out

    metrics, peers = figures("libnet", ""), figures("bridge", "reference_")
    ratios = {
        "add_speedup_vs_reference": round(peers["reference_add_ms_p50"] / metrics["add_ms_p50"], 2),
        "del_speedup_vs_reference": round(peers["reference_del_ms_p50"] / metrics["del_ms_p50"], 2),
    }
    params = {"namespaces": n, "store": "sqlite", "dual_stack": True, "reference": "bridge+host-local"}
    params["python"] = os.path.realpath(args.python or fastest_python())
    return emit(NAME, params, metrics, peers, ratios)


if __name__ == "__main__":
    main()
