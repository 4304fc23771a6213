"""Subnets through a real agent in a test host (issue 14, Deliver 3 and 4): a
subnet holding the host's own uplink address is refused naming the address and
interface, even with the override; a subnet over a host route is refused naming
the route and the override, and accepted with it; ``--ip-range`` and
``--aux-address`` shape what is handed out."""

from __future__ import annotations

import ipaddress

import pytest

from libnet.testing.agents import AgentProcess
from libnet.testing.hosts import Testbed

pytestmark = pytest.mark.root


@pytest.fixture
def bed():
    with Testbed(1) as b:
        yield b


def test_host_addresses_routes_ranges_and_aux(bed: Testbed, tmp_path) -> None:
    host = bed.hosts[0]
    # a route of the test host (inside its namespace only) that holds no address of the host
    bed.run(host.ns, ["ip", "route", "add", "198.51.100.0/25", "via", "203.0.113.99"], check=True)
    agent = AgentProcess(bed, host, state_dir=str(tmp_path / "h1")).start()
    try:
        for extra in ((), ("--allow-route-overlap",)):
            r = agent.cli("network", "create", "uplink", "--subnet", "203.0.113.0/24", *extra)
            assert r.returncode == 1, r.stdout
            assert f"contains {host.ipv4}, an address of this host (eth0)" in r.stderr, r.stderr
        r = agent.cli("network", "create", "uplink6", "--subnet6", "2001:db8:ffff::/64", "--allow-route-overlap")
        assert r.returncode == 1 and f"contains {host.ipv6}, an address of this host (eth0)" in r.stderr, r.stderr
        r = agent.cli("network", "create", "bad", "--subnet", "127.0.0.0/8")
        assert r.returncode == 1 and "loopback" in r.stderr, r.stderr
        r = agent.cli("network", "create", "bad", "--subnet", "198.51.100.0/24", "--gateway", "198.51.100.255")
        assert r.returncode == 1 and "broadcast address" in r.stderr, r.stderr

        args = ["network", "create", "over", "--subnet", "198.51.100.0/24", "--no-ipv6"]
        args += ["--ip-range", "198.51.100.128/25", "--aux-address", "router=198.51.100.10"]
        args += ["--aux-address", "printer=198.51.100.130"]
        r = agent.cli(*args)
        assert r.returncode == 1, r.stdout
        assert "route to 198.51.100.0/25" in r.stderr and "--allow-route-overlap" in r.stderr, r.stderr
        assert agent.cli_json("network", "ls") == []
        r = agent.cli(*args, "--allow-route-overlap")
        assert r.returncode == 0, r.stderr
        [nw] = agent.cli_json("network", "inspect", "over")
        assert nw["ipv4_range"] == "198.51.100.128/25"
        assert nw["aux_addresses"] == {"router": "198.51.100.10", "printer": "198.51.100.130"}
        shown = agent.cli("network", "inspect", "over").stdout
        assert "ip range 198.51.100.128/25" in shown and "router=198.51.100.10" in shown, shown

        sbs = [agent.cli("sandbox", "create").stdout.strip() for _ in range(3)]
        for sb in sbs:
            r = agent.cli("connect", "over", sb)
            assert r.returncode == 0, r.stderr
        got = sorted(
            (ipaddress.ip_interface(e["ipv4"]).ip for e in agent.cli_json("endpoint", "ls") if e["ipv4"]),
        )
        assert [str(a) for a in got] == ["198.51.100.129", "198.51.100.131", "198.51.100.132"]
        r = agent.cli("connect", "over", agent.cli("sandbox", "create").stdout.strip(), "--ip", "198.51.100.10")
        assert r.returncode == 1 and "reserved as auxiliary address 'router'" in r.stderr, r.stderr
        other = agent.cli("sandbox", "create").stdout.strip()
        r = agent.cli("connect", "over", other, "--ip", "198.51.100.20")  # outside the range, inside the subnet
        assert r.returncode == 0, r.stderr
        assert bed.ping(host.ns, "198.51.100.129")
    finally:
        agent.stop()
