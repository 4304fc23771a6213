"""Overlay networks through libnet-agents in cluster mode: three hosts, Serf, SQLite or etcd."""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import signal
import time

import pytest

from libnet.cluster.serf import new_key
from libnet.kernel.netns import list_names
from libnet.testing.agents import AgentProcess
from libnet.testing.etcd import EtcdServer, find_etcd
from libnet.testing.hosts import Testbed

pytestmark = pytest.mark.root
GRACE = 2.0


def ip(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).ip)


@pytest.fixture
def bed():
    with Testbed(4) as b:  # h4 holds etcd when a test needs it
        yield b


@contextlib.contextmanager
def cluster_store(kind: str, bed: Testbed, tmp_path):
    if kind == "sqlite":
        yield f"sqlite://{tmp_path}/cluster.db"  # one file, shared by the agents of this machine
        return
    if find_etcd() is None:
        pytest.skip("no etcd binary: run scripts/install-system-deps")
    with EtcdServer(netns=bed.hosts[3].ns, host=bed.hosts[3].ipv4) as etcd:
        yield etcd.url


def start_agents(bed: Testbed, tmp_path, url: str, vtep: int = 4) -> list[AgentProcess]:
    key = new_key()
    agents = []
    first = bed.hosts[0].vtep(vtep)
    for h in bed.hosts[:3]:
        agents.append(
            AgentProcess(
                bed,
                h,
                "--cluster-store",
                url,
                "--advertise",
                h.vtep(vtep),
                "--join",
                f"[{first}]:7946" if vtep == 6 else first,
                "--cluster-key",
                key,
                "--peer-grace-period",
                str(GRACE),
                state_dir=str(tmp_path / h.name),
            ).start()
        )
    return agents


def wait_ping(bed: Testbed, src: str, addr: str, timeout: float = 15) -> float:
    t = time.monotonic()
    while not bed.ping(src, addr, wait=1):
        assert time.monotonic() - t < timeout, f"{src} cannot reach {addr}"
    return time.monotonic() - t


def connect_all(agents: list[AgentProcess]) -> list[tuple[str, dict]]:
    placed = []
    for a in agents:
        sid = a.cli("sandbox", "create").stdout.strip()
        r = a.cli("connect", "ov", sid)
        assert r.returncode == 0, r.stderr
        sb = next(s for s in a.cli_json("sandbox", "ls") if s["id"] == sid)
        ep = next(e for e in a.cli_json("endpoint", "ls", "--network", "ov") if e["sandbox_id"] == sid)
        placed.append((os.path.basename(sb["netns"]), ep))
    return placed


@pytest.mark.parametrize(("store", "vtep"), [("sqlite", 4), ("etcd", 4), ("sqlite", 6)])
def test_overlay_across_agents(bed: Testbed, tmp_path, store: str, vtep: int) -> None:
    with cluster_store(store, bed, tmp_path) as url:
        agents = start_agents(bed, tmp_path, url, vtep)
        try:
            r = agents[0].cli(
                "network",
                "create",
                "ov",
                "--driver",
                "overlay",
                "--subnet",
                "198.51.100.0/25",
                "--subnet6",
                "2001:db8:77::/64",
            )
            assert r.returncode == 0, r.stderr
            placed = connect_all(agents)
            for (src, _), (_, ep) in itertools.permutations(placed, 2):
                wait_ping(bed, src, ip(ep["ipv4"]))
                wait_ping(bed, src, ip(ep["ipv6"]))
            # MTU: the underlay's minus the VXLAN overhead, with no configuration
            out = bed.run(placed[0][0], ["ip", "-o", "link", "show", "eth0"]).stdout
            assert f" mtu {bed.mtu - (70 if vtep == 6 else 50)} " in out, out

            # a second overlay with the same subnet: its own addresses, isolated from the first
            r = agents[0].cli("network", "create", "ov2", "--driver", "overlay", "--subnet", "198.51.100.0/25")
            assert r.returncode == 0, r.stderr
            other = []
            for a in agents[1:]:
                sid = a.cli("sandbox", "create").stdout.strip()
                assert a.cli("connect", "ov2", sid).returncode == 0
                sb = next(s for s in a.cli_json("sandbox", "ls") if s["id"] == sid)
                ep = next(e for e in a.cli_json("endpoint", "ls", "--network", "ov2") if e["sandbox_id"] == sid)
                other.append((os.path.basename(sb["netns"]), ep))
            wait_ping(bed, other[0][0], ip(other[1][1]["ipv4"]))
            taken = {ip(ep["ipv4"]) for _, ep in other}
            only_first = [ip(ep["ipv4"]) for _, ep in placed if ip(ep["ipv4"]) not in taken]
            assert only_first, "the first overlay has an address the second does not"
            for addr in only_first:
                assert not bed.ping(other[0][0], addr, wait=1), f"{addr} of ov reached from ov2"
        finally:
            for a in agents:
                a.stop()


def test_failed_host_peers_go_and_come_back(bed: Testbed, tmp_path) -> None:
    with cluster_store("sqlite", bed, tmp_path) as url:
        agents = start_agents(bed, tmp_path, url)
        try:
            assert (
                agents[0]
                .cli("network", "create", "ov", "--driver", "overlay", "--subnet", "198.51.100.0/25")
                .returncode
                == 0
            )
            placed = connect_all(agents)
            (src, _), (_, ep3) = placed[0], placed[2]
            wait_ping(bed, src, ip(ep3["ipv4"]))
            h3 = bed.hosts[2]
            assert _fdb_towards(bed, "h1", h3.ipv4)

            # the host dies: its agent and its Serf agent are killed
            with open(tmp_path / "h3" / "serf" / "serf.pid") as f:
                serf_pid = int(f.read())
            agents[2].kill()
            with contextlib.suppress(ProcessLookupError):
                os.kill(serf_pid, signal.SIGKILL)
            deadline = time.monotonic() + 20 + GRACE
            while _fdb_towards(bed, "h1", h3.ipv4):
                assert time.monotonic() < deadline, "the failed host's peers were not removed"
                time.sleep(0.5)
            assert not bed.ping(src, ip(ep3["ipv4"]), wait=1)

            # it comes back: re-announced, no duplicate devices, traffic resumes
            agents[2].start()
            wait_ping(bed, src, ip(ep3["ipv4"]), timeout=30)
            overlay_namespaces = [n for n in list_names(f"{bed.prefix}h3-o")]
            assert len(overlay_namespaces) == 1
            assert "vx" not in bed.run(h3.ns, ["ip", "-o", "link"]).stdout  # the VXLAN device moved in
        finally:
            for a in agents:
                a.stop()


def _fdb_towards(bed: Testbed, host: str, vtep: str) -> list[str]:
    """FDB entries on ``host``'s overlay devices that point at ``vtep``."""
    out = []
    for ns in list_names(f"{bed.prefix}{host}-o"):
        r = bed.run(ns, ["bridge", "fdb", "show", "dev", "vxlan0"])
        out += [line for line in r.stdout.splitlines() if f"dst {vtep}" in line]
    return out
