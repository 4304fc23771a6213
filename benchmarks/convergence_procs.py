"""Overlay convergence with real processes: one ``libnet-agent`` per test host, as operators run it.

N test hosts, each running its own ``libnet-agent`` process (cluster mode:
its own Serf agent, started and supervised by the agent, joined to host 1,
gossip encrypted) and one more test host running etcd, the shared cluster
store.  The benchmark drives the agents through their HTTP API on their unix
sockets, as the CLI and the plugins do.  Every host first gets a container on
one overlay network; then, per trial, one host connects a new container and
the clock runs from the ``connect`` request until each other host's container
gets an ICMP echo reply from it (:mod:`benchmarks.probe`); the *last* host
counts.  p50 and p99 over the trials, plus the agents' and Serf agents' RSS
(``VmRSS``) once the network is programmed everywhere; and, to see where
the time goes, the ``connect`` request's own time and when the *first*
host reached the container (p50).

Bounded: agents get ``START_TIMEOUT`` seconds to answer, every trial 30 s.
Cleaned up by pid also on failure: the agents (their process groups) and
etcd by their recorded pids, the Serf agents (which outlive an agent by
design) by the pid each agent recorded, the namespaces with the test bed's
prefix, the state directories.  A size whose agents would not fit in the
memory available (``MIB_PER_HOST`` each) is skipped and says so.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import statistics
import subprocess
import tempfile
import time
from typing import Any

from agent.client import AgentError, Client, Unreachable
from benchmarks.common import progress
from benchmarks.memory_bench import rss_mib
from benchmarks.probe import flush_arp, pct, ping_until
from libnet.cluster.serf import new_key
from libnet.testing.agents import AgentProcess
from libnet.testing.cluster import cluster_agent
from libnet.testing.etcd import EtcdServer
from libnet.testing.hosts import Testbed

#: seconds every agent gets to answer its API after the last one was started
START_TIMEOUT = 240.0
#: what one host (agent + Serf agent) is budgeted when checking the memory available
MIB_PER_HOST = 150
#: the agents are started in waves of this many (all at once overloads a 2-core machine)
WAVE = 10


def mem_available_mib() -> float:
    """``MemAvailable`` of ``/proc/meminfo`` in MiB."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def fits(n: int) -> bool:
    """Whether ``n`` hosts fit in the memory available, with a quarter of it left over."""
    return n * MIB_PER_HOST <= 0.75 * mem_available_mib()


async def _call(client: Client, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    return await asyncio.to_thread(client.request, method, url, body)


async def _ready(agents: list[AgentProcess], clients: list[Client], deadline: float) -> None:
    """Wait until every agent answers its API; raise with the log of the first that exits or is late."""
    pending = set(range(len(agents)))
    while pending:
        for i in sorted(pending):
            proc = agents[i].proc
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"agent {agents[i].host.name} exited: {agents[i].log_tail()}")
            if os.path.exists(agents[i].socket):
                try:
                    await _call(clients[i], "GET", "/v1/networks")
                    pending.discard(i)
                except (Unreachable, AgentError):
                    pass
        if pending and time.monotonic() > deadline:
            late = agents[min(pending)]
            raise RuntimeError(f"{len(pending)} agents late, e.g. {late.host.name}: {late.log_tail()}")
        if pending:
            await asyncio.sleep(0.5)


async def _members_alive(client: Client, n: int, deadline: float) -> None:
    """Wait until the agent's Serf agent lists ``n`` members alive."""
    while True:
        nodes = await _call(client, "GET", "/v1/nodes")
        if sum(1 for node in nodes if node.get("status") == "alive") >= n:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Serf cluster did not form: {len(nodes)} members listed, {n} expected")
        await asyncio.sleep(0.5)


def _stop_all(agents: list[AgentProcess]) -> None:
    """SIGTERM every agent at once (by its recorded pid), then wait, bounded (SIGKILL after 20 s)."""
    running = [a.proc for a in agents if a.proc is not None and a.proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for proc in running:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _ip(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).ip)


