"""Embedded DNS throughput and latency: libnet's listener against dnsmasq, same names, same load.

A test host with one libnet controller: a dual-stack bridge network whose 50
endpoints carry 1,000 names (20 aliases each), and a client sandbox.  dnsperf
runs inside the client sandbox against 127.0.0.11 for 10 s (1,000 names,
A and AAAA mixed, shuffled).  In the same run dnsmasq, in a namespace of its
own, serves the same 1,000 names (same addresses) from a hosts file and gets
the same dnsperf load.  Reported: queries/s, mean and p99 latency (p99 from
dnsperf's per-query log), lost queries, answers that were not NOERROR, and
the ratio libnet/dnsmasq.  Both servers are single-threaded; dnsperf takes
the other core.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import random
import re
import subprocess
import tempfile

from benchmarks.common import emit, parser, progress, require
from libnet import Controller
from libnet.dns.service import DnsConfig
from libnet.kernel import netns
from libnet.testing.hosts import Testbed, host_config, wait_until

NAME = "dns_bench"
PER_ENDPOINT = 20


def dnsperf(ns: str, server: str, queries: str, seconds: int) -> dict:
    """One dnsperf run inside ``ns``; its summary plus p99 and rcodes from the per-query log."""
    out = subprocess.run(
        ["dnsperf", "-s", server, "-d", queries, "-l", str(seconds), "-v"],
        preexec_fn=netns.preexec_enter(ns),
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    latencies, rcodes = [], {}
    for line in out.splitlines():
        if line.startswith("> "):
            parts = line.split()
            rcodes[parts[1]] = rcodes.get(parts[1], 0) + 1
            latencies.append(float(parts[-1]))

    def field(label: str) -> float:
        m = re.search(rf"{label}:\s+([\d.]+)", out)
        if m is None:
            raise RuntimeError(f"dnsperf printed no '{label}':\n{out[-2000:]}")
        return float(m.group(1))

    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] if latencies else float("nan")
    return {
        "qps": round(field("Queries per second")),
        "mean_ms": round(field(r"Average Latency \(s\)") * 1000, 3),
        "p99_ms": round(p99 * 1000, 3),
        "lost": int(field("Queries lost")),
        "completed": int(field("Queries completed")),
        "not_noerror": sum(n for code, n in rcodes.items() if code != "NOERROR"),
    }


async def run(n_names: int, seconds: int) -> tuple[dict, dict]:
    with Testbed(1) as bed, tempfile.TemporaryDirectory() as tmp:
        host = bed.hosts[0]
        cfg = host_config(bed, host, tmp)
        cfg = dataclasses.replace(cfg, dns=DnsConfig(upstreams=["203.0.113.250"]))  # nothing is forwarded
        ctl = await Controller(cfg).start()
        try:
            await ctl.create_network("bench", "bridge", ipv4_subnet="198.51.100.0/24", ipv6_subnet="2001:db8:53::/64")
            progress(f"{n_names // PER_ENDPOINT} endpoints carrying {n_names} names")
            hosts_lines, names = [], []
            for e in range(n_names // PER_ENDPOINT):
                aliases = [f"svc{e * PER_ENDPOINT + i:04d}" for i in range(PER_ENDPOINT)]
                sb = await ctl.create_sandbox(hostname=f"ep{e}")
                ep = await ctl.connect("bench", sb.id, aliases=aliases)
                v4, v6 = (str(ipaddress.ip_interface(a).ip) for a in (ep.ipv4, ep.ipv6))
                hosts_lines += [f"{v4} {' '.join(aliases)}", f"{v6} {' '.join(aliases)}"]
                names += aliases
            client = await ctl.create_sandbox(hostname="client")
            await ctl.connect("bench", client.id)
            rng = random.Random(53)
            lines = [f"{n} {t}" for n in names for t in ("A", "AAAA")]
            rng.shuffle(lines)
            queries = os.path.join(tmp, "queries.txt")
            with open(queries, "w") as f:
                f.write("\n".join(lines) + "\n")

            progress(f"dnsperf against libnet for {seconds} s")
            ours = await asyncio.to_thread(dnsperf, os.path.basename(client.netns), "127.0.0.11", queries, seconds)
            progress(f"libnet: {ours}")
        finally:
            await ctl.close()

        hosts_file = os.path.join(tmp, "hosts")
        with open(hosts_file, "w") as f:
            f.write("\n".join(hosts_lines) + "\n")
        peer = bed.namespace("dnsmasq")
        bed.spawn(
            peer,
            [
                "dnsmasq",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                f"--addn-hosts={hosts_file}",
                "--pid-file=",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--cache-size=10000",
                "--user=root",  # it reads the hosts file in our private temp dir
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        probe = ["dig", "@127.0.0.1", "+short", "+time=1", "+tries=1", names[0]]
        if not wait_until(lambda: bed.run(peer, probe).stdout.strip() != "", 10):
            raise RuntimeError("dnsmasq did not start")
        progress(f"dnsperf against dnsmasq for {seconds} s")
        theirs = dnsperf(peer, "127.0.0.1", queries, seconds)
        progress(f"dnsmasq: {theirs}")
        return ours, theirs


def main() -> dict:
    args = parser(NAME, __doc__).parse_args()
    require("dnsperf", "dnsperf")
    require("dnsmasq", "dnsmasq-base")
    n_names, seconds = (100, 2) if args.quick else (1000, 10)
    ours, theirs = asyncio.run(run(n_names, seconds))
    return emit(
        NAME,
        {"names": n_names, "seconds": seconds, "query_mix": "A+AAAA", "transport": "udp"},
        ours,
        {f"dnsmasq_{k}": v for k, v in theirs.items()},
        {"qps_vs_dnsmasq": round(ours["qps"] / theirs["qps"], 3) if theirs["qps"] else None},
    )


if __name__ == "__main__":
    main()
