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
"""

from __future__ import annotations

import ipaddress
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from libnet.errors import InvalidOption

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
            return str(ipaddress.ip_interface(cidr).ip) if cidr else None

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


@dataclass
class _Network:
    name: str
    subnets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)


class Records:
    """All entries this host knows, indexed for the resolver.  Listeners are
    called (with no argument) after every change, so caches can be dropped."""

    def __init__(self) -> None:
        self._networks: dict[str, _Network] = {}
        self._network_ids: dict[str, str] = {}  # name -> id
        self._entries: dict[str, Entry] = {}
        self._by_name: dict[tuple[str, str], list[Entry]] = defaultdict(list)  # (network id, name)
        self._by_ip: dict[str, list[Entry]] = defaultdict(list)
        self._name_count: dict[str, int] = defaultdict(int)  # names on any network
        self._remote: dict[str, set[str]] = defaultdict(set)  # network id -> remote endpoint ids
        self.listeners: list[Callable[[], None]] = []

    # --- changes ------------------------------------------------------------

    def set_network(self, network_id: str, name: str, subnets: Iterable[str | None] = ()) -> None:
        """Make a network known (its name is a domain; its subnets' reverse zones are libnet's)."""
        old = self._networks.get(network_id)
        nets = [ipaddress.ip_network(s, strict=False) for s in subnets if s]
        if old is not None and old.name == name.lower() and old.subnets == nets:
            return
        if old is not None:
            self._network_ids.pop(old.name, None)
        self._networks[network_id] = _Network(name.lower(), nets)
        self._network_ids[name.lower()] = network_id
        self._changed()

    def remove_network(self, network_id: str) -> None:
        old = self._networks.pop(network_id, None)
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
            self._name_count[n] += 1
        for ip in (entry.ipv4, entry.ipv6):
            if ip:
                self._by_ip[ip].append(entry)

    def _drop(self, entry: Entry) -> None:
        del self._entries[entry.endpoint_id]
        for n in entry.names():
            _discard(self._by_name, (entry.network_id, n), entry)
            self._name_count[n] -= 1
            if not self._name_count[n]:
                del self._name_count[n]
        for ip in (entry.ipv4, entry.ipv6):
            if ip:
                _discard(self._by_ip, ip, entry)

    def _changed(self) -> None:
        for listener in self.listeners:
            listener()

    # --- lookups ------------------------------------------------------------

    def lookup(self, view: frozenset[str], name: str) -> list[Entry]:
        """Entries answering to ``name`` (lower case, no trailing dot) in the view's networks."""
        host, _, domain = name.rpartition(".")
        if host:
            nid = self._network_ids.get(domain)
            if nid in view:
                found = self._by_name.get((nid, host))
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

    def is_libnet_name(self, name: str) -> bool:
        """Whether ``name`` is in libnet's namespace -- a known network's domain
        or an endpoint name or alias on any network -- so an unknown one gets
        NXDOMAIN and is never sent upstream (container names must not leak)."""
        if name in self._name_count or name in self._network_ids:
            return True
        _, _, domain = name.rpartition(".")
        return domain in self._network_ids

    def in_libnet_subnet(self, view: frozenset[str], address: str) -> bool:
        """Whether ``address`` lies in a subnet of a network in the view (its reverse zone is ours)."""
        ip = ipaddress.ip_address(address)
        return any(ip in s for nid in view if nid in self._networks for s in self._networks[nid].subnets)


def _discard(index: dict, key: object, entry: Entry) -> None:
    items = index.get(key)
    if items is None:
        return
    items[:] = [e for e in items if e.endpoint_id != entry.endpoint_id]
    if not items:
        del index[key]


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
