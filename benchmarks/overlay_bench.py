"""Overlay throughput: libnet's VXLAN overlay against a hand-built VXLAN pair and the underlay.

Two test hosts on a switch.  iperf3, one TCP stream, for the same duration:

- underlay: host 1 -> host 2 on their underlay addresses;
- hand-built VXLAN: the same data path made with ``ip`` and ``bridge``
  commands -- a container namespace per host whose veth sits on a bridge with
  a VXLAN device (MTU underlay - 50, static flood entry) -- container to
  container;
- libnet: a container on each host on a libnet overlay network (two
  controllers, one cluster store), container to container.

Rounds alternate between the three so the machine's noise hits all of them;
medians are reported.  Targets: libnet >= 0.95 x the hand-built pair (libnet
adds nothing to the data plane) and >= 0.70 x the underlay.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import statistics
import subprocess
import tempfile
import time
from typing import Any

from benchmarks.common import emit, parser, progress, require
from libnet import Controller
from libnet.testing.hosts import Testbed, host_config

NAME = "overlay_bench"


def iperf(bed: Testbed, server_ns: str, client_ns: str, addr: str, seconds: float, port: int) -> float:
    """Gbit/s of one TCP stream from client_ns to addr (served in server_ns) (:func:`iperf_end`)."""
    return float(iperf_end(bed, server_ns, client_ns, addr, seconds, port)["sum_received"]["bits_per_second"]) / 1e9


def iperf_end(bed: Testbed, server_ns: str, client_ns: str, addr: str, seconds: float, port: int) -> dict:
    """iperf3's ``end`` report (``sum_received``, ``cpu_utilization_percent``, ...) of one
    TCP stream from client_ns to addr (served in server_ns).

    The server runs until the measurement is done (not ``-1``: a client attempt
    that failed half-way would end a one-off server and every retry after it),
    the client starts once the server listens, and is retried a few times."""
    srv = bed.spawn(server_ns, ["iperf3", "-s", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and srv.poll() is None:
            if bed.run(server_ns, ["ss", "-Hltn", f"sport = :{port}"]).stdout.strip():
                break
            time.sleep(0.05)
        r = None
        for _ in range(3):
            r = bed.run(
                client_ns, ["iperf3", "-c", addr, "-p", str(port), "-t", str(seconds), "-J"], timeout=seconds + 30
            )
            if r.returncode == 0:
                return dict(json.loads(r.stdout)["end"])
            time.sleep(0.5)
        detail = f"{r.stdout[-300:]} {r.stderr[-300:]}" if r is not None else "no attempt"
        raise SystemExit(f"iperf3 to {addr} failed: {detail}")
    finally:
        if srv.poll() is None:
            srv.terminate()
        try:
            srv.wait(timeout=10)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait(10)


#: the hand-built containers' addresses: 198.51.100.<HANDBUILT + 1, 2>/28
HANDBUILT = 240


def iperf_rounds(
    bed: Testbed, legs: dict[str, tuple[str, str, str]], seconds: float, rounds: int, port: int = 5201
) -> dict[str, float]:
    """Median Gbit/s of each leg (name -> (server ns, client ns, address)), the legs
    alternating round by round so the machine's noise hits all of them."""
    results: dict[str, list[float]] = {name: [] for name in legs}
    for r in range(rounds):
        progress(f"round {r + 1}/{rounds}: {', '.join(legs)} ({seconds}s each)")
        for name, (server, client, addr) in legs.items():
            results[name].append(iperf(bed, server, client, addr, seconds, port))
            port += 1
    return {name: statistics.median(v) for name, v in results.items()}


