"""The two-host VXLAN overlay built by hand through libnet.kernel only."""

from __future__ import annotations

import pytest

from libnet.kernel.neighbours import FLOOD_MAC, FdbEntry, Neighbour
from libnet.kernel.netlink import Netlink
from libnet.testing.hosts import Testbed

pytestmark = pytest.mark.root

VNI = 4242
SUBNET_V4 = "198.51.100.{}"
SUBNET_V6 = "2001:db8:42::{}"


def _mac(i: int) -> str:
    return f"02:42:c6:33:64:{i:02x}"


def _build_side(bed: Testbed, idx: int, local: str) -> str:
    """Bridge + VXLAN in the host, a veth into a new container namespace."""
    host = bed.hosts[idx - 1]
    container = bed.namespace(f"c{idx}")
    with Netlink(host.ns) as nl:
        nl.add_bridge("br0", mtu=1450)
        nl.add_vxlan("vx0", VNI, local, mtu=1450)
        nl.set_master("vx0", "br0")
        nl.add_veth("veth0", "eth0", peer_ns=container, mtu=1450, peer_mac=_mac(idx))
        nl.set_master("veth0", "br0")
        for link in ("br0", "vx0", "veth0"):
            nl.set_up(link)
    with Netlink(container) as c:
        c.add_address("eth0", SUBNET_V4.format(idx) + "/24")
        c.add_address("eth0", SUBNET_V6.format(idx) + "/64", nodad=True)
        c.set_up("eth0")
    return container


def _program_peer(bed: Testbed, idx: int, peer: int, remote_vtep: str) -> None:
    neighbours = [Neighbour(SUBNET_V4.format(peer), _mac(peer)), Neighbour(SUBNET_V6.format(peer), _mac(peer))]
    fdb = [FdbEntry(_mac(peer), remote_vtep), FdbEntry(FLOOD_MAC, remote_vtep)]
    with Netlink(bed.hosts[idx - 1].ns) as nl:
        nl.replace_neighbours("vx0", neighbours)
        nl.replace_fdb("vx0", fdb)
        assert nl.neighbours("vx0") == sorted(neighbours)
        assert nl.fdb("vx0") == sorted(fdb)


@pytest.mark.parametrize("underlay", [4, 6])
def test_two_host_overlay_pings_v4_and_v6(bed: Testbed, underlay: int) -> None:
    h1, h2 = bed.hosts
    c1 = _build_side(bed, 1, h1.vtep(underlay))
    c2 = _build_side(bed, 2, h2.vtep(underlay))
    _program_peer(bed, 1, 2, h2.vtep(underlay))
    _program_peer(bed, 2, 1, h1.vtep(underlay))

    assert bed.ping(c1, SUBNET_V4.format(2), count=3)
    assert bed.ping(c2, SUBNET_V4.format(1), count=3)
    assert bed.ping(c1, SUBNET_V6.format(2), count=3)
    assert bed.ping(c2, SUBNET_V6.format(1), count=3)


def test_overlay_without_fdb_does_not_reach(bed: Testbed) -> None:
    """Control: with learning off and no FDB entries, nothing crosses."""
    h1, h2 = bed.hosts
    c1 = _build_side(bed, 1, h1.ipv4)
    _build_side(bed, 2, h2.ipv4)
    assert not bed.ping(c1, SUBNET_V4.format(2), count=1, wait=1)
