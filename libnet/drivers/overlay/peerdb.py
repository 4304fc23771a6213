"""The overlay peer table: desired neighbour and FDB state per network (pure).

A peer is a remote endpoint: its addresses, its MAC (derived from its IPv4,
so a reused address never meets a stale MAC) and the VTEP of its host.  From
the peers of one network, :meth:`PeerTable.entries` derives exactly what the
network's VXLAN device must hold:

- a permanent neighbour entry per address (IPv4 and IPv6) -> MAC, so the
  device answers ARP and ND itself (proxy) and nothing is flooded to learn;
- an FDB entry MAC -> VTEP per peer;
- one all-zero flood entry per remote VTEP, so broadcast reaches every host
  that has endpoints on the network.

Local endpoints are not peers: they sit on the local bridge.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from libnet.kernel.neighbours import FLOOD_MAC, FdbEntry, Neighbour
from libnet.model import address_of


@dataclass(frozen=True)
class Peer:
    """A remote endpoint as its host announced it."""

    endpoint_id: str
    network_id: str
    mac: str
    vtep: str
    node: str
    ipv4: str | None = None  # interface CIDR
    ipv6: str | None = None
    # for DNS: what the endpoint answers to, and the services it offers ("http:80/tcp")
    name: str = ""
    aliases: tuple[str, ...] = ()
    services: tuple[str, ...] = ()

    def to_data(self) -> dict[str, Any]:
        return {
            "endpoint_id": self.endpoint_id,
            "network_id": self.network_id,
            "mac": self.mac,
            "vtep": self.vtep,
            "node": self.node,
            "ipv4": self.ipv4,
            "ipv6": self.ipv6,
            "name": self.name,
            "aliases": list(self.aliases),
            "services": list(self.services),
        }

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> Peer:
        return cls(
            d["endpoint_id"],
            d["network_id"],
            d["mac"],
            d["vtep"],
            d["node"],
            d.get("ipv4"),
            d.get("ipv6"),
            d.get("name") or "",
            tuple(d.get("aliases") or ()),
            tuple(d.get("services") or ()),
        )


@dataclass
class Entries:
    """What a VXLAN device should hold."""

    neighbours: set[Neighbour] = field(default_factory=set)
    fdb: set[FdbEntry] = field(default_factory=set)


class PeerTable:
    """The peers of every network this host has endpoints on, minus its own."""

    def __init__(self, local_node: str) -> None:
        self.local_node = local_node
        self._peers: dict[str, dict[str, Peer]] = {}  # network id -> endpoint id -> peer
        #: hosts reported failed (after the grace period): their peers stay out,
        #: also when the store still lists them, until the host is back
        self.blocked: set[str] = set()
        #: network id -> the only addresses its device may send to (encrypted networks: this host's
        #: tunnel range, which the fail-closed route covers); peers with a VTEP outside stay known, unreached
        self.confined: dict[str, ipaddress.IPv4Network | ipaddress.IPv6Network] = {}

    def networks(self) -> list[str]:
        return list(self._peers)

    def peers(self, network_id: str) -> list[Peer]:
        return list(self._peers.get(network_id, {}).values())

    def set(self, peer: Peer) -> bool:
        """Add or replace a peer; False if nothing changed (or it is local)."""
        if peer.node == self.local_node or peer.node in self.blocked:
            return False
        table = self._peers.setdefault(peer.network_id, {})
        if table.get(peer.endpoint_id) == peer:
            return False
        table[peer.endpoint_id] = peer
        return True

    def remove(self, network_id: str, endpoint_id: str) -> bool:
        return self._peers.get(network_id, {}).pop(endpoint_id, None) is not None

    def replace_network(self, network_id: str, peers: list[Peer]) -> None:
        """The whole peer set of a network at once (anti-entropy from the store)."""
        self._peers[network_id] = {
            p.endpoint_id: p for p in peers if p.node != self.local_node and p.node not in self.blocked
        }

    def drop_network(self, network_id: str) -> None:
        self._peers.pop(network_id, None)
        self.confined.pop(network_id, None)

    def remove_node(self, node: str) -> list[str]:
        """Forget every peer of a host (failed or left); returns the networks touched."""
        touched = []
        for nid, table in self._peers.items():
            gone = [eid for eid, p in table.items() if p.node == node]
            for eid in gone:
                del table[eid]
            if gone:
                touched.append(nid)
        return touched

    def entries(self, network_id: str) -> Entries:
        out = Entries()
        scope = self.confined.get(network_id)
        for p in self._peers.get(network_id, {}).values():
            if scope is not None and not _within(p.vtep, scope):
                continue  # an encrypted network's VXLAN to it would leave in clear where nftables is flushed
            for cidr in (p.ipv4, p.ipv6):
                if cidr:
                    out.neighbours.add(Neighbour(address_of(cidr), p.mac))
            out.fdb.add(FdbEntry(p.mac, p.vtep))
            out.fdb.add(FdbEntry(FLOOD_MAC, p.vtep))
        return out


def _within(address: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    try:
        return ipaddress.ip_address(address) in net
    except ValueError:
        return False