async def run_procs(n: int, trials: int) -> dict[str, Any]:
    """Convergence over ``n`` agent processes and an etcd cluster store (see the module docstring)."""
    # the state dirs outlive the test bed: its cleanup stops the Serf agents by the pids recorded there
    with tempfile.TemporaryDirectory(prefix="libnet-conv-procs-") as tmp, Testbed(n + 1) as bed:
        bed.pin_underlay_neighbours()
        hosts, store_host = bed.hosts[:n], bed.hosts[n]
        with EtcdServer(netns=store_host.ns, host=store_host.ipv4) as etcd:
            key, first = new_key(), hosts[0].ipv4
            agents = [cluster_agent(bed, h, tmp, etcd.url, key, first, "--log-level", "warning") for h in hosts]
            clients = [Client(a.socket, timeout=30) for a in agents]
            try:
                t_start = time.monotonic()
                for w in range(0, n, WAVE):
                    progress(f"procs n={n}: starting agents {w + 1}-{min(n, w + WAVE)}")
                    for a in agents[w : w + WAVE]:
                        a.proc = a.spawn()
                    await _ready(agents[w : w + WAVE], clients[w : w + WAVE], time.monotonic() + START_TIMEOUT)
                await _members_alive(clients[0], n, time.monotonic() + 60)
                started_s = time.monotonic() - t_start
                progress(f"procs n={n}: {n} agents up and joined in {started_s:.0f} s")
                await _call(
                    clients[0],
                    "POST",
                    "/v1/networks",
                    {"name": "conv", "driver": "overlay", "ipv4_subnet": "198.51.100.0/25"},
                )
                base = []
                for c in clients:
                    sb = await _call(c, "POST", "/v1/sandboxes", {})
                    ep = await _call(c, "POST", "/v1/networks/conv/connect", {"sandbox": sb["id"]})
                    base.append((os.path.basename(sb["netns"]), _ip(ep["ipv4"])))
                progress(f"procs n={n}: warming up the underlay")
                deadline = time.monotonic() + 60
                for i, (ns, _) in enumerate(base):  # every host reaches the next one's container
                    if await ping_until(ns, base[(i + 1) % n][1], deadline, 3000 + i) is None:
                        raise RuntimeError(f"host {hosts[i].name} cannot reach host {hosts[(i + 1) % n].name}")
                rss = [rss_mib(a.proc.pid) for a in agents if a.proc is not None]
                serf = [rss_mib(pid) for pid in (a.serf_pid() for a in agents) if pid is not None]
                reach, first, connected = [], [], []
                for t in range(trials):
                    src = t % n
                    others = [base[i][0] for i in range(n) if i != src]
                    sb = await _call(clients[src], "POST", "/v1/sandboxes", {})
                    t0 = time.monotonic()
                    ep = await _call(clients[src], "POST", "/v1/networks/conv/connect", {"sandbox": sb["id"]})
                    connected.append(time.monotonic() - t0)
                    addr = _ip(ep["ipv4"])
                    probes = (ping_until(ns, addr, t0 + 30, 4000 + i) for i, ns in enumerate(others))
                    got = await asyncio.gather(*probes)
                    missing = sum(1 for g in got if g is None)
                    if missing:
                        raise RuntimeError(f"trial {t + 1}: {missing} hosts never reached the new container in 30 s")
                    reach.append(max(g for g in got if g is not None) - t0)
                    first.append(min(g for g in got if g is not None) - t0)
                    # outside the clock: the hosts share the kernel's one neighbour table (Testbed)
                    await _call(clients[src], "DELETE", f"/v1/sandboxes/{sb['id']}")
                    await asyncio.gather(*(asyncio.to_thread(flush_arp, ns) for ns in others))
                    progress(f"procs n={n} trial {t + 1}/{trials}: reachable {reach[-1] * 1000:.0f} ms")
                return {
                    "reachable_p50_s": pct(reach, 50),
                    "reachable_p99_s": pct(reach, 99),
                    # where the time goes: the connect request itself (on the source host), the first host
                    "connect_p50_s": pct(connected, 50),
                    "first_reachable_p50_s": pct(first, 50),
                    "agents_start_s": round(started_s, 1),
                    "agent_rss_mib_p50": round(statistics.median(rss), 1),
                    "agent_rss_mib_max": max(rss),
                    "serf_rss_mib_p50": round(statistics.median(serf), 1) if serf else None,
                }
            finally:
                _stop_all(agents)
                for a in agents:  # they outlive their agents by design; by recorded pid (the test bed again)
                    a.stop_serf()
