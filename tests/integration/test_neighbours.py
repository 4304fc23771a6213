"""Neighbour and FDB programming: dumps show exactly what was programmed."""

from __future__ import annotations

import pytest

from libnet.errors import BadRequest, KernelObjectMissing, NoSuchLink
from libnet.kernel.neighbours import FLOOD_MAC, FdbEntry, Neighbour
from libnet.kernel.netlink import Netlink
from libnet.testing.hosts import Testbed

pytestmark = pytest.mark.root


@pytest.fixture
def vxlan(single: Testbed):
    with Netlink(single.hosts[0].ns) as nl:
        nl.add_vxlan("vx0", 77, single.hosts[0].ipv4)
        nl.set_up("vx0")
        yield nl


def test_neighbour_dump_is_exactly_what_was_programmed(vxlan: Netlink) -> None:
    entries = [
        Neighbour("198.51.100.2", "02:00:c6:33:64:02"),
        Neighbour("198.51.100.3", "02:00:c6:33:64:03"),
        Neighbour("2001:db8:1::2", "02:00:c6:33:64:02"),
    ]
    vxlan.replace_neighbours("vx0", entries)
    assert vxlan.neighbours("vx0") == sorted(entries)
    # replace semantics: a new MAC for a known IP overwrites, no duplicate
    moved = Neighbour("198.51.100.3", "02:00:00:00:00:99")
    vxlan.replace_neighbours("vx0", [moved])
    assert vxlan.neighbours("vx0") == sorted([entries[0], moved, entries[2]])
    vxlan.delete_neighbours("vx0", [entries[0]])
    vxlan.delete_neighbours("vx0", [entries[0]])  # gone: success
    assert vxlan.neighbours("vx0") == sorted([moved, entries[2]])
    assert vxlan.flush_neighbours("vx0") == 2
    assert vxlan.neighbours("vx0") == []


def test_fdb_dump_is_exactly_what_was_programmed(vxlan: Netlink) -> None:
    entries = [
        FdbEntry("02:00:c6:33:64:02", "203.0.113.12"),
        FdbEntry("02:00:c6:33:64:03", "203.0.113.13"),
        FdbEntry(FLOOD_MAC, "203.0.113.12"),
        FdbEntry(FLOOD_MAC, "203.0.113.13"),
    ]
    vxlan.replace_fdb("vx0", entries)
    vxlan.replace_fdb("vx0", entries)  # idempotent, flood entries not doubled
    assert vxlan.fdb("vx0") == sorted(entries)
    # a MAC that moved to another VTEP replaces its entry
    moved = FdbEntry("02:00:c6:33:64:03", "203.0.113.14")
    vxlan.replace_fdb("vx0", [moved])
    assert vxlan.fdb("vx0") == sorted([entries[0], moved, entries[2], entries[3]])
    vxlan.delete_fdb("vx0", [entries[2]])
    vxlan.delete_fdb("vx0", [entries[2]])  # gone: success
    assert vxlan.fdb("vx0") == sorted([entries[0], moved, entries[3]])
    vxlan.flush_fdb("vx0")
    assert vxlan.fdb("vx0") == []


def test_ipv6_vteps_and_bulk(vxlan: Netlink, single: Testbed) -> None:
    vxlan.add_vxlan("vx6", 78, single.hosts[0].ipv6)
    n = 3000  # more than one chunk
    neigh = [Neighbour(f"2001:db8:5::{i:x}", f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}") for i in range(1, n + 1)]
    fdb = [FdbEntry(e.mac, f"2001:db8:ffff::{(i % 50) + 1:x}") for i, e in enumerate(neigh)]
    vxlan.replace_neighbours("vx6", neigh)
    vxlan.replace_fdb("vx6", fdb)
    assert vxlan.neighbours("vx6") == sorted(neigh)
    assert vxlan.fdb("vx6") == sorted(fdb)
    vxlan.delete_fdb("vx6", fdb[:1000])
    assert len(vxlan.fdb("vx6")) == n - 1000
    vxlan.delete_neighbours("vx6", neigh)
    assert vxlan.neighbours("vx6") == []
    # an IPv6 VTEP on a device with an IPv4 local address is refused, loudly
    with pytest.raises(BadRequest):
        vxlan.replace_fdb("vx0", fdb[:1])


def test_errors_name_the_failing_entry(vxlan: Netlink) -> None:
    with pytest.raises(KernelObjectMissing) as err:
        vxlan.replace_neighbours(99999, [Neighbour("198.51.100.9", "02:00:00:00:00:09")] * 3)
    assert err.value.ids["entry"].ip == "198.51.100.9" and err.value.ids["failed"] == 3


def test_programming_by_name_does_not_dump_links(vxlan: Netlink, monkeypatch) -> None:
    """A link's index comes from one ioctl, not pyroute2's link_lookup (which dumps and parses every
    link: ~2 ms per call, four calls per peer change on every host of a converging overlay)."""

    class NoDumps:
        def link_lookup(self, **kw: object) -> None:
            raise AssertionError("link_lookup dumped the links")

    monkeypatch.setattr(Netlink, "ipr", property(lambda self: NoDumps()))
    entry = FdbEntry("02:00:c6:33:64:09", "203.0.113.19")
    vxlan.replace_fdb("vx0", [entry])
    assert entry in vxlan.fdb("vx0")
    with pytest.raises(NoSuchLink):
        vxlan.replace_fdb("nosuch0", [entry])


def test_flush_arp_drops_learned_entries_and_keeps_permanent_ones(bed: Testbed) -> None:
    """The convergence benchmarks' ARP flush between trials: all test hosts share the kernel's one
    neighbour table, and learned entries left behind fill it (gc_thresh3) until new ones fail."""
    from benchmarks.probe import flush_arp

    h1, h2 = bed.hosts
    assert bed.ping(h1.ns, h2.ipv4, count=3)
    pinned = Neighbour("203.0.113.250", "02:00:00:00:00:fa")
    with Netlink(h1.ns) as nl:
        nl.replace_neighbours(h1.ifname, [pinned])
    learned = bed.run(h1.ns, ["ip", "-4", "neigh", "show", "dev", h1.ifname, h2.ipv4], check=True).stdout
    assert h2.ipv4 in learned  # the ping made a learned entry

    flush_arp(h1.ns)  # the test host's eth0, as a container's

    left = bed.run(h1.ns, ["ip", "-4", "neigh", "show", "dev", h1.ifname], check=True).stdout
    assert h2.ipv4 not in left
    with Netlink(h1.ns) as nl:
        assert nl.neighbours(h1.ifname) == [pinned]  # programmed entries stay
