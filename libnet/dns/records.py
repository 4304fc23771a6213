"""DNS records of libnet's networks (pure: no sockets, no I/O).

Per network, an endpoint answers to its name, to ``name.network`` and to each
of its aliases (several endpoints sharing an alias form a round-robin set),
with its IPv4 and IPv6 addresses; its addresses answer PTR queries with
``name.network``; each service it declares (``"http:80/tcp"``) answers SRV
queries for ``_http._tcp.<name or alias>[.network]``.

Entries come from two sources: endpoints joined on this host (the
controller) and remote endpoints of overlay networks (the overlay driver's
peer table, i.e. its peer events).  A sandbox sees only the networks it is
on: every lookup takes that *view*, a set of network ids.

Whether a name is libnet's is decided from the view alone, never from what
else the host knows: a name is ours when it is a view network's name or lies
under it (``x.mynet``), when it is a name or alias of an endpoint on a view
network, or when it is a reverse name inside a view network's subnet.  So a
network called ``dev`` that the asking sandbox is not on hides nothing
(``go.dev`` goes upstream), and the same question gets the same answer
whatever other sandboxes joined or left.  Whether the view may forward at all
is decided from the same networks: only if one of them gives a way out
(not ``internal``).
"""

from __future__ import annotations

import ipaddress
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from libnet.errors import InvalidOption
from libnet.model import address_of

_SERVICE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9-]{0,62}):(\d{1,5})(?:/(tcp|udp|sctp))?$")


@dataclass(frozen=True)
class Service:
    """A service an endpoint offers, published as an SRV record."""

    name: str
    port: int
    protocol: str = "tcp"

    def __str__(self) -> str:
        return f"{self.name}:{self.port}/{self.protocol}"


def parse_service(spec: str) -> Service:
    """``"http:80/tcp"`` (protocol defaults to tcp) -> :class:`Service`; :class:`InvalidOption` otherwise."""
    m = _SERVICE.match(spec) if isinstance(spec, str) else None
    if m is None or not 0 < int(m.group(2)) < 65536:
        raise InvalidOption(f"invalid service {spec!r}: NAME:PORT[/tcp|udp|sctp], e.g. http:80/tcp", service=str(spec))
    return Service(m.group(1).lower(), int(m.group(2)), m.group(3) or "tcp")


@dataclass(frozen=True)
class Entry:
    """One endpoint as DNS sees it.  ``ipv4``/``ipv6`` are bare addresses."""

    endpoint_id: str
    network_id: str
    name: str
    ipv4: str | None = None
    ipv6: str | None = None
    aliases: tuple[str, ...] = ()
    services: tuple[Service, ...] = ()

    @classmethod
    def build(
        cls,
        endpoint_id: str,
        network_id: str,
        name: str,
        ipv4: str | None,
        ipv6: str | None,
        aliases: Iterable[str] = (),
        services: Iterable[str] = (),
    ) -> Entry:
        """From stored forms: interface CIDRs, service specs."""

        def bare(cidr: str | None) -> str | None:
            return address_of(cidr) if cidr else None

        return cls(
            endpoint_id,
            network_id,
            name.lower(),
            bare(ipv4),
            bare(ipv6),
            tuple(a.lower() for a in aliases),
            tuple(parse_service(s) for s in services),
        )

    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


Subnet = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class _Network:
    name: str
    subnets: list[Subnet] = field(default_factory=list)
    #: containers on it have a way out (not ``internal``): names may be forwarded upstream
    external: bool = True


