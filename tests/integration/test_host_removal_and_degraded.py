"""What a breaker found after issue 16's first pass, on three real hosts (Serf, etcd):

- ``node rm`` of a host that is only restarting (failed, but not past the grace
  period) deleted its live container's endpoint, and its address was handed out
  again; a host name in another case matched nothing and "removed" nothing;
- a ``sandbox rm`` refused with 503 while the cluster store was down was carried
  out anyway when the store came back (the local ``removing`` mark rolled forward);
- an upgrade that changes ``--advertise`` made the other hosts see a name
  conflict and drop the host's peers (the old Serf member never left).
"""

from __future__ import annotations

import json
import os
import time

import pytest

from libnet.testing import cluster
from libnet.testing.agents import AgentProcess
from libnet.testing.cluster import PingStream, ip, place, wait_ping
from libnet.testing.etcd import EtcdServer, find_etcd
from libnet.testing.hosts import Testbed, wait_until

pytestmark = pytest.mark.root
GRACE = cluster.GRACE


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


def _status(agent: AgentProcess, node: str) -> str:
    return next((n["status"] for n in agent.cli_json("node", "ls") if n["name"] == node), "")


def test_node_rm_waits_for_the_grace_period(bed: Testbed, etcd: EtcdServer, tmp_path) -> None:
    agents = cluster.start_agents(bed, str(tmp_path), etcd.url, grace=GRACE)
    try:
        assert (
            agents[0].cli("network", "create", "ov", "--driver", "overlay", "--subnet", "198.51.100.0/25").returncode
            == 0
        )
        (c1, _), _, (_, ep3) = (place(a) for a in agents)
        wait_ping(bed, c1, ip(ep3["ipv4"]))
        r = agents[0].cli("node", "rm", "H3")  # h3 in another case: still h3, and alive
        assert r.returncode == 1 and "alive" in r.stderr, r.stderr
        # h3 "reboots": agent and Serf gone, the container keeps running
        agents[2].kill()
        agents[2].stop_serf()
        assert wait_until(lambda: _status(agents[0], "h3") == "failed", 30, 0.5)
        r = agents[0].cli("node", "rm", "h3")
        assert r.returncode == 1 and "grace period" in r.stderr, r.stderr
        assert [e for e in agents[0].cli_json("endpoint", "ls", "--network", "ov") if e["node"] == "h3"]
        # back within the grace period: nothing was lost
        agents[2].start()
        wait_ping(bed, c1, ip(ep3["ipv4"]))
        # gone for good: after the grace period the removal is allowed
        agents[2].kill()
        agents[2].stop_serf()
        assert wait_until(lambda: _status(agents[0], "h3") == "failed", 30, 0.5)
        time.sleep(GRACE + 2)
        r = agents[0].cli("node", "rm", "h3")
        assert r.returncode == 0, r.stderr
    finally:
        for a in agents:
            a.stop()
            a.stop_serf()


def test_a_refused_sandbox_rm_stays_refused_after_the_store_returns(bed: Testbed, etcd: EtcdServer, tmp_path) -> None:
    agents = cluster.start_agents(bed, str(tmp_path), etcd.url, grace=GRACE)
    try:
        assert (
            agents[0].cli("network", "create", "ov", "--driver", "overlay", "--subnet", "198.51.100.0/25").returncode
            == 0
        )
        (c1, _), _, (c3, ep3) = (place(a) for a in agents)
        wait_ping(bed, c1, ip(ep3["ipv4"]))
        sid = ep3["sandbox_id"]
        etcd.stop()
        r = agents[2].cli("sandbox", "rm", sid)
        assert r.returncode == 1 and "unreachable" in r.stderr, r.stderr
        etcd.start()
        assert wait_until(lambda: _health_ok(agents[2]), 60, 1)
        time.sleep(3)  # catch-up: re-read and reconcile
        assert sid in [s["id"] for s in agents[2].cli_json("sandbox", "ls")]
        assert os.path.exists(f"/run/netns/{c3}")
        wait_ping(bed, c1, ip(ep3["ipv4"]), timeout=5)
    finally:
        for a in agents:
            a.stop()
            a.stop_serf()


def _health_ok(agent: AgentProcess) -> bool:
    r = agent.cli("agent", "status", "--json")
    return r.returncode == 0 and json.loads(r.stdout).get("cluster_store") == "ok"


def test_a_changed_advertise_address_loses_no_packets(bed: Testbed, etcd: EtcdServer, tmp_path) -> None:
    agents = cluster.start_agents(bed, str(tmp_path), etcd.url, grace=GRACE)
    try:
        assert (
            agents[0].cli("network", "create", "ov", "--driver", "overlay", "--subnet", "198.51.100.0/25").returncode
            == 0
        )
        (c1, _), _, (_, ep3) = (place(a) for a in agents)
        wait_ping(bed, c1, ip(ep3["ipv4"]))
        h3 = bed.hosts[2]
        bed.run(h3.ns, ["ip", "addr", "add", "203.0.113.113/24", "dev", "eth0"], check=True)
        stream = PingStream(bed, c1, ip(ep3["ipv4"]), str(tmp_path / "ping.txt"))
        time.sleep(1)
        agents[2].stop()
        upgraded = AgentProcess(
            bed,
            h3,
            *[a if a != h3.ipv4 else "203.0.113.113" for a in agents[2].extra],
            state_dir=agents[2].dir,
        )
        agents[2] = upgraded.start()
        time.sleep(GRACE + 8)  # past the grace period and Serf's failure detection
        sent, lost = stream.stop()
        print(f"advertise change: {sent} sent, {lost} lost")
        assert _status(agents[0], "h3") == "alive"
        # before: the host was cut off past the grace period (387 of 642 lost).  Now the old
        # member leaves first and the peers stay; the other hosts re-point their FDB entries
        # to the new VTEP address, and a packet or two in flight at that switch may be lost
        assert lost <= 5, (sent, lost)
    finally:
        for a in agents:
            a.stop()
            a.stop_serf()
