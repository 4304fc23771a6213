"""Overlay convergence: from ``connect`` on one host until every other host reaches the new container.

Two modes.  ``procs`` (metrics ``procs_n10``, ``procs_n30``, ``procs_n50``): every
host runs its own ``libnet-agent`` process with its own Serf agent and etcd
is the cluster store, as operators run it (:mod:`benchmarks.convergence_procs`).
``inproc`` (metrics ``n10``, ``n30``), kept for profiling (one process, so one
cProfile sees every host), described here:

N test hosts (N = 10 and 30), each with a libnet controller (all in one event loop),
its own Serf agent (joined, encrypted; the membership attached to the
overlay driver, so peer events gossip) and the embedded SQLite file as the
shared cluster store.  Every host first gets a container on one overlay
network (so every host programs it).  Then, per trial, one host connects a
new container and the clock runs until (a) each other host's FDB has the new
MAC (read from the driver's programmed state) and (b) each other host's
container gets an ICMP echo reply from it (a raw socket in that container's
namespace probing every 20 ms, so measuring costs no process per probe); the time of the
*last* host counts.  p50 and p99 over the trials.  Underlay warm (hosts have
exchanged traffic, and hold permanent neighbour entries for each other: all
test hosts share the kernel's one neighbour table, which 30 gossiping hosts
would otherwise overflow -- see :meth:`Testbed.pin_underlay_neighbours`;
for the same reason each trial's container is deleted and the probers' ARP
caches flushed after the trial, outside the clock), IPv4 VTEPs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import tempfile
import time

from benchmarks.common import emit, parser, progress, require
from benchmarks.convergence_procs import MIB_PER_HOST, fits, mem_available_mib, run_procs
from benchmarks.probe import flush_arp, pct, ping_until
from libnet import Controller
from libnet.cluster.agent import SerfAgent, SerfAgentConfig
from libnet.cluster.serf import new_key
from libnet.cluster.serf_membership import SerfMembership
from libnet.kernel.neighbours import FdbEntry
from libnet.testing.etcd import find_etcd
from libnet.testing.hosts import Testbed, host_config

NAME = "convergence_bench"


async def run(n: int, trials: int) -> dict:
    with Testbed(n) as bed, tempfile.TemporaryDirectory() as tmp:
        bed.pin_underlay_neighbours()
        key = new_key()
        ctls, agents = [], []
        progress(f"n={n}: starting {n} controllers and Serf agents")
        try:
            for h in bed.hosts:
                agent = SerfAgent(
                    SerfAgentConfig(
                        node=h.name,
                        bind=h.ipv4,
                        state_dir=f"{tmp}/serf-{h.name}",
                        encrypt_key=key,
                        netns=h.ns,
                        tags={"vtep": h.ipv4},
                        join=[] if h is bed.hosts[0] else [bed.hosts[0].ipv4],
                    )
                )
                await agent.start()
                agents.append(agent)
                cfg = host_config(bed, h, tmp)
                ctl = await Controller(cfg).start()
                ctl.driver("overlay").attach_membership(SerfMembership(agent.client))
                ctls.append(ctl)
            nw = await ctls[0].create_network("conv", "overlay", ipv4_subnet="198.51.100.0/25")
            base = []
            for c in ctls:
                sb = await c.create_sandbox()
                base.append((os.path.basename(sb.netns), await c.connect("conv", sb.id)))
            progress(f"n={n}: warming up the underlay")
            deadline = time.monotonic() + 60
            for i, (ns, _) in enumerate(base):  # every host reaches host 1's container: paths are warm
                target = str(ipaddress.ip_interface(base[(i + 1) % n][1].ipv4).ip)
                await ping_until(ns, target, deadline, 3000 + i)
            reach, fdb = [], []
            for t in range(trials):
                src = ctls[t % n]
                others = [(c, base[i][0]) for i, c in enumerate(ctls) if c is not src]
                sb = await src.create_sandbox()
                t0 = time.monotonic()
                ep = await src.connect("conv", sb.id)
                addr = str(ipaddress.ip_interface(ep.ipv4).ip)
                want = FdbEntry(ep.mac, src.config.vtep)

                async def fdb_at(c: Controller, want: FdbEntry = want) -> float:
                    prog = c.driver("overlay").programmer
                    while True:
                        applied = prog._applied.get(nw.id)
                        if applied is not None and want in applied.fdb:
                            return time.monotonic()
                        await asyncio.sleep(0.002)

                fdb_times = await asyncio.wait_for(asyncio.gather(*(fdb_at(c) for c, _ in others)), 30)
                ping_times = await asyncio.gather(
                    *(ping_until(ns, addr, t0 + 30, 4000 + i) for i, (_, ns) in enumerate(others))
                )
                fdb.append(max(fdb_times) - t0)
                reach.append(max(p for p in ping_times if p is not None) - t0)
                # clean up outside the clock: all test hosts share the kernel's one neighbour
                # table, and 58 fresh entries a trial (probers <-> new container) would fill it
                await src.delete_sandbox(sb.id)
                await asyncio.gather(*(asyncio.to_thread(flush_arp, ns) for _, ns in others))
                progress(
                    f"n={n} trial {t + 1}/{trials}: fdb {fdb[-1] * 1000:.0f} ms, reachable {reach[-1] * 1000:.0f} ms"
                )
            return {
                "reachable_p50_s": pct(reach, 50),
                "reachable_p99_s": pct(reach, 99),
                "fdb_programmed_p50_s": pct(fdb, 50),
                "fdb_programmed_p99_s": pct(fdb, 99),
            }
        finally:
            for c in ctls:
                await c.close()
            await asyncio.gather(*(a.stop(leave=False) for a in agents), return_exceptions=True)


def main() -> dict:
    p = parser(NAME, __doc__)
    p.add_argument("--mode", choices=("inproc", "procs", "both"), default="both", help="which mode(s) to run")
    p.add_argument("--sizes", help="in-process host counts, comma-separated (default 10,30; quick 3)")
    p.add_argument("--procs-sizes", help="agent-process host counts (default 10,30,50; quick 3)")
    p.add_argument("--trials", type=int, help="trials per size (default 20; quick 3)")
    args = p.parse_args()
    require("serf", "serf")
    sizes, psizes, trials = ([3], [3], 3) if args.quick else ([10, 30], [10, 30, 50], 20)
    if os.environ.get("LIBNET_BENCH_SIZES"):  # e.g. LIBNET_BENCH_SIZES=30 for one size, 3 trials
        sizes, trials = [int(x) for x in os.environ["LIBNET_BENCH_SIZES"].split(",")], 3
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else sizes
    psizes = [int(x) for x in args.procs_sizes.split(",")] if args.procs_sizes else psizes
    trials = args.trials or trials
    sizes = sizes if args.mode != "procs" else []
    psizes = psizes if args.mode != "inproc" else []
    if psizes and find_etcd() is None:
        raise SystemExit("the agent-process mode needs etcd: install the Debian package 'etcd-server'")
    metrics: dict = {f"n{n}": asyncio.run(run(n, trials)) for n in sizes}
    skipped = {}
    for n in psizes:
        if not fits(n):
            skipped[f"procs_n{n}"] = f"{n} hosts x {MIB_PER_HOST} MiB do not fit in {mem_available_mib():.0f} MiB"
            progress(f"procs n={n}: skipped, {skipped[f'procs_n{n}']}")
            continue
        metrics[f"procs_n{n}"] = asyncio.run(run_procs(n, trials))
    params = {
        "hosts": sizes,
        "procs_hosts": psizes,
        "trials": trials,
        "store": "sqlite",
        "procs_store": "etcd",
        "vtep": "ipv4",
        "skipped": skipped,
    }
    return emit(NAME, params, metrics, {}, {})


if __name__ == "__main__":
    main()