class Records:
    """All entries this host knows, indexed for the resolver.  Listeners are
    called (with no argument) after every change, so caches can be dropped."""

    def __init__(self) -> None:
        self._networks: dict[str, _Network] = {}
        self._given: dict[str, tuple[str, tuple[str, ...], bool]] = {}  # set_network's arguments, as given
        self._network_ids: dict[str, str] = {}  # name -> id
        self._entries: dict[str, Entry] = {}
        self._by_name: dict[tuple[str, str], list[Entry]] = defaultdict(list)  # (network id, name)
        self._by_ip: dict[str, list[Entry]] = defaultdict(list)
        self._remote: dict[str, set[str]] = defaultdict(set)  # network id -> remote endpoint ids
        self.listeners: list[Callable[[], None]] = []

    # --- changes ------------------------------------------------------------

    def set_network(
        self, network_id: str, name: str, subnets: Iterable[str | None] = (), external: bool = True
    ) -> None:
        """Make a network known: its name is a domain, its subnets' reverse zones are
        libnet's (for sandboxes on it); ``external=False`` for an internal network."""
        given = (name, tuple(s for s in subnets if s), external)
        if self._given.get(network_id) == given:  # every join says it again: no parsing then
            return
        old = self._networks.get(network_id)
        nets = [ipaddress.ip_network(s, strict=False) for s in given[1]]
        new = _Network(name.lower(), nets, external)
        if old == new:
            self._given[network_id] = given
            return
        if old is not None:
            self._network_ids.pop(old.name, None)
        self._networks[network_id] = new
        self._network_ids[name.lower()] = network_id
        self._given[network_id] = given
        self._changed()

    def remove_network(self, network_id: str) -> None:
        old = self._networks.pop(network_id, None)
        self._given.pop(network_id, None)
        if old is not None:
            self._network_ids.pop(old.name, None)
            for e in [e for e in self._entries.values() if e.network_id == network_id]:
                self._drop(e)
            self._changed()

    def put(self, entry: Entry) -> None:
        """Add or replace an endpoint's entry."""
        if self._entries.get(entry.endpoint_id) == entry:
            return
        self._put(entry)
        self._changed()

    def remove(self, endpoint_id: str) -> None:
        entry = self._entries.get(endpoint_id)
        if entry is not None:
            self._drop(entry)
            self._changed()

    def replace_remote(self, network_id: str, entries: Iterable[Entry]) -> None:
        """The remote endpoints of one network, all at once (from the overlay's peer table)."""
        new = {e.endpoint_id: e for e in entries}
        changed = False
        for eid in self._remote[network_id] - set(new):
            if eid in self._entries:
                self._drop(self._entries[eid])
                changed = True
        for e in new.values():
            if self._entries.get(e.endpoint_id) != e:
                self._put(e)
                changed = True
        self._remote[network_id] = set(new)
        if changed:
            self._changed()

    def _put(self, entry: Entry) -> None:
        old = self._entries.get(entry.endpoint_id)
        if old is not None:
            self._drop(old)
        self._entries[entry.endpoint_id] = entry
        for n in entry.names():
            self._by_name[(entry.network_id, n)].append(entry)
        for ip in (entry.ipv4, entry.ipv6):
            if ip:
                self._by_ip[ip].append(entry)

    def _drop(self, entry: Entry) -> None:
        del self._entries[entry.endpoint_id]
        for n in entry.names():
            _discard(self._by_name, (entry.network_id, n), entry)
        for ip in (entry.ipv4, entry.ipv6):
            if ip:
                _discard(self._by_ip, ip, entry)

    def _changed(self) -> None:
        for listener in self.listeners:
            listener()

    # --- lookups ------------------------------------------------------------

    def lookup(self, view: frozenset[str], name: str) -> list[Entry]:
        """Entries answering to ``name`` (lower case, no trailing dot) in the view's networks:
        ``host.network`` first, then a plain name or alias on any view network."""
        for nid in view:
            nw = self._networks.get(nid)
            if nw is not None and name.endswith("." + nw.name):
                found = self._by_name.get((nid, name[: -len(nw.name) - 1]))
                if found:
                    return list(found)
        out: list[Entry] = []
        for nid in view:
            out += self._by_name.get((nid, name), ())
        return out

    def by_address(self, view: frozenset[str], address: str) -> list[Entry]:
        return [e for e in self._by_ip.get(address, ()) if e.network_id in view]

    def network_name(self, network_id: str) -> str:
        nw = self._networks.get(network_id)
        return nw.name if nw else network_id[:12]

    def zone(self, view: frozenset[str], name: str) -> str | None:
        """The domain (a view network's name) that ``name`` is or lies under, the
        longest if several; None if none -- only the view counts, never other networks."""
        best = None
        for nid in view:
            nw = self._networks.get(nid)
            inside = nw is not None and (name == nw.name or name.endswith("." + nw.name))
            if inside and nw is not None and (best is None or len(nw.name) > len(best)):
                best = nw.name
        return best

    def reverse_zone(self, view: frozenset[str], prefix: Subnet) -> Subnet | None:
        """The view network's subnet holding ``prefix`` (an address or a shorter
        reverse-name prefix), or None: a supernet of our subnets is not ours."""
        for nid in view:
            nw = self._networks.get(nid)
            for s in nw.subnets if nw is not None else ():
                if s.version == prefix.version and prefix.subnet_of(s):  # type: ignore[arg-type]
                    return s
        return None

    def forwards(self, view: frozenset[str]) -> bool:
        """Whether names outside libnet may be forwarded for this view: only if one of
        its networks gives a way out.  An internal-only (or empty) view never forwards."""
        return any(nw.external for nid in view if (nw := self._networks.get(nid)) is not None)


