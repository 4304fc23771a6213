"""Network proxy (issue 21): throughput and connection rate through a libnet proxy.

One test host, two bridge networks (``front``, ``back``) and one backend
sandbox on ``back`` serving iperf3 and a TCP accept-and-close server.  The
same client measures, in alternating rounds, three paths to it:

- proxy: a client on ``front`` only, through a libnet proxy (kernel NAT in the
  proxy's namespace) ``front -> back`` for the services;
- direct: a client sandbox joined to both networks, straight to the backend
  (what users do without a proxy, giving up isolation);
- userspace proxy (peer): ``socat`` (Debian ``socat``) in a sandbox joined to both
  networks, relaying on its ``front`` address to the backend -- the same path
  a userspace proxy container would take;
- routed hop (the floor): a client on ``front`` only whose traffic to
  ``back`` is plainly routed (no NAT, no rules) by a sandbox joined to both
  networks -- what any path through a sandbox with a leg on each network
  costs before the proxy's NAT.

Figures: iperf3 (one TCP stream) Gbit/s, and TCP connections per second of
one client that connects and closes (RST, no TIME_WAIT) as fast as it can.
Also the CPU the transfer cost, milliseconds per GB: the user and system time
of the iperf3 client and server (iperf3's ``cpu_utilization_percent``, from
getrusage), which on this kernel (no IRQ time accounting) includes the
softirq work of every hop the packets take in the senders' context -- a
figure that moves much less than throughput when other work loads the
machine, so it says what a path costs when the throughput ratio is noise
(socat's own CPU, relaying in its own process, is not in its figure).
Likewise for connections, microseconds of CPU per connection: the
client's user and system time (``os.times``) over the connections it made,
which includes the kernel's work on every hop of the handshake and reset
done in its context (socat's and the server's own processes excluded).
All throughput rounds first, then the connection rounds; each round starts
with the next path in turn, so none is favoured by its place.  Medians over
the rounds.  Targets: throughput >= 0.9 x direct, connection rate
>= 0.8 x direct; the userspace ratio is reported.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

from benchmarks.common import emit, parser, progress, require
from benchmarks.overlay_bench import iperf_end
from libnet import Controller
from libnet.testing.hosts import Testbed, host_config

NAME = "proxy_bench"
IPERF_PORT, CONN_PORT = 5201, 5300
FRONT, BACK = "198.51.100.0/25", "198.51.100.128/25"
ACCEPTOR = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(4096)
    print("ready", flush=True)
    while True:
        c, _ = s.accept(); c.close()
    """
)
CONNECTOR = textwrap.dedent(
    """
    import os, socket, struct, sys, time
    addr, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    linger = struct.pack("ii", 1, 0)
    n, end = 0, time.monotonic() + seconds
    t0 = time.monotonic()
    while time.monotonic() < end:
        c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger); c.settimeout(2)
        try:
            c.connect((addr, port)); n += 1
        except OSError:
            pass
        c.close()
    t = os.times()
    print(n / (time.monotonic() - t0), (t.user + t.system) / max(n, 1) * 1e6)
    """
)


def _ip(cidr: str | None) -> str:
    assert cidr
    return str(ipaddress.ip_interface(cidr).ip)


def cpu_ms_per_gb(end: dict, seconds: float) -> float:
    """Milliseconds of CPU (iperf3 client and server, user + system) per GB received."""
    pct = end["cpu_utilization_percent"]
    gb = end["sum_received"]["bytes"] / 1e9
    return float((pct["host_total"] + pct["remote_total"]) / 100 * seconds * 1000 / gb)


def conn_rate(bed: Testbed, client_ns: str, addr: str, seconds: float) -> tuple[float, float]:
    """Connections per second from ``client_ns`` to ``addr``:CONN_PORT, and the client's CPU
    (user + system, microseconds) per connection."""
    r = bed.run(client_ns, [sys.executable, "-c", CONNECTOR, addr, str(CONN_PORT), str(seconds)], timeout=seconds + 30)
    if r.returncode != 0:
        raise SystemExit(f"connection-rate client to {addr} failed: {r.stderr[-300:]}")
    rate, cpu_us = r.stdout.split()
    return float(rate), float(cpu_us)


async def build(bed: Testbed, tmp: str) -> tuple[Controller, dict[str, str]]:
    """The networks, sandboxes, proxy and socat peer; returns namespaces and addresses by role."""
    c = await Controller(host_config(bed, bed.hosts[0], tmp)).start()
    await c.create_network("front", ipv4_subnet=FRONT, ipv6=False)
    await c.create_network("back", ipv4_subnet=BACK, ipv6=False)
    out: dict[str, str] = {}
    for role, nets in (
        ("backend", ["back"]),
        ("client", ["front"]),
        ("dual", ["front", "back"]),
        ("upx", ["front", "back"]),
        ("router", ["front", "back"]),
        ("routed", ["front"]),
    ):
        sb = await c.create_sandbox(hostname=role)
        out[role] = os.path.basename(sb.netns)
        for net in nets:
            ep = await c.connect(net, sb.id, name=role, aliases=["db"] if role == "backend" else [])
            out[f"{role}@{net}"] = _ip(ep.ipv4)
    px = await c.create_proxy("bench", "front", "back", [f"db:{IPERF_PORT}", f"db:{CONN_PORT}"])
    out["proxy"] = _ip((await c.endpoint(px.front_endpoint)).ipv4)
    return c, out


