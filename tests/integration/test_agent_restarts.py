"""The data plane outlives the agent (issue 16): restarts, crashes, an etcd outage and an
upgrade of one host's agent lose no packets between containers on different hosts; a host
that really dies has its peers removed after the grace period and its addresses reused.

Three hosts (h1-h3) with agents in cluster mode (Serf, a real etcd in h4), one overlay
network (IPv4 and IPv6), one container per host.  Continuous ping streams of >= 20 packets/s
(``ping -i 0.04``) run from h1's container to h3's (IPv4 and IPv6) and from h3's to h2's
(IPv4) while h3's agent goes through everything; the losses are counted from the replies'
sequence numbers and printed.

Down times are shortened to keep the test near four minutes: the 10 restarts use a fixed
list of 0-12 s down times (longer than the grace period plus Serf's failure detection where
it matters: 6 s after a SIGTERM, 12 s after a SIGKILL), not random 0-15 s ones.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from libnet.kernel.netns import list_names
from libnet.testing import cluster
from libnet.testing.agents import AgentProcess
from libnet.testing.cluster import PingStream, ip, place, wait_ping
from libnet.testing.etcd import EtcdServer, find_etcd
from libnet.testing.hosts import Testbed, wait_until

pytestmark = pytest.mark.root
GRACE = cluster.GRACE
#: (signal, seconds down) for the 10 restarts of h3's agent
RESTARTS = [
    ("TERM", 0),
    ("KILL", 12),
    ("TERM", 6),
    ("KILL", 0),
    ("TERM", 2),
    ("KILL", 4),
    ("TERM", 1),
    ("KILL", 2),
    ("TERM", 0),
    ("KILL", 1),
]


@pytest.fixture
def bed():
    with Testbed(4) as b:  # h4 holds etcd
        yield b


@pytest.fixture
def etcd(bed: Testbed):
    if find_etcd() is None:
        pytest.skip("no etcd binary: run scripts/install-system-deps")
    with EtcdServer(netns=bed.hosts[3].ns, host=bed.hosts[3].ipv4) as server:
        yield server


def start_agents(bed: Testbed, tmp_path, url: str) -> list[AgentProcess]:
    return cluster.start_agents(bed, str(tmp_path), url, grace=GRACE)


def _fdb_towards(bed: Testbed, host: str, vtep: str) -> list[str]:
    """FDB entries on ``host``'s overlay devices that point at ``vtep``."""
    out = []
    for ns in list_names(f"{bed.prefix}{host}-o"):
        r = bed.run(ns, ["bridge", "fdb", "show", "dev", "vxlan0"])
        out += [line for line in r.stdout.splitlines() if f"dst {vtep} " in line + " "]
    return out


def _health(agent: AgentProcess) -> dict:
    return agent.cli_json("agent", "status")


