"""Agent restarts: packets lost, and the time until the restarted agent serves its API again.

Per restart kind (``sigterm``: a graceful stop; ``sigkill``: a crash) and per
store, with the new agent started at once after the old one is gone:

- ``sqlite``: one test host, the default SQLite store, a bridge network, two
  containers; ping streams between them (IPv4 and IPv6);
- ``etcd``: three test hosts, a three-member etcd cluster (one member per
  host, ``--cluster-store`` naming all three), Serf, an overlay network, a
  container per host; ping streams from h1's container to h3's (IPv4 and
  IPv6) while h3's agent restarts.

``metrics.lost_packets.<kind>_<store>``: packets lost by the streams (``ping
-i 0.04``, 25/s each, counted from the replies' sequence numbers) over all
restarts of that kind, and a settling time after the last one (longer than the
peer grace period).  ``metrics.api_ready_s_p50.<kind>_<store>``: seconds from
starting the new agent process to its first 2xx answer to ``GET /v1/health``
on its socket (polled every 10 ms), median over the restarts (``_max``: the
slowest).  ``metrics.packets_sent``: how many packets the streams sent.

Peer: a bare ``serf agent`` (Debian ``serf``) started in a test host, timed
from its start until it answers an RPC (handshake and ``members`` through
libnet's client): the floor of what any agent built on Serf needs to serve
again after a cold start.  libnet's agent re-attaches to the Serf agent that
outlived it, so its restart need not pay that cost; the ratios
``api_ready_vs_bare_serf.<kind>_<store>`` are the bare Serf time over
libnet's (higher is better; 1.0: libnet is back as fast as a bare Serf agent
starts).  ``peers.python_import_agent_s_p50``, for scale: how long this
machine's Python takes to start and import the agent's code (``python -c
"import agent.daemon"``), the part of libnet's figure that is not its own
work.  Docker's own daemon restart is no peer here: ``live-restore`` is not
available in a form a benchmark can drive on this machine.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from agent.cli import AgentError, Client, Unreachable
from benchmarks.common import emit, parser, progress, require
from libnet.cluster.serf import SerfClient
from libnet.testing.agents import AgentProcess
from libnet.testing.cluster import GRACE, PingStream, ip, place, start_agents, wait_ping
from libnet.testing.etcd import EtcdCluster, find_etcd
from libnet.testing.hosts import Testbed

NAME = "restart_bench"
KINDS = ("sigterm", "sigkill")


def restart(agent: AgentProcess, kind: str, timeout: float = 60) -> float:
    """Stop ``agent`` (SIGTERM and wait, or SIGKILL), start it again; seconds until its API answers."""
    assert agent.proc is not None
    if kind == "sigterm":
        agent.proc.terminate()
        if agent.proc.wait(timeout=40) != 0:
            raise SystemExit(f"SIGTERM: the agent did not exit 0: {agent.log_tail()}")
    else:
        agent.kill()
    t = time.monotonic()
    agent.proc = agent.spawn()
    client = Client(agent.socket, timeout=2)
    while True:
        try:
            client.request("GET", "/v1/health")
            return time.monotonic() - t
        except (Unreachable, AgentError):
            pass
        if agent.proc.poll() is not None or time.monotonic() - t > timeout:
            raise SystemExit(f"the restarted agent did not serve its API within {timeout}s: {agent.log_tail()}")
        time.sleep(0.01)


def measure(
    bed: Testbed, agent: AgentProcess, pairs: list[tuple[str, str]], n: int, settle: float, out: str
) -> dict[str, dict[str, float]]:
    """``n`` restarts of each kind under ping streams: per kind, lost/sent packets and API-ready times."""
    results: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        streams = [
            PingStream(bed, src, addr, os.path.join(out, f"ping-{kind}-{i}.txt")) for i, (src, addr) in enumerate(pairs)
        ]
        ready = []
        try:
            time.sleep(1)
            for i in range(n):
                ready.append(restart(agent, kind))
                progress(f"  {kind} {i + 1}/{n}: API again after {ready[-1]:.2f}s")
                time.sleep(1)
            time.sleep(settle)  # losses that come later (peers removed after a grace period) count too
        finally:
            counts = [s.stop() for s in streams]
        results[kind] = {
            "lost": sum(lost for _, lost in counts),
            "sent": sum(sent for sent, _ in counts),
            "ready_p50": statistics.median(ready),
            "ready_max": max(ready),
        }
    return results


def bench_sqlite(n: int, settle: float) -> dict[str, dict[str, float]]:
    progress("sqlite: one host, bridge network, two containers")
    with Testbed(1) as bed, tempfile.TemporaryDirectory(prefix="libnet-restart-") as tmp:
        agent = AgentProcess(bed, bed.hosts[0], state_dir=os.path.join(tmp, "h1")).start()
        r = agent.cli("network", "create", "br", "--subnet", "198.51.100.0/24", "--subnet6", "2001:db8:16::/64")
        if r.returncode != 0:
            raise SystemExit(f"network create failed: {r.stderr}")
        (c1, _), (_, ep2) = place(agent, "br"), place(agent, "br")
        pairs = [(c1, ip(ep2["ipv4"])), (c1, ip(ep2["ipv6"]))]
        for src, addr in pairs:
            wait_ping(bed, src, addr)
        try:
            return measure(bed, agent, pairs, n, settle, tmp)
        finally:
            agent.stop()


def bench_etcd(n: int, settle: float) -> dict[str, dict[str, float]]:
    progress("etcd: three hosts, a three-member etcd cluster, overlay, h3's agent restarts")
    with (
        Testbed(3) as bed,
        EtcdCluster([(h.ns, h.ipv4) for h in bed.hosts]) as etcd,
        tempfile.TemporaryDirectory(prefix="libnet-restart-") as tmp,
    ):
        agents = start_agents(bed, tmp, etcd.url)
        subnets = ("--subnet", "198.51.100.0/25", "--subnet6", "2001:db8:16::/64")
        r = agents[0].cli("network", "create", "ov", "--driver", "overlay", *subnets)
        if r.returncode != 0:
            raise SystemExit(f"network create failed: {r.stderr}")
        (c1, _), _, (_, ep3) = (place(a) for a in agents)
        pairs = [(c1, ip(ep3["ipv4"])), (c1, ip(ep3["ipv6"]))]
        for src, addr in pairs:
            wait_ping(bed, src, addr)
        try:
            return measure(bed, agents[2], pairs, n, settle, tmp)
        finally:
            for a in agents:
                a.stop()


def bench_bare_serf(n: int) -> list[float]:
    """Seconds from starting a bare ``serf agent`` until it answers RPC, ``n`` cold starts."""
    serf = require("serf", "serf")
    times = []
    with Testbed(1) as bed:
        h = bed.hosts[0]
        for i in range(n):
            argv = [serf, "agent", "-node", f"bare-{i}", "-bind", f"{h.ipv4}:7946", "-rpc-addr", "127.0.0.1:7373"]
            t = time.monotonic()
            proc = bed.spawn(h.ns, argv, stdout=open(os.devnull, "wb"), stderr=open(os.devnull, "wb"))  # noqa: SIM115
            try:
                while True:
                    if asyncio.run(_serf_answers(h.ns)):
                        times.append(time.monotonic() - t)
                        break
                    if proc.poll() is not None or time.monotonic() - t > 30:
                        raise SystemExit("the bare serf agent did not answer RPC within 30s")
                    time.sleep(0.01)
            finally:
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGTERM)  # the recorded pid
                proc.wait(timeout=10)
    return times


def bench_python_import(n: int) -> list[float]:
    """Seconds a fresh interpreter takes to import the agent's code, ``n`` times."""
    times = []
    for _ in range(n):
        t = time.monotonic()
        subprocess.run([sys.executable, "-c", "import agent.daemon"], check=True, timeout=60)
        times.append(time.monotonic() - t)
    return times


