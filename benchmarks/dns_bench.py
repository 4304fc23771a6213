"""Embedded DNS throughput and latency: libnet's listener against dnsmasq, same names, same load.

A test host with one libnet controller: a dual-stack bridge network whose 50
endpoints carry 1,000 names (20 aliases each), and a client sandbox.  dnsperf
runs inside the client sandbox against 127.0.0.11 (1,000 names, A and AAAA
mixed, shuffled).  In the same run dnsmasq, in a namespace of its own,
serves the same 1,000 names (same addresses) from a hosts file and gets the
same dnsperf load.  The two are measured in alternating rounds (libnet,
dnsmasq, libnet, dnsmasq: ``seconds`` each in all), so a machine whose load
changes during the run weighs on both alike.  Reported: queries/s, mean and
p99 latency (p99 from dnsperf's per-query log), lost queries, answers that
were not NOERROR, and the ratio libnet/dnsmasq.

Forwarding, same run: an "upstream" dnsmasq on the host's loopback
(127.0.0.53, as systemd-resolved sits) serves 1,000 outside names
(``extNNNN.example``, TTL 300).  libnet's embedded DNS forwards them from
there (its forwarded-answer cache warm after a 1 s pass):
``metrics.forward_cached_qps``; dnsmasq forwarding the same names from the
same upstream (its cache warm alike, listening on 127.0.0.54 in the host
namespace): ``peers.dnsmasq_forward_qps``.  All servers are single-threaded;
dnsperf takes the other core.
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
    """One dnsperf run inside ``ns``; its summary plus p99 and rcodes from the per-query log
    (``_latencies``: the raw per-query latencies, for :func:`combine`)."""
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
        "_latencies": latencies,
        "_seconds": seconds,
    }


def combine(runs: list[dict]) -> dict:
    """Several dnsperf runs against one server as one figure."""
    latencies = sorted(x for r in runs for x in r["_latencies"])
    seconds = sum(r["_seconds"] for r in runs)
    completed = sum(r["completed"] for r in runs)
    return {
        "qps": round(sum(r["qps"] * r["_seconds"] for r in runs) / seconds),
        "mean_ms": round(sum(r["mean_ms"] * r["completed"] for r in runs) / max(completed, 1), 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 3) if latencies else float("nan"),
        "lost": sum(r["lost"] for r in runs),
        "completed": completed,
        "not_noerror": sum(r["not_noerror"] for r in runs),
    }


def spawn_dnsmasq(bed: Testbed, ns: str, *args: str) -> None:
    bed.spawn(
        ns,
        [
            "dnsmasq",
            "--keep-in-foreground",
            "--no-hosts",
            "--pid-file=",
            "--bind-interfaces",
            "--cache-size=10000",
            "--user=root",  # it reads hosts files in our private temp dir
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def write_queries(path: str, names: list[str], seed: int) -> None:
    lines = [f"{n} {t}" for n in names for t in ("A", "AAAA")]
    random.Random(seed).shuffle(lines)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


async def run(n_names: int, seconds: int, rounds: int) -> tuple[dict, dict, dict, dict]:
    with Testbed(1) as bed, tempfile.TemporaryDirectory() as tmp:
        host = bed.hosts[0]
        # the upstream: dnsmasq on the host's loopback with the outside names
        outside = [f"ext{i:04d}.example" for i in range(n_names)]
        upstream_hosts = os.path.join(tmp, "upstream-hosts")
        with open(upstream_hosts, "w") as f:
            for i, name in enumerate(outside):
                f.write(f"198.51.100.{1 + i % 250} {name}\n2001:db8:99::{i + 1:x} {name}\n")
        spawn_dnsmasq(
            bed,
            host.ns,
            "--no-resolv",
            f"--addn-hosts={upstream_hosts}",
            "--listen-address=127.0.0.53",
            "--local-ttl=300",
        )
        probe = ["dig", "@127.0.0.53", "+short", "+time=1", "+tries=1", outside[0]]
        if not wait_until(lambda: bed.run(host.ns, probe).stdout.strip() != "", 10):
            raise RuntimeError("the upstream dnsmasq did not start")

        cfg = host_config(bed, host, tmp)
        cfg = dataclasses.replace(cfg, dns=DnsConfig(upstreams=["127.0.0.53"]))  # a host-loopback upstream
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
            client_ns = os.path.basename(client.netns)
            queries, forwarded = os.path.join(tmp, "queries.txt"), os.path.join(tmp, "forwarded.txt")
            write_queries(queries, names, 53)
            write_queries(forwarded, outside, 54)

            hosts_file = os.path.join(tmp, "hosts")
            with open(hosts_file, "w") as f:
                f.write("\n".join(hosts_lines) + "\n")
            peer = bed.namespace("dnsmasq")
            spawn_dnsmasq(bed, peer, "--no-resolv", f"--addn-hosts={hosts_file}", "--listen-address=127.0.0.1")
            spawn_dnsmasq(bed, host.ns, "--no-resolv", "--server=127.0.0.53", "--listen-address=127.0.0.54")
            for ns, server, name in ((peer, "127.0.0.1", names[0]), (host.ns, "127.0.0.54", outside[0])):
                probe = ["dig", f"@{server}", "+short", "+time=1", "+tries=1", name]
                if not wait_until(lambda ns=ns, probe=probe: bed.run(ns, probe).stdout.strip() != "", 10):
                    raise RuntimeError(f"dnsmasq on {server} did not start")

            ours, theirs = [], []
            each = max(1, seconds // rounds)
            for r in range(rounds):
                progress(f"round {r + 1}/{rounds}: dnsperf against libnet, then dnsmasq, {each} s each")
                ours.append(await asyncio.to_thread(dnsperf, client_ns, "127.0.0.11", queries, each))
                theirs.append(await asyncio.to_thread(dnsperf, peer, "127.0.0.1", queries, each))
            ours_all, theirs_all = combine(ours), combine(theirs)
            progress(f"libnet: {ours_all}")
            progress(f"dnsmasq: {theirs_all}")

            progress("warming both forwarding caches (1 s each)")
            await asyncio.to_thread(dnsperf, client_ns, "127.0.0.11", forwarded, 1)
            await asyncio.to_thread(dnsperf, host.ns, "127.0.0.54", forwarded, 1)
            fwd_ours, fwd_theirs = [], []
            for r in range(rounds):
                progress(f"forwarding round {r + 1}/{rounds}: libnet, then dnsmasq, {each} s each")
                fwd_ours.append(await asyncio.to_thread(dnsperf, client_ns, "127.0.0.11", forwarded, each))
                fwd_theirs.append(await asyncio.to_thread(dnsperf, host.ns, "127.0.0.54", forwarded, each))
            fwd_ours_all, fwd_theirs_all = combine(fwd_ours), combine(fwd_theirs)
            progress(f"libnet forwarding (cached): {fwd_ours_all}")
            progress(f"dnsmasq forwarding (cached): {fwd_theirs_all}")
        finally:
            await ctl.close()
        return ours_all, theirs_all, fwd_ours_all, fwd_theirs_all


def main() -> dict:
    args = parser(NAME, __doc__).parse_args()
    require("dnsperf", "dnsperf")
    require("dnsmasq", "dnsmasq-base")
    n_names, seconds, rounds = (100, 2, 1) if args.quick else (1000, 10, 2)
    ours, theirs, fwd_ours, fwd_theirs = asyncio.run(run(n_names, seconds, rounds))
    metrics = {
        **ours,
        "forward_cached_qps": fwd_ours["qps"],
        "forward_cached_p99_ms": fwd_ours["p99_ms"],
        "forward_lost": fwd_ours["lost"],
        "forward_not_noerror": fwd_ours["not_noerror"],
    }
    peers = {
        **{f"dnsmasq_{k}": v for k, v in theirs.items()},
        "dnsmasq_forward_qps": fwd_theirs["qps"],
        "dnsmasq_forward_p99_ms": fwd_theirs["p99_ms"],
        "dnsmasq_forward_lost": fwd_theirs["lost"],
    }
    return emit(
        NAME,
        {"names": n_names, "seconds": seconds, "rounds": rounds, "query_mix": "A+AAAA", "transport": "udp"},
        metrics,
        peers,
        {
            "qps_vs_dnsmasq": round(ours["qps"] / theirs["qps"], 3) if theirs["qps"] else None,
            "forward_cached_vs_dnsmasq": (round(fwd_ours["qps"] / fwd_theirs["qps"], 3) if fwd_theirs["qps"] else None),
        },
    )


if __name__ == "__main__":
    main()
