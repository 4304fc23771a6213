"""The overlay peer table derives exactly the entries a VXLAN device needs."""

from __future__ import annotations

from libnet.drivers.overlay.peerdb import Peer, PeerTable
from libnet.kernel.neighbours import FLOOD_MAC, FdbEntry, Neighbour


def peer(eid: str, ip: str, vtep: str, node: str, nid: str = "net1") -> Peer:
    last = ip.rsplit(".", 1)[1]
    return Peer(eid, nid, f"02:42:c6:33:64:{int(last):02x}", vtep, node, f"{ip}/24", f"2001:db8:1::{last}/64")


def test_entries_per_network_and_flood_per_vtep() -> None:
    t = PeerTable("h1")
    assert not t.set(peer("local", "198.51.100.2", "203.0.113.11", "h1"))  # own endpoints are no peers
    assert t.set(peer("e2", "198.51.100.3", "203.0.113.12", "h2"))
    assert t.set(peer("e3", "198.51.100.4", "203.0.113.12", "h2"))
    assert t.set(peer("e4", "198.51.100.5", "203.0.113.13", "h3"))
    assert not t.set(peer("e4", "198.51.100.5", "203.0.113.13", "h3"))  # unchanged
    e = t.entries("net1")
    assert Neighbour("198.51.100.3", "02:42:c6:33:64:03") in e.neighbours
    assert Neighbour("2001:db8:1::3", "02:42:c6:33:64:03") in e.neighbours
    assert len(e.neighbours) == 6
    assert {f for f in e.fdb if f.mac == FLOOD_MAC} == {
        FdbEntry(FLOOD_MAC, "203.0.113.12"),
        FdbEntry(FLOOD_MAC, "203.0.113.13"),
    }
    assert FdbEntry("02:42:c6:33:64:05", "203.0.113.13") in e.fdb


def test_address_moves_to_another_host() -> None:
    t = PeerTable("h1")
    t.set(peer("old", "198.51.100.3", "203.0.113.12", "h2"))
    t.remove("net1", "old")
    t.set(peer("new", "198.51.100.3", "203.0.113.13", "h3"))  # the address was reused elsewhere
    assert t.entries("net1").fdb == {FdbEntry("02:42:c6:33:64:03", "203.0.113.13"), FdbEntry(FLOOD_MAC, "203.0.113.13")}


def test_node_failure_and_anti_entropy() -> None:
    t = PeerTable("h1")
    t.set(peer("e2", "198.51.100.3", "203.0.113.12", "h2"))
    t.set(peer("e9", "198.51.100.9", "203.0.113.12", "h2", nid="net2"))
    t.set(peer("e4", "198.51.100.4", "203.0.113.13", "h3"))
    assert sorted(t.remove_node("h2")) == ["net1", "net2"]
    assert {p.endpoint_id for p in t.peers("net1")} == {"e4"}
    t.replace_network(
        "net1", [peer("e5", "198.51.100.5", "203.0.113.14", "h4"), peer("mine", "198.51.100.6", "203.0.113.11", "h1")]
    )
    assert [p.endpoint_id for p in t.peers("net1")] == ["e5"]
    t.drop_network("net2")
    assert t.networks() == ["net1"]


def test_entries_parse_each_address_once_across_changes(monkeypatch) -> None:
    """Every peer change re-derives a network's entries on every host (convergence_bench: 30 hosts,
    ipaddress parsing was a third of the CPU): an address already seen is not parsed again."""
    import ipaddress

    parsed = []
    real = ipaddress.ip_interface
    monkeypatch.setattr(ipaddress, "ip_interface", lambda s: parsed.append(s) or real(s))
    t = PeerTable("h1")
    for i in range(30):
        t.set(peer(f"e{i}", f"198.51.100.{100 + i}", "203.0.113.12", "h2", nid="net-parse-once"))
        t.entries("net-parse-once")
    assert len(parsed) <= 60  # one v4 and one v6 address per peer, not 2 x 30 x 31 / 2
