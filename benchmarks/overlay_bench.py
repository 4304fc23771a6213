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

from benchmarks.common import emit, parser, progress, require
from libnet import Controller
from libnet.testing.hosts import Testbed, host_config

NAME = "overlay_bench"


def iperf(bed: Testbed, server_ns: str, client_ns: str, addr: str, seconds: float, port: int) -> float:
    """Gbit/s of one TCP stream from client_ns to addr (served in server_ns).

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
                return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
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
    placed = []
    for c in ctls:
        sb = await c.create_sandbox()
        placed.append((os.path.basename(sb.netns), await c.connect("bench", sb.id)))
    for _ in range(200):
        if all(len(c.driver("overlay").table.peers(placed[0][1].network_id)) == 1 for c in ctls):
            break
        await asyncio.sleep(0.05)
    for c in ctls:
        await c.driver("overlay").programmer.settled()
    return ctls, placed


def main() -> dict:
    args = parser(NAME, __doc__).parse_args()
    require("iperf3", "iperf3")
    seconds, rounds = (1, 1) if args.quick else (5, 3)
    results: dict[str, list[float]] = {"underlay": [], "handbuilt": [], "libnet": []}
    with Testbed(2) as bed, tempfile.TemporaryDirectory() as tmp:
        h1, h2 = bed.hosts
        hb1, hb2 = handbuilt(bed)
        loop = asyncio.new_event_loop()
        ctls, placed = loop.run_until_complete(libnet_overlay(bed, tmp))
        try:
            (c1, _), (c2, ep2) = placed
            target = str(ipaddress.ip_interface(ep2.ipv4).ip)
            port = 5201
            for r in range(rounds):
                progress(f"round {r + 1}/{rounds}: underlay, hand-built VXLAN, libnet overlay ({seconds}s each)")
                results["underlay"].append(iperf(bed, h2.ns, h1.ns, h2.ipv4, seconds, port))
                results["handbuilt"].append(iperf(bed, hb2, hb1, f"198.51.100.{HANDBUILT + 2}", seconds, port + 1))
                results["libnet"].append(iperf(bed, c2, c1, target, seconds, port + 2))
                port += 3
        finally:
            for c in ctls:
                loop.run_until_complete(c.close())
            loop.close()
    med = {k: statistics.median(v) for k, v in results.items()}
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
