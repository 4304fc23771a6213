"""Issue 14, faults 4 and 5 on real test hosts: default pools next to a
full-tunnel VPN's routes, and one sandbox on two networks with the same subnet."""

from __future__ import annotations

import dataclasses
import os

import pytest

from libnet import Controller
from libnet.errors import Conflict
from libnet.testing.agents import AgentProcess
from libnet.testing.hosts import Testbed, host_config
from libnet.testing.pools import agent_flags

pytestmark = pytest.mark.root


def test_default_pools_next_to_vpn_halves(tmp_path) -> None:
    """A full-tunnel VPN's 0.0.0.0/1 + 128.0.0.0/1 are a default route, not a claim on
    every pool (before: "all default IPv4 pools are in use"); explicit subnets inside
    the halves work too, and a real route of the host still blocks its subnet, also
    a default pool's (the first default pool lies under the route: the second serves)."""
    with Testbed(1) as bed:
        host = bed.hosts[0]
        for route in ("0.0.0.0/1", "128.0.0.0/1", "198.51.100.128/25"):
            bed.run(host.ns, ["ip", "route", "add", route, "via", "203.0.113.1"], check=True)
        pools = agent_flags(("198.51.100.128/25", 28), ("198.51.100.64/26", 28))
        agent = AgentProcess(bed, host, *pools, state_dir=str(tmp_path / "h1")).start()
        try:
            r = agent.cli("network", "create", "vpn")
            assert r.returncode == 0, r.stderr
            assert agent.cli_json("network", "inspect", "vpn")[0]["ipv4_subnet"] == "198.51.100.64/28"
            r = agent.cli("network", "create", "explicit", "--subnet", "198.51.100.0/26")
            assert r.returncode == 0, r.stderr
            r = agent.cli("network", "create", "routed", "--subnet", "198.51.100.192/26")
            assert r.returncode == 1 and "198.51.100.128/25" in r.stderr, r.stderr
            sb = agent.cli("sandbox", "create").stdout.strip()
            assert agent.cli("connect", "vpn", sb).returncode == 0
            [ep] = agent.cli_json("endpoint", "ls", "--network", "vpn")
            gw = agent.cli_json("network", "inspect", "vpn")[0]["ipv4_gateway"].split("/")[0]
            assert bed.ping(f"{bed.prefix}h1-sb-{sb}", gw), ep
        finally:
            agent.stop()


async def test_one_sandbox_on_two_networks_with_the_same_subnet(tmp_path) -> None:
    """Overlays may share a subnet (each its own address domain), but not inside one
    sandbox: the kernel would route by whichever route came first (before: DNS said
    198.51.100.3 and another container answered).  Overlay + overlay and overlay +
    bridge are refused with a Conflict naming both networks; so is a second endpoint
    on the same network."""
    with Testbed(1) as bed:
        cfg = host_config(bed, bed.hosts[0], str(tmp_path))
        ctl = await Controller(dataclasses.replace(cfg)).start()
        try:
            # 198.51.100.128/25 is left to the gateway bridge (the test hosts' default pools)
            await ctl.create_network("ova", "overlay", ipv4_subnet="198.51.100.0/25", ipv6_subnet="2001:db8:a::/64")
            await ctl.create_network("ovb", "overlay", ipv4_subnet="198.51.100.0/25", ipv6_subnet="2001:db8:b::/64")
            await ctl.create_network("ovc", "overlay", ipv4_subnet="198.51.100.0/26", ipv6_subnet="2001:db8:c::/64")
            await ctl.create_network("br", "bridge", ipv4_subnet="198.51.100.0/26", ipv6_subnet="2001:db8:d::/64")
            sb = await ctl.create_sandbox()
            await ctl.connect("ova", sb.id)
            before = sorted(os.listdir("/var/run/netns"))
            for other in ("ovb", "ovc", "br"):
                with pytest.raises(Conflict, match=f"network {other} overlaps network ova"):
                    await ctl.connect(other, sb.id)
            with pytest.raises(Conflict, match="already on network ova"):
                await ctl.connect("ova", sb.id, name="again")
            assert sorted(os.listdir("/var/run/netns")) == before
            refused = {(await ctl.network(n)).id for n in ("ovb", "ovc", "br")}
            joined = [e for e in await ctl.endpoints() if e.sandbox_id == sb.id]
            assert not [e for e in joined if e.network_id in refused]
            assert len([e for e in joined if e.network_id == (await ctl.network("ova")).id]) == 1
            # another sandbox may join the same-subnet overlay: the overlap is per sandbox
            other = await ctl.create_sandbox()
            await ctl.connect("ovb", other.id)
        finally:
            await ctl.close()