def handbuilt(bed: Testbed) -> tuple[str, str]:
    """The same data path built by hand with ip/bridge commands: per host a
    container namespace whose veth sits on a bridge with a VXLAN device (MTU
    underlay - 50, static flood entry).  Returns the two containers' namespaces."""
    h1, h2 = bed.hosts
    names = []
    for i, (me, other) in enumerate(((h1, h2), (h2, h1)), start=1):
        c = bed.namespace(f"hb{i}")
        names.append(c)
        for cmd in (
            ["ip", "link", "add", "hbr", "type", "bridge"],
            ["ip", "link", "add", "vxh", "type", "vxlan", "id", "4000", "local", me.ipv4, "dstport", "4789"],
            ["ip", "link", "set", "vxh", "mtu", "1450", "master", "hbr", "up"],
            ["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vxh", "dst", other.ipv4],
            [
                "ip",
                "link",
                "add",
                "hbv",
                "mtu",
                "1450",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "mtu",
                "1450",
                "netns",
                c,
            ],
            ["ip", "link", "set", "hbv", "master", "hbr", "up"],
            ["ip", "link", "set", "hbr", "up"],
        ):
            bed.run(me.ns, cmd, check=True)
        # apart from the libnet overlay (198.51.100.0/25) and the gateway bridges (198.51.100.128/28)
        bed.run(c, ["ip", "addr", "add", f"198.51.100.{HANDBUILT + i}/28", "dev", "eth0"], check=True)
        bed.run(c, ["ip", "link", "set", "eth0", "up"], check=True)
    return names[0], names[1]


async def libnet_overlay(bed: Testbed, tmp: str):
    ctls = []
    for h in bed.hosts:
        cfg = host_config(bed, h, tmp)
        ctls.append(await Controller(cfg).start())
    await ctls[0].create_network("bench", "overlay", ipv4_subnet="198.51.100.0/25", ipv6_subnet="2001:db8:77::/64")
    return ctls, (await place_on(ctls, ["bench"]))["bench"]


async def place_on(ctls: list[Controller], networks: list[str]) -> dict[str, list[tuple[str, Any]]]:
    """A container of each controller's host on each overlay network, once every
    host knows the others' endpoints: network -> [(namespace, endpoint)]."""
    placed: dict[str, list[tuple[str, Any]]] = {net: [] for net in networks}
    for net in networks:
        for c in ctls:
            sb = await c.create_sandbox()
            placed[net].append((os.path.basename(sb.netns), await c.connect(net, sb.id)))
    others = len(ctls) - 1
    for _ in range(200):
        if all(
            len(c.driver("overlay").table.peers(p[0][1].network_id)) == others for c in ctls for p in placed.values()
        ):
            break
        await asyncio.sleep(0.05)
    for c in ctls:
        await c.driver("overlay").programmer.settled()
    return placed


def main() -> dict:
    args = parser(NAME, __doc__).parse_args()
    require("iperf3", "iperf3")
    seconds, rounds = (1, 1) if args.quick else (5, 3)
    with Testbed(2) as bed, tempfile.TemporaryDirectory() as tmp:
        h1, h2 = bed.hosts
        hb1, hb2 = handbuilt(bed)
        loop = asyncio.new_event_loop()
        ctls, placed = loop.run_until_complete(libnet_overlay(bed, tmp))
        try:
            (c1, _), (c2, ep2) = placed
            target = str(ipaddress.ip_interface(ep2.ipv4).ip)
            legs = {
                "underlay": (h2.ns, h1.ns, h2.ipv4),
                "handbuilt": (hb2, hb1, f"198.51.100.{HANDBUILT + 2}"),
                "libnet": (c2, c1, target),
            }
            med = iperf_rounds(bed, legs, seconds, rounds)
        finally:
            for c in ctls:
                loop.run_until_complete(c.close())
            loop.close()
    metrics = {"overlay_gbps": round(med["libnet"], 3)}
    peers = {"handbuilt_vxlan_gbps": round(med["handbuilt"], 3), "underlay_gbps": round(med["underlay"], 3)}
    ratios = {
        "vs_handbuilt_vxlan": round(med["libnet"] / med["handbuilt"], 3),
        "vs_underlay": round(med["libnet"] / med["underlay"], 3),
    }
    params = {"seconds": seconds, "rounds": rounds, "streams": 1, "vtep": "ipv4", "mtu": 1450}
    return emit(NAME, params, metrics, peers, ratios)


if __name__ == "__main__":
    main()