def main() -> dict:
    args = parser(NAME, __doc__).parse_args()
    require("iperf3", "iperf3")
    require("socat", "socat")
    seconds, rounds = (1.0, 1) if args.quick else (4.0, 6)
    gbps: dict[str, list[float]] = {"proxy": [], "direct": [], "userspace": [], "routed": []}
    cpu: dict[str, list[float]] = {"proxy": [], "direct": [], "userspace": [], "routed": []}  # ms per GB
    rate: dict[str, list[float]] = {"proxy": [], "direct": [], "userspace": [], "routed": []}
    conn_cpu: dict[str, list[float]] = {"proxy": [], "direct": [], "userspace": [], "routed": []}  # us per conn
    with Testbed(1) as bed, tempfile.TemporaryDirectory() as tmp:
        loop = asyncio.new_event_loop()
        ctl, at = loop.run_until_complete(build(bed, tmp))
        try:
            backend = at["backend@back"]
            acceptor = bed.spawn(
                at["backend"], [sys.executable, "-c", ACCEPTOR, str(CONN_PORT)], stdout=subprocess.PIPE
            )
            assert acceptor.stdout is not None and acceptor.stdout.readline().strip() == b"ready"
            for port in (IPERF_PORT, CONN_PORT):
                bed.spawn(
                    at["upx"],
                    [
                        "socat",
                        f"TCP4-LISTEN:{port},bind={at['upx@front']},fork,reuseaddr,backlog=4096",
                        f"TCP4:{backend}:{port}",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            # the floor of any path through a sandbox with a leg on each network: plain routing, no NAT
            bed.run(at["router"], ["sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
            bed.run(at["routed"], ["ip", "route", "add", BACK, "via", at["router@front"]], check=True)
            bed.run(at["backend"], ["ip", "route", "add", FRONT, "via", at["router@back"]], check=True)
            time.sleep(0.3)  # socat listening
            paths = {
                "proxy": (at["client"], at["proxy"]),
                "direct": (at["dual"], backend),
                "userspace": (at["client"], at["upx@front"]),
                "routed": (at["routed"], backend),
            }
            order = list(paths)
            for what, out in (("iperf3", gbps), ("connections", rate)):
                for r in range(rounds):
                    order = order[1:] + order[:1]  # each path first in turn: no place in the round is favoured
                    progress(f"{what} round {r + 1}/{rounds}: {', '.join(order)} ({seconds}s each)")
                    for path in order:
                        client_ns, addr = paths[path]
                        if out is gbps:
                            end = iperf_end(bed, at["backend"], client_ns, addr, seconds, IPERF_PORT)
                            out[path].append(end["sum_received"]["bits_per_second"] / 1e9)
                            cpu[path].append(cpu_ms_per_gb(end, seconds))
                        else:
                            per_s, cpu_us = conn_rate(bed, client_ns, addr, seconds)
                            out[path].append(per_s)
                            conn_cpu[path].append(cpu_us)
        finally:
            loop.run_until_complete(ctl.close())
            loop.close()
    g = {k: statistics.median(v) for k, v in gbps.items()}
    c = {k: statistics.median(v) for k, v in rate.items()}
    u = {k: statistics.median(v) for k, v in cpu.items()}
    cc = {k: statistics.median(v) for k, v in conn_cpu.items()}
    metrics = {
        "proxy_gbps": round(g["proxy"], 3),
        "proxy_conn_per_s": round(c["proxy"], 1),
        "proxy_cpu_ms_per_gb": round(u["proxy"]),
        "proxy_conn_cpu_us": round(cc["proxy"], 1),
    }
    peers = {
        "direct_gbps": round(g["direct"], 3),
        "direct_conn_per_s": round(c["direct"], 1),
        "socat_gbps": round(g["userspace"], 3),
        "socat_conn_per_s": round(c["userspace"], 1),
        "routed_hop_gbps": round(g["routed"], 3),
        "routed_hop_conn_per_s": round(c["routed"], 1),
        "direct_cpu_ms_per_gb": round(u["direct"]),
        "socat_cpu_ms_per_gb": round(u["userspace"]),
        "routed_hop_cpu_ms_per_gb": round(u["routed"]),
        "direct_conn_cpu_us": round(cc["direct"], 1),
        "socat_conn_cpu_us": round(cc["userspace"], 1),
        "routed_hop_conn_cpu_us": round(cc["routed"], 1),
    }
    ratios = {
        "throughput_vs_direct": round(g["proxy"] / g["direct"], 3),
        "conn_rate_vs_direct": round(c["proxy"] / c["direct"], 3),
        "throughput_vs_userspace_proxy": round(g["proxy"] / g["userspace"], 3),
        "throughput_vs_routed_hop": round(g["proxy"] / g["routed"], 3),
        "routed_hop_throughput_vs_direct": round(g["routed"] / g["direct"], 3),
        "cpu_per_gb_vs_direct": round(u["proxy"] / u["direct"], 3),  # > 1: the proxied path costs more CPU
        "cpu_per_gb_vs_routed_hop": round(u["proxy"] / u["routed"], 3),
        # > 1: a connection through the proxy costs the client (and the kernel work of every hop
        # done in its context) more CPU than a direct one; moves much less with load than the rate
        "conn_cpu_vs_direct": round(cc["proxy"] / cc["direct"], 3),
        "conn_cpu_vs_routed_hop": round(cc["proxy"] / cc["routed"], 3),
    }
    params = {"seconds": seconds, "rounds": rounds, "streams": 1, "networks": "bridge -> bridge, one host"}
    return emit(NAME, params, metrics, peers, ratios)


if __name__ == "__main__":
    main()