def _discard(index: dict[Any, list[Entry]], key: object, entry: Entry) -> None:
    items = index.get(key)
    if items is None:
        return
    items[:] = [e for e in items if e.endpoint_id != entry.endpoint_id]
    if not items:
        del index[key]


def parse_reverse(name: str) -> tuple[Subnet, bool] | None:
    """A reverse name as the prefix it stands for, and whether the whole name was
    read: ``5.100.51.198.in-addr.arpa`` -> (198.51.100.5/32, True),
    ``100.51.198.in-addr.arpa`` -> (198.51.100.0/24, True), ``x.5.100.51.198.in-addr.arpa``
    -> (198.51.100.5/32, False) (a name below it).  None outside the reverse trees."""
    for suffix, width, base, version in ((".in-addr.arpa", 4, 10, 4), (".ip6.arpa", 32, 16, 6)):
        if name.endswith(suffix) or name == suffix[1:]:
            labels = name[: -len(suffix)].split(".")[::-1] if name != suffix[1:] else []
            value, used = 0, 0
            for label in labels[:width]:
                if not _reverse_label(label, base):
                    break
                value = value * (256 if base == 10 else 16) + int(label, base)
                used += 1
            bits = 8 if base == 10 else 4
            shift = (width - used) * bits
            total = width * bits
            cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
            return cls((value << shift, total - shift)), used == len(labels)
    return None


def _reverse_label(label: str, base: int) -> bool:
    if base == 16:
        return len(label) == 1 and label in "0123456789abcdef"
    return label.isdigit() and label.isascii() and int(label) < 256 and (label == "0" or label[0] != "0")


def reverse_name(net: Subnet) -> str:
    """The reverse name of ``net`` rounded down to a label boundary: 198.51.100.0/24 ->
    ``100.51.198.in-addr.arpa``, 198.51.100.16/28 -> the same (no label for 4 bits)."""
    if net.version == 4:
        octets = str(net.network_address).split(".")[: net.prefixlen // 8]
        return ".".join([*reversed(octets), "in-addr", "arpa"])
    nibbles = net.network_address.exploded.replace(":", "")[: net.prefixlen // 4]
    return ".".join([*reversed(nibbles), "ip6", "arpa"])


def reverse_to_address(name: str) -> str | None:
    """``4.3.2.1.in-addr.arpa`` -> ``1.2.3.4``; ip6.arpa nibbles alike; None if not a full reverse name."""
    if name.endswith(".in-addr.arpa"):
        parts = name[: -len(".in-addr.arpa")].split(".")
        if len(parts) == 4:
            try:
                return str(ipaddress.IPv4Address(".".join(reversed(parts))))
            except ValueError:
                return None
    elif name.endswith(".ip6.arpa"):
        nibbles = name[: -len(".ip6.arpa")].split(".")
        if len(nibbles) == 32 and all(len(n) == 1 for n in nibbles):
            try:
                return str(ipaddress.IPv6Address(int("".join(reversed(nibbles)), 16)))
            except ValueError:
                return None
    return None
