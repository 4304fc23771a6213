"""Overlay convergence: from ``connect`` on one host until every other host reaches the new container.

N test hosts (N = 10 and 30), each with a libnet controller (one event loop),
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
import contextlib
import ipaddress
import os
import socket
import statistics
import struct
import tempfile
import time

from benchmarks.common import emit, parser, progress, require
from libnet import Controller
from libnet.cluster.agent import SerfAgent, SerfAgentConfig
from libnet.cluster.serf import new_key
from libnet.cluster.serf_membership import SerfMembership
from libnet.kernel import netns
from libnet.kernel.neighbours import FdbEntry
from libnet.kernel.netlink import Netlink
from libnet.testing.hosts import Testbed, host_config

NAME = "convergence_bench"


def pct(values: list[float], q: int) -> float:
    return (
        round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 3)
        if len(values) > 1
        else round(values[0], 3)
    )


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


async def ping_until(ns: str, addr: str, deadline: float, ident: int) -> float | None:
    """ICMP echo from inside ``ns`` every 20 ms until ``addr`` answers (a raw socket: no process per probe)."""
    sock = netns.open_socket(ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        seq = 0
        while time.monotonic() < deadline:
            seq += 1
            head = struct.pack("!BBHHH", 8, 0, 0, ident & 0xFFFF, seq)
            packet = struct.pack("!BBHHH", 8, 0, _checksum(head + b"libnet"), ident & 0xFFFF, seq) + b"libnet"
            with contextlib.suppress(OSError):  # no route yet
                sock.sendto(packet, (addr, 0))
            until = time.monotonic() + 0.02
            while time.monotonic() < until:
                try:
                    data, peer = await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), until - time.monotonic())
                except (TimeoutError, OSError):
                    break
                ihl = (data[0] & 0x0F) * 4
                if peer[0] == addr and data[ihl] == 0 and int.from_bytes(data[ihl + 4 : ihl + 6], "big") == ident:
                    return time.monotonic()
        return None
    finally:
        sock.close()


def _flush_arp(ns: str) -> None:
    with Netlink(ns) as nl:
        nl.flush_neighbours("eth0")


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
                await asyncio.gather(*(asyncio.to_thread(_flush_arp, ns) for _, ns in others))
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
    args = parser(NAME, __doc__).parse_args()
    require("serf", "serf")
    sizes, trials = ([3], 3) if args.quick else ([10, 30], 20)
    if os.environ.get("LIBNET_BENCH_SIZES"):  # e.g. LIBNET_BENCH_SIZES=30 for one size, 3 trials
        sizes, trials = [int(x) for x in os.environ["LIBNET_BENCH_SIZES"].split(",")], 3
    metrics = {f"n{n}": asyncio.run(run(n, trials)) for n in sizes}
    return emit(NAME, {"hosts": sizes, "trials": trials, "store": "sqlite", "vtep": "ipv4"}, metrics, {}, {})


if __name__ == "__main__":
    main()
