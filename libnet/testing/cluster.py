"""Agents in cluster mode on test hosts, containers on an overlay, and ping streams between them.

Shared by the restart and etcd-cluster tests and by ``benchmarks.restart_bench``:
:func:`start_agents` (Serf, a cluster store, a short peer grace period),
:func:`place` (a container on a network), :func:`wait_ping`, and
:class:`PingStream` (``ping -i 0.04`` from a container, losses counted from the
replies' sequence numbers).
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
import time
from typing import Any

from libnet.testing.agents import AgentProcess
from libnet.testing.hosts import Host, Testbed

#: seconds a failed host's peers stay (``--peer-grace-period``) in these tests
GRACE = 3.0


def ip(cidr: str) -> str:
    """The address of ``198.51.100.2/24``."""
    return str(ipaddress.ip_interface(cidr).ip)


def start_agents(
    bed: Testbed,
    state_root: str,
    url: str,
    hosts: list[Host] | None = None,
    grace: float = GRACE,
    extra: tuple[str, ...] = (),
) -> list[AgentProcess]:
    """One agent per host (default: the first three), with cluster store ``url``, joined over Serf
    (``extra``: more arguments for every agent)."""
    from libnet.cluster.serf import new_key

    hosts = bed.hosts[:3] if hosts is None else hosts
    key, first = new_key(), hosts[0].ipv4
    extra = ("--peer-grace-period", str(grace), *extra)
    return [cluster_agent(bed, h, state_root, url, key, first, *extra).start() for h in hosts]


def cluster_agent(
    bed: Testbed, host: Host, state_root: str, url: str, key: str, first: str, *extra: str
) -> AgentProcess:
    """An agent (not started) on ``host`` in cluster mode: cluster store ``url``, advertising the
    host's IPv4 underlay address, joining ``first`` with cluster key ``key``; state under
    ``state_root/<host name>``; ``extra``: more arguments."""
    return AgentProcess(
        bed,
        host,
        "--cluster-store",
        url,
        "--advertise",
        host.ipv4,
        "--join",
        first,
        "--cluster-key",
        key,
        *extra,
        state_dir=os.path.join(state_root, host.name),
    )


def place(agent: AgentProcess, network: str = "ov", *extra: str) -> tuple[str, dict[str, Any]]:
    """A new container on ``network``: (its namespace name, its endpoint)."""
    sid = agent.cli("sandbox", "create").stdout.strip()
    r = agent.cli("connect", network, sid, *extra)
    assert r.returncode == 0, r.stderr
    sb = next(s for s in agent.cli_json("sandbox", "ls") if s["id"] == sid)
    ep = next(e for e in agent.cli_json("endpoint", "ls", "--network", network) if e["sandbox_id"] == sid)
    return os.path.basename(sb["netns"]), ep


def wait_ping(bed: Testbed, src: str, addr: str, timeout: float = 20) -> None:
    """Wait until ``addr`` answers a ping from namespace ``src``."""
    deadline = time.monotonic() + timeout
    while not bed.ping(src, addr, wait=1):
        assert time.monotonic() < deadline, f"{src} cannot reach {addr}"


class PingStream:
    """``ping -i 0.04`` from a container; losses counted from the replies' sequence numbers."""

    def __init__(self, bed: Testbed, ns: str, addr: str, out: str) -> None:
        self.addr, self.out = addr, out
        self.started = time.monotonic()
        self.seconds = 0.0
        with open(out, "wb") as f:  # -i 0.04: at least 20/s also when the timer slips under load
            self.proc = bed.spawn(ns, ["ping", "-n", "-i", "0.04", addr], stdout=f, stderr=subprocess.STDOUT)

    def stop(self) -> tuple[int, int]:
        """(sent, lost); a request still in flight when stopped is not counted as lost."""
        self.seconds = time.monotonic() - self.started
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            self.proc.wait(timeout=10)
        with open(self.out, errors="replace") as f:
            text = f.read()
        m = re.search(r"(\d+) packets transmitted", text)
        assert m, f"no ping summary: {text[-500:]}"
        sent = int(m.group(1))
        seen = {int(s) for s in re.findall(r"icmp_seq=(\d+) ", text)}
        lost = [s for s in range(1, sent + 1) if s not in seen]
        if lost and lost[-1] == sent:  # the last request: in flight when ping stopped
            lost.pop()
            sent -= 1
        return sent, len(lost)
