"""Published host ports through an agent: one holder per port, a port a host
process listens on is refused, ``-p CONTAINER`` picks a free one (issue 14, fault 1)."""

from __future__ import annotations

import sys

import pytest

from libnet.testing.agents import AgentProcess
from libnet.testing.hosts import Testbed

pytestmark = pytest.mark.root


@pytest.fixture
def bed():
    with Testbed(1) as b:
        yield b


def test_host_ports_have_one_holder(bed: Testbed, tmp_path) -> None:
    agent = AgentProcess(bed, bed.hosts[0], state_dir=str(tmp_path / "h1")).start()
    listener = bed.spawn(
        bed.hosts[0].ns,
        [
            sys.executable,
            "-c",
            "import socket,time; s=socket.socket(); s.bind(('0.0.0.0', 9090)); s.listen(); time.sleep(60)",
        ],
    )
    try:
        assert agent.cli("network", "create", "front", "--subnet", "198.51.100.0/25").returncode == 0
        sbs = [agent.cli("sandbox", "create").stdout.strip() for _ in range(3)]
        assert agent.cli("connect", "front", sbs[0], "-p", "8080:80").returncode == 0
        r = agent.cli("connect", "front", sbs[1], "-p", "8080:81")
        assert r.returncode == 1 and "already published by endpoint" in r.stderr, r.stderr
        r = agent.cli("connect", "front", sbs[1], "-p", "9090:80", "-p", "9091:80")
        assert r.returncode == 1 and "in use by a process on this host" in r.stderr, r.stderr
        r = agent.cli("connect", "front", sbs[1], "-p", "9092:80", "-p", "9092:81")
        assert r.returncode == 1 and "published twice" in r.stderr, r.stderr
        r = agent.cli("connect", "front", sbs[1], "-p", "198.51.100.200:8081:80")
        assert r.returncode == 1 and "not an address of this host" in r.stderr, r.stderr
        assert agent.cli("connect", "front", sbs[1], "-p", "80").returncode == 0
        [ep] = [e for e in agent.cli_json("endpoint", "ls") if e["sandbox_id"] == sbs[1]]
        assert ep["ports"][0]["host_port"] >= 49153
        rules = bed.run(bed.hosts[0].ns, ["nft", "list", "ruleset"]).stdout
        # the one holder's DNAT (IPv4 and IPv6, prerouting and output), nothing of the refused ones
        assert rules.count("dport 8080") == 4 and "dport 9090" not in rules and "dport 9092" not in rules
    finally:
        listener.kill()
        listener.wait(10)
        agent.stop()


def test_two_agents_on_one_host_do_not_share_a_port(bed: Testbed, tmp_path) -> None:
    """Two agents in one host namespace (each its own store and registry): the second
    may not publish a port the first does; before, its DNAT took the first one's
    traffic.  Read from the other instance's nftables table, which stays untouched."""
    a = AgentProcess(bed, bed.hosts[0], state_dir=str(tmp_path / "a")).start()
    b = AgentProcess(bed, bed.hosts[0], state_dir=str(tmp_path / "b")).start()
    try:
        assert a.cli("network", "create", "front", "--subnet", "198.51.100.0/25", "--no-ipv6").returncode == 0
        assert b.cli("network", "create", "back", "--subnet", "198.51.100.128/25", "--no-ipv6").returncode == 0
        sa = a.cli("sandbox", "create").stdout.strip()
        sb = b.cli("sandbox", "create").stdout.strip()
        assert a.cli("connect", "front", sa, "-p", "8080:80", "-p", "7070:70/udp").returncode == 0
        before = bed.run(bed.hosts[0].ns, ["nft", "list", "ruleset"]).stdout
        for spec in ("8080:80", "0.0.0.0:8080:80", "203.0.113.11:8080:80"):
            r = b.cli("connect", "back", sb, "-p", spec)
            assert r.returncode == 1 and "another libnet instance" in r.stderr, (spec, r.stderr)
        assert bed.run(bed.hosts[0].ns, ["nft", "list", "ruleset"]).stdout == before
        assert b.cli("connect", "back", sb, "-p", "7070:70").returncode == 0  # tcp: the udp port is other
    finally:
        b.stop()
        a.stop()