def test_restarts_outage_and_upgrade_lose_no_packets(bed: Testbed, etcd: EtcdServer, tmp_path) -> None:
    agents = start_agents(bed, tmp_path, etcd.url)
    h3 = agents[2]
    r = agents[0].cli(
        "network", "create", "ov", "--driver", "overlay", "--subnet", "198.51.100.0/25", "--subnet6", "2001:db8:16::/64"
    )
    assert r.returncode == 0, r.stderr
    (c1, _), (_, ep2), (c3, ep3) = (place(a) for a in agents)
    for src, addr in ((c1, ip(ep3["ipv4"])), (c1, ip(ep3["ipv6"])), (c3, ip(ep2["ipv4"]))):
        wait_ping(bed, src, addr)
    serf_pid = h3.serf_pid()
    assert serf_pid is not None
    streams = {
        "h1->h3 IPv4": PingStream(bed, c1, ip(ep3["ipv4"]), str(tmp_path / "ping-13-v4.txt")),
        "h1->h3 IPv6": PingStream(bed, c1, ip(ep3["ipv6"]), str(tmp_path / "ping-13-v6.txt")),
        "h3->h2 IPv4": PingStream(bed, c3, ip(ep2["ipv4"]), str(tmp_path / "ping-32-v4.txt")),
    }
    results: dict[str, tuple[int, int]] = {}
    faults: list[str] = []
    try:
        time.sleep(2)
        # 1. ten restarts of h3's agent: 5 graceful (SIGTERM), 5 crashes (SIGKILL)
        for i, (sig, down) in enumerate(RESTARTS):
            t = time.monotonic()
            if sig == "TERM":
                assert h3.proc is not None
                h3.proc.terminate()
                assert h3.proc.wait(timeout=40) == 0, f"SIGTERM: the agent did not exit 0: {h3.log_tail()}"
            else:
                h3.kill()
            time.sleep(down)
            h3.start()
            print(f"restart {i + 1}: SIG{sig}, down {down}s, back after {time.monotonic() - t:.1f}s")
            if h3.serf_pid() != serf_pid:
                faults.append(f"restart {i + 1}: the Serf agent did not outlive libnet-agent")
        # the host never left the others' view
        nodes = {n["name"]: n["status"] for n in agents[0].cli_json("node", "ls")}
        assert nodes.get("h3") == "alive", nodes

        # 2. an etcd outage of 30 s with a restart of h3's agent in the middle of it
        etcd.stop()
        t0 = time.monotonic()
        time.sleep(10)
        h3.stop()
        time.sleep(2)
        h3.start(timeout=45)  # degraded: from its last known state
        health = _health(h3)
        assert health["status"] == "degraded" and health["cluster_store"] == "unavailable", health
        assert "degraded_since" in health, health
        networks = {n["name"] for n in h3.cli_json("network", "ls")}
        assert "ov" in networks, networks  # reads are served from the local copy
        r = h3.cli("network", "create", "ov-outage", "--driver", "overlay")
        assert r.returncode == 1 and "unreachable" in r.stderr, (r.returncode, r.stderr)
        time.sleep(max(0.0, 30 - (time.monotonic() - t0)))
        etcd.start()
        for a in agents:  # every agent noticed the outage, and every one catches up
            assert wait_until(lambda a=a: _health(a)["status"] == "ok", 40, 0.5), _health(a)
        print(f"etcd outage: {time.monotonic() - t0:.1f}s, h3 restarted degraded in the middle of it")
        # caught up: a write works again, and reads see it
        r = h3.cli("network", "create", "ov-after", "--driver", "overlay", "--subnet", "198.51.100.128/25")
        assert r.returncode == 0, r.stderr
        assert agents[0].cli("network", "rm", "ov-after").returncode == 0

        # 3. an upgrade: stop, start with a changed configuration (the Serf agent's profile
        # changes, so it is restarted cleanly under the same name; the host stays a member)
        h3.stop()
        h3.start(once=("--serf-profile", "local", "--log-level", "debug"))
        health = _health(h3)
        assert health["serf"] == "restarted", health
        assert h3.serf_pid() is not None
        # and a plain restart after it re-attaches to the new Serf agent
        h3.stop()
        h3.start(once=("--serf-profile", "local"))
        assert _health(h3)["serf"] == "attached", _health(h3)
        time.sleep(GRACE + 3)  # any removal of h3's peers elsewhere would have happened by now
    finally:
        for name, stream in streams.items():
            results[name] = stream.stop()
        print()
        for name, (sent, lost) in results.items():
            print(f"ping {name}: {sent} sent in {streams[name].seconds:.0f}s, {lost} lost")
    for name, (sent, lost) in results.items():
        assert sent >= 20 * streams[name].seconds, f"{name}: only {sent} packets in {streams[name].seconds:.0f}s"
        assert lost == 0, f"{name}: {lost} of {sent} packets lost"
    assert not faults, faults
    for a in agents:
        a.stop()


def test_a_host_that_dies_leaves_and_its_addresses_are_reused(bed: Testbed, etcd: EtcdServer, tmp_path) -> None:
    agents = start_agents(bed, tmp_path, etcd.url)
    r = agents[0].cli("network", "create", "ov", "--driver", "overlay", "--subnet", "198.51.100.0/25")
    assert r.returncode == 0, r.stderr
    (c1, _), (c2, _), (_, ep3) = (place(a) for a in agents)
    wait_ping(bed, c1, ip(ep3["ipv4"]))
    wait_ping(bed, c2, ip(ep3["ipv4"]))
    dead = bed.hosts[2]
    assert _fdb_towards(bed, "h1", dead.ipv4)

    # h3 really dies: agent, Serf agent and containers killed, its underlay link removed
    serf_pid = agents[2].serf_pid()
    assert serf_pid is not None
    agents[2].kill()
    agents[2].stop_serf()
    for ns in list_names(f"{bed.prefix}h3-sb-"):
        subprocess.run(["ip", "netns", "delete", ns], check=False)
    bed.run(dead.ns, ["ip", "link", "delete", "eth0"], check=True)
    t = time.monotonic()
    for host in ("h1", "h2"):
        assert wait_until(lambda host=host: not _fdb_towards(bed, host, dead.ipv4), 30 + GRACE, 0.5), (
            f"{host} kept the dead host's peers"
        )
    print(f"the dead host's peers left h1 and h2 {time.monotonic() - t:.1f}s after it died")
    assert not bed.ping(c1, ip(ep3["ipv4"]), wait=1)

    # the operator removes the dead host: its endpoints go, its addresses are free again
    r = agents[0].cli("node", "rm", "h3")
    assert r.returncode == 0, r.stderr
    assert not [e for e in agents[0].cli_json("endpoint", "ls", "--network", "ov") if e["node"] == "h3"]
    _, ep4 = place(agents[1], "ov", "--ip", ip(ep3["ipv4"]))
    assert ip(ep4["ipv4"]) == ip(ep3["ipv4"]) and ep4["mac"] == ep3["mac"]  # the MAC comes from the IP
    wait_ping(bed, c1, ip(ep4["ipv4"]))
    assert not _fdb_towards(bed, "h1", dead.ipv4), "stale entries towards the dead host"
    fdb = bed.run(list_names(f"{bed.prefix}h1-o")[0], ["bridge", "fdb", "show", "dev", "vxlan0"]).stdout
    assert f"{ep4['mac']} dst {bed.hosts[1].ipv4}" in fdb, fdb
    for a in agents[:2]:
        a.stop()
