"""Attach and detach latency: libnet against CNI's reference bridge + host-local plugins.

In a test host (a namespace), for 200 existing container namespaces each:

- libnet: attach = register the namespace as a sandbox + create an endpoint
  + join it (veth, dual-stack addresses, routes, store records); detach =
  leave + delete the endpoint + drop the sandbox record.  Through the async
  controller on the embedded SQLite store.
- CNI: ``bridge`` with ``host-local`` IPAM (Debian
  ``containernetworking-plugins``), the same dual-stack layout (an IPv4 /24
  and an IPv6 /64, gateway on the bridge, ``ipMasq`` off since libnet
  masquerades per network, not per container), ADD and DEL per namespace,
  the plugin run inside the test host the way a runtime runs it (exec).

Both sides do the same container-side work; the ratios compare medians.  The
sides run one after the other, so both use 198.51.100.0/24 (test hosts use
documentation ranges only; 253 addresses hold the 200 containers).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time

from benchmarks.common import emit, parser, progress, require
from libnet import Config, Controller
from libnet.kernel import netns
from libnet.testing.cni import reference_bridge_conf
from libnet.testing.hosts import Testbed
from libnet.testing.pools import ipam_config

NAME = "attach_bench"
CNI_DIR = "/usr/lib/cni"
#: both sides' IPv4 subnet, one side after the other
SUBNET = "198.51.100.0/24"


def pct(values: list[float], q: int) -> float:
    return round(statistics.quantiles(values, n=100)[q - 1] * 1000, 2) if len(values) > 1 else values[0] * 1000


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's waited-for children so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


async def libnet_side(
    bed: Testbed, paths: list[str], tmp: str
) -> tuple[list[float], list[float], list[float], list[float]]:
    config = Config(
        store=f"sqlite://{tmp}/store.db",
        state_dir=tmp,
        host_netns=bed.hosts[0].ns,
        sandbox_prefix=bed.prefix + "sb-",
        ipam=ipam_config(),
    )
    attach, detach, attach_cpu, detach_cpu = [], [], [], []
    async with Controller(config) as ctl:
        await ctl.create_network("bench", ipv4_subnet=SUBNET, ipv6_subnet="2001:db8:a::/64")
        sandboxes = []
        for path in paths:
            t, c = time.perf_counter(), time.process_time()
            sb = await ctl.create_sandbox(netns=path)
            await ctl.connect("bench", sb.id, name=f"c-{sb.id[:12]}")
            attach.append(time.perf_counter() - t)
            attach_cpu.append(time.process_time() - c)
            sandboxes.append(sb)
        for sb in sandboxes:
            t, c = time.perf_counter(), time.process_time()
            await ctl.disconnect("bench", sb.id)
            await ctl.delete_sandbox(sb.id)
            detach.append(time.perf_counter() - t)
            detach_cpu.append(time.process_time() - c)
        await ctl.delete_network("bench")
    return attach, detach, attach_cpu, detach_cpu


def cni_side(bed: Testbed, paths: list[str], tmp: str) -> tuple[list[float], list[float], list[float], list[float]]:
    conf = json.dumps(
        reference_bridge_conf("bench", "cni-bench0", SUBNET, "2001:db8:b::/64", os.path.join(tmp, "cni"))
    ).encode()
    enter = netns.preexec_enter(bed.hosts[0].ns)
    base = {"CNI_IFNAME": "eth0", "CNI_PATH": CNI_DIR, "PATH": os.environ.get("PATH", "")}

    def run(cmd: str, i: int, path: str, cpu: list[float]) -> float:
        env = {**base, "CNI_COMMAND": cmd, "CNI_CONTAINERID": f"bench{i}", "CNI_NETNS": path}
        t, c = time.perf_counter(), children_cpu()
        r = subprocess.run(
            [os.path.join(CNI_DIR, "bridge")], input=conf, env=env, capture_output=True, preexec_fn=enter, timeout=60
        )
        elapsed = time.perf_counter() - t
        cpu.append(children_cpu() - c)  # the plugin and the host-local it runs
        if r.returncode != 0:
            raise SystemExit(f"CNI {cmd} failed: {r.stdout.decode()} {r.stderr.decode()}")
        return elapsed

    add_cpu: list[float] = []
    del_cpu: list[float] = []
    add = [run("ADD", i, p, add_cpu) for i, p in enumerate(paths)]
    delete = [run("DEL", i, p, del_cpu) for i, p in enumerate(paths)]
    return add, delete, add_cpu, del_cpu


def main() -> dict:
    args = parser(NAME, __doc__).parse_args()
    require(os.path.join(CNI_DIR, "bridge"), "containernetworking-plugins")
    n = 20 if args.quick else 200
    with Testbed(1) as bed, tempfile.TemporaryDirectory() as tmp:
        progress(f"creating {2 * n} container namespaces")
        mine = [f"/run/netns/{bed.namespace(f'l{i}')}" for i in range(n)]
        theirs = [f"/run/netns/{bed.namespace(f'c{i}')}" for i in range(n)]
        progress(f"libnet: attach and detach {n} sandboxes")
        attach, detach, attach_cpu, detach_cpu = asyncio.run(libnet_side(bed, mine, tmp))
        progress(f"CNI bridge + host-local: ADD and DEL {n} namespaces")
        add, delete, add_cpu, del_cpu = cni_side(bed, theirs, tmp)
    metrics = {
        "attach_ms_p50": pct(attach, 50),
        "attach_ms_p90": pct(attach, 90),
        "detach_ms_p50": pct(detach, 50),
        "detach_ms_p90": pct(detach, 90),
        # CPU (user + system, every thread of the process) per operation: moves much
        # less with the machine's load than wall time
        "attach_cpu_ms_p50": pct(attach_cpu, 50),
        "detach_cpu_ms_p50": pct(detach_cpu, 50),
    }
    peers = {
        "cni_add_ms_p50": pct(add, 50),
        "cni_add_ms_p90": pct(add, 90),
        "cni_del_ms_p50": pct(delete, 50),
        "cni_del_ms_p90": pct(delete, 90),
        "cni_add_cpu_ms_p50": pct(add_cpu, 50),
        "cni_del_cpu_ms_p50": pct(del_cpu, 50),
    }
    ratios = {
        "attach_speedup_vs_cni": round(peers["cni_add_ms_p50"] / metrics["attach_ms_p50"], 2),
        "detach_speedup_vs_cni": round(peers["cni_del_ms_p50"] / metrics["detach_ms_p50"], 2),
    }
    return emit(NAME, {"sandboxes": n, "store": "sqlite", "dual_stack": True}, metrics, peers, ratios)


if __name__ == "__main__":
    main()