async def _serf_answers(ns: str) -> bool:
    client = SerfClient("127.0.0.1", 7373, netns=ns, timeout=1, reconnect=False)
    try:
        await client.connect()
        await client.members()
        return True
    except Exception:  # not up yet: any failure means "not serving"
        return False
    finally:
        await client.close()


def main() -> dict:
    args = parser(NAME, __doc__).parse_args()
    require("ping", "iputils-ping")
    require("serf", "serf")
    if find_etcd() is None:
        raise SystemExit("restart_bench needs etcd: install the Debian package 'etcd-server'")
    n = 1 if args.quick else 5
    settle = 1.0 if args.quick else GRACE + 2
    by_store = {"sqlite": bench_sqlite(n, settle), "etcd": bench_etcd(n, settle)}
    progress("peer: cold starts of a bare serf agent")
    serf = bench_bare_serf(max(n, 3))
    serf_p50 = statistics.median(serf)
    metrics: dict[str, dict[str, float]] = {
        "lost_packets": {},
        "packets_sent": {},
        "api_ready_s_p50": {},
        "api_ready_s_max": {},
    }
    ratios = {}
    for store, results in by_store.items():
        for kind, r in results.items():
            key = f"{kind}_{store}"
            metrics["lost_packets"][key] = int(r["lost"])
            metrics["packets_sent"][key] = int(r["sent"])
            metrics["api_ready_s_p50"][key] = round(r["ready_p50"], 3)
            metrics["api_ready_s_max"][key] = round(r["ready_max"], 3)
            ratios[f"api_ready_vs_bare_serf.{key}"] = round(serf_p50 / r["ready_p50"], 3)
    imports = bench_python_import(max(n, 3))
    peers = {
        "bare_serf_rpc_ready_s_p50": round(serf_p50, 3),
        "bare_serf_rpc_ready_s_max": round(max(serf), 3),
        "python_import_agent_s_p50": round(statistics.median(imports), 3),
    }
    params = {
        "restarts_per_kind": n,
        "settle_s": settle,
        "ping_interval_s": 0.04,
        "streams": 2,
        "serf_starts": len(serf),
    }
    return emit(NAME, params, metrics, peers, ratios)


if __name__ == "__main__":
    main()
