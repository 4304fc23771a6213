"""An in-memory kernel below the drivers, for unit tests without root.

In the spirit of pyroute2's in-package fakes: :class:`FakeKernel` implements
:class:`libnet.kernel.api.Kernel` -- netlink handles per namespace (links,
addresses, neighbour and FDB entries, veth pairs across namespaces, link
groups, aliases), batched sandbox configuration, firewall tables of rule
groups, named namespaces and sysctls -- over plain dictionaries, and raises
the same typed errors as the real one (``NoSuchLink``, ``KernelObjectExists``,
``NoSuchNamespace``).  Tests build state by hand (``add_link``,
``add_namespace``), inject failures (``fail_on("add_address")``), and look
at the result (``namespace(ns).links``, ``tables``).
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from libnet.errors import BadRequest, KernelError, KernelObjectExists, NoSuchLink, NoSuchNamespace
from libnet.kernel.api import RuleList
from libnet.kernel.errors import from_errno
from libnet.kernel.neighbours import FdbEntry, Neighbour
from libnet.kernel.netlink import RTN_UNREACHABLE, VXLAN_PORT, Link, Vxlan

T = TypeVar("T")
HOST = "(host)"


@dataclass
class FakeLink:
    """One interface of a :class:`FakeNamespace`."""

    index: int
    name: str
    kind: str | None
    mtu: int = 1500
    mac: str = "02:00:00:00:00:00"
    up: bool = False
    master: int | None = None
    alias: str | None = None
    group: int = 0
    hairpin: bool = False
    isolated: bool = False
    vxlan: dict[str, Any] | None = None  # vni, local, port, learning, proxy
    peer: tuple[str, int] | None = None  # a veth's other end: (namespace key, index)

    def view(self) -> Link:
        return Link(self.index, self.name, self.kind, self.mtu, self.mac, self.up, self.master, self.alias)


@dataclass
class FakeNamespace:
    """The network objects of one namespace."""

    key: str
    links: dict[int, FakeLink] = field(default_factory=dict)
    addresses: dict[int, list[str]] = field(default_factory=dict)
    routes: set[tuple[str, int]] = field(default_factory=set)  # (default via, out of index)
    #: other routes: destination CIDR -> (out of index, preferred source)
    prefix_routes: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    #: routes without a device: (destination CIDR, metric) -> (type RTN_*, protocol RTPROT_*)
    typed_routes: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    neighbours: dict[int, set[Neighbour]] = field(default_factory=dict)
    fdb: dict[int, set[FdbEntry]] = field(default_factory=dict)

    def find(self, link: str | int) -> FakeLink | None:
        if isinstance(link, int):
            return self.links.get(link)
        return next((lk for lk in self.links.values() if lk.name == link), None)

    def get(self, link: str | int) -> FakeLink:
        found = self.find(link)
        if found is None:
            raise NoSuchLink("no such interface", ifname=link, netns=self.key)
        return found

    def by_name(self) -> dict[str, FakeLink]:
        return {lk.name: lk for lk in self.links.values()}


@dataclass
class FakeTable:
    """One firewall table: rule groups by key, and the bridges set."""

    groups: dict[str, RuleList] = field(default_factory=dict)
    bridges: set[str] = field(default_factory=set)


class FakeKernel:
    """See the module docstring.  Namespaces are keyed by name; a path
    ``/run/netns/NAME`` means ``NAME``; ``None`` is the host namespace."""

    def __init__(self) -> None:
        self.namespaces: dict[str, FakeNamespace] = {HOST: FakeNamespace(HOST)}
        self.tables: dict[tuple[str, str], FakeTable] = {}
        self.sysctls: dict[tuple[str, str], str] = {}
        self.calls: list[str] = []
        #: neighbour announcements sent (``LinkOps.announce``): (namespace, links that exist, entries sorted)
        self.announced: list[tuple[str, tuple[str, ...], tuple[Neighbour, ...]]] = []
        self._failures: dict[str, list[BaseException]] = {}
        self._index = itertools.count(2)
        self.namespace(None).links[1] = FakeLink(1, "lo", None, 65536, "00:00:00:00:00:00", up=True)

    # --- set-up and inspection ----------------------------------------------------

    @staticmethod
    def key(ns: str | None) -> str:
        if ns is None:
            return HOST
        return ns.rsplit("/", 1)[1] if ns.startswith("/run/netns/") else ns

    def namespace(self, ns: str | None) -> FakeNamespace:
        """The namespace ``ns`` (``NoSuchNamespace`` if there is none)."""
        found = self.namespaces.get(self.key(ns))
        if found is None:
            raise NoSuchNamespace("no such network namespace", netns=ns)
        return found

    def add_namespace(self, name: str) -> str:
        """A namespace (with ``lo``) made outside libnet, e.g. a container's; returns its path."""
        space = FakeNamespace(self.key(name))
        space.links[1] = FakeLink(1, "lo", None, 65536, "00:00:00:00:00:00")
        self.namespaces[space.key] = space
        return f"/run/netns/{space.key}"

    def add_link(self, ns: str | None, name: str, kind: str | None, **attrs: Any) -> FakeLink:
        """A link made outside libnet (``eth0``, a foreign bridge...)."""
        space = self.namespace(ns)
        link = FakeLink(next(self._index), name, kind, **attrs)
        space.links[link.index] = link
        return link

    def fail_on(self, operation: str, exc: BaseException | None = None) -> None:
        """Make the next ``operation`` (a method name: ``add_address``, ``configure``...) raise."""
        self._failures.setdefault(operation, []).append(exc or KernelError(f"injected failure in {operation}"))

    def check(self, operation: str) -> None:
        self.calls.append(operation)
        pending = self._failures.get(operation)
        if pending:
            raise pending.pop(0)

    def new_index(self) -> int:
        return next(self._index)

    def delete(self, space: FakeNamespace, index: int) -> None:
        """Delete a link: a veth's peer goes too, a bridge's ports are unplugged."""
        link = space.links.pop(index, None)
        if link is None:
            return
        space.addresses.pop(index, None)
        space.neighbours.pop(index, None)
        space.fdb.pop(index, None)
        space.routes = {route for route in space.routes if route[1] != index}
        space.prefix_routes = {dst: r for dst, r in space.prefix_routes.items() if r[0] != index}
        for port in space.links.values():
            if port.master == index:
                port.master = None
        if link.peer is not None:
            other = self.namespaces.get(link.peer[0])
            if other is not None and link.peer[1] in other.links:
                other.links[link.peer[1]].peer = None
                self.delete(other, link.peer[1])

    # --- the Kernel protocol --------------------------------------------------------

    def netlink(self, ns: str | None) -> FakeNetlink:
        self.namespace(ns)
        return FakeNetlink(self, ns)

    async def open_sandbox(self, path: str) -> FakeSandbox:
        self.check("open_sandbox")
        return FakeSandbox(self, self.namespace(path))

    def firewall(self, ns: str | None, table: str) -> FakeFirewall:
        return FakeFirewall(self, self.tables.setdefault((self.key(ns), table), FakeTable()))

    def netns_exists(self, name: str) -> bool:
        return self.key(name) in self.namespaces

    def netns_create(self, name: str) -> str:
        self.check("netns_create")
        if self.netns_exists(name):
            raise from_errno(errno.EEXIST, "create namespace", netns=name)
        return self.add_namespace(name)

    def netns_delete(self, name: str) -> None:
        self.check("netns_delete")
        space = self.namespaces.pop(self.key(name), None)
        for index in list(space.links if space else ()):
            assert space is not None
            self.delete(space, index)

    def netns_list(self, prefix: str = "") -> list[str]:
        return sorted(name for name in self.namespaces if name != HOST and name.startswith(prefix))

    def sysctl_get(self, ns: str | None, key: str | tuple[str, ...]) -> str:
        name = key if isinstance(key, str) else ".".join(key)
        return self.sysctls.get((self.key(ns), name), "0")

    def sysctl_set(self, ns: str | None, key: str | tuple[str, ...], value: int | str) -> None:
        self.check("sysctl_set")
        name = key if isinstance(key, str) else ".".join(key)
        self.sysctls[(self.key(ns), name)] = str(value)

    async def enable_forwarding(self, ns: str | None) -> None:
        self.sysctl_set(ns, "net.ipv4.ip_forward", 1)
        self.sysctl_set(ns, "net.ipv6.conf.all.forwarding", 1)


class FakeNetlink:
    """A netlink handle on one fake namespace (:class:`libnet.kernel.api.LinkOps`)."""

    def __init__(self, kernel: FakeKernel, ns: str | None) -> None:
        self.kernel, self.ns = kernel, ns

    @property
    def space(self) -> FakeNamespace:
        return self.kernel.namespace(self.ns)

    def __enter__(self) -> FakeNetlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        fut: Future[T] = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # handed to the waiter, as the namespace thread does
            fut.set_exception(exc)
        return fut

    def _new(self, name: str, kind: str | None, **attrs: Any) -> FakeLink:
        if self.space.find(name) is not None:
            raise from_errno(errno.EEXIST, f"create {kind}", ifname=name, netns=self.ns)
        link = FakeLink(self.kernel.new_index(), name, kind, **attrs)
        self.space.links[link.index] = link
        return link

    # links
    def links(self) -> list[Link]:
        return [link.view() for link in self.space.links.values()]

    def link(self, link: str | int) -> Link:
        return self.space.get(link).view()

    def has_link(self, name: str) -> bool:
        return self.space.find(name) is not None

    def add_bridge(
        self,
        name: str,
        mtu: int | None = None,
        mac: str | None = None,
        mcast_snooping: bool = False,
        alias: str | None = None,
    ) -> int:
        self.kernel.check("add_bridge")
        return self._new(name, "bridge", mtu=mtu or 1500, alias=alias).index

    def plug_veth(
        self,
        name: str,
        peer: str,
        peer_ns: str,
        master: str,
        mtu: int | None = None,
        peer_mac: str | None = None,
        alias: str | None = None,
    ) -> int:
        self.kernel.check("plug_veth")
        bridge = self.space.find(master)
        if bridge is None:
            raise NoSuchLink("no such bridge", ifname=master, netns=self.ns)
        other = self.kernel.namespace(peer_ns)
        if other.find(peer) is not None:
            raise from_errno(errno.EEXIST, "create veth", ifname=peer, netns=peer_ns)
        host = self._new(name, "veth", mtu=mtu or 1500, up=True, master=bridge.index, alias=alias)
        inside = FakeLink(self.kernel.new_index(), peer, "veth", mtu or 1500, peer_mac or "02:00:00:00:00:01")
        other.links[inside.index] = inside
        host.peer, inside.peer = (other.key, inside.index), (self.space.key, host.index)
        return host.index

    def plug_veth_here(
        self,
        name: str,
        peer: str,
        peer_ns: str,
        master: str,
        mtu: int | None = None,
        peer_mac: str | None = None,
        alias: str | None = None,
        hairpin: bool = False,
        isolated: bool = False,
    ) -> int:
        index = self.plug_veth(name, peer, peer_ns, master, mtu, peer_mac, alias)
        try:
            if hairpin:
                self.set_hairpin(index)
            if isolated:
                self.set_port_isolated(index)
        except BaseException:
            self.kernel.delete(self.space, index)
            raise
        return index

    def unplug(
        self,
        link: str,
        group: int | None = None,
        owned: Callable[[str | None], bool] | None = None,
        made: int | None = None,
    ) -> bool:
        found = self.space.find(link)
        if found is None:
            return False
        if owned is not None and (made is None or found.index != made) and not owned(found.alias):
            return False
        found.up, found.master = False, None
        if group is not None:
            found.group = group
        return True

    def delete_group(self, group: int) -> None:
        for link in [lk for lk in self.space.links.values() if lk.group == group]:
            self.kernel.delete(self.space, link.index)

    def delete_link(self, link: str | int) -> None:
        self.kernel.check("delete_link")
        found = self.space.find(link)
        if found is not None:
            self.kernel.delete(self.space, found.index)

    def set_up(self, link: str | int) -> None:
        self.kernel.check("set_up")
        self.space.get(link).up = True

    def set_down(self, link: str | int) -> None:
        self.space.get(link).up = False

    def set_alias(self, link: str | int, alias: str) -> None:
        self.space.get(link).alias = alias

    def set_mtu(self, link: str | int, mtu: int) -> None:
        self.space.get(link).mtu = mtu

    def set_master(self, link: str | int, master: str | int | None) -> None:
        self.space.get(link).master = None if master is None else self.space.get(master).index

    def set_hairpin(self, link: str | int, on: bool = True) -> None:
        self.kernel.check("set_hairpin")
        self.space.get(link).hairpin = on

    def set_port_isolated(self, link: str | int, isolated: bool = True) -> None:
        self.space.get(link).isolated = isolated

    def hairpin_ports(self) -> dict[str, bool]:
        return {lk.name: lk.hairpin for lk in self.space.links.values() if lk.master is not None}

    def uplink_mtu(self) -> int | None:
        return None

    def vxlan(self, link: str | int) -> Vxlan | None:
        found = self.space.get(link)
        if found.kind != "vxlan" or found.vxlan is None:
            return None
        return Vxlan(link=found.view(), link_netnsid=0, **found.vxlan)

    def add_vxlan_in(
        self,
        ns: str,
        name: str,
        vni: int,
        local: str,
        port: int = VXLAN_PORT,
        mtu: int | None = None,
        learning: bool = False,
        proxy: bool = True,
        udp_csum: bool = True,
    ) -> None:
        self.kernel.check("add_vxlan_in")
        target = FakeNetlink(self.kernel, ns)
        ip = ipaddress.ip_address(local)
        settings = {"vni": vni, "local": None if ip.is_unspecified else str(ip), "port": port}
        target._new(name, "vxlan", mtu=mtu or 1500, vxlan={**settings, "learning": learning, "proxy": proxy})

    # routes
    def add_route(
        self,
        dst: str,
        via: str | None = None,
        dev: str | int | None = None,
        onlink: bool = False,
        family: int | None = None,
        src: str | None = None,
    ) -> None:
        self.kernel.check("add_route")
        if dev is None:
            raise BadRequest("the fake kernel routes only through a device", dst=dst)
        self.space.prefix_routes[str(ipaddress.ip_network(dst))] = (self.space.get(dev).index, src)

    def delete_route(self, dst: str, via: str | None = None, family: int | None = None) -> None:
        self.space.prefix_routes.pop(str(ipaddress.ip_network(dst)), None)

    def route_at(self, dst: str, metric: int) -> tuple[int, int] | None:
        return self.space.typed_routes.get((str(ipaddress.ip_network(dst)), metric))

    def add_unreachable_route(self, dst: str, metric: int, proto: int) -> None:
        self.kernel.check("add_unreachable_route")
        key = (str(ipaddress.ip_network(dst)), metric)
        if key in self.space.typed_routes:
            raise KernelObjectExists("route exists", dst=dst, netns=self.space.key)
        self.space.typed_routes[key] = (RTN_UNREACHABLE, proto)

    def delete_unreachable_route(self, dst: str, metric: int, proto: int) -> None:
        key = (str(ipaddress.ip_network(dst)), metric)
        if self.space.typed_routes.get(key) == (RTN_UNREACHABLE, proto):
            del self.space.typed_routes[key]

    # addresses
    def addresses(self, link: str | int | None = None) -> list[str]:
        if link is None:
            return [cidr for found in self.space.addresses.values() for cidr in found]
        return list(self.space.addresses.get(self.space.get(link).index, []))

    def add_address(self, link: str | int, cidr: str, nodad: bool = False) -> None:
        self.kernel.check("add_address")
        have = self.space.addresses.setdefault(self.space.get(link).index, [])
        if cidr in have:
            raise from_errno(errno.EEXIST, "add address", ifname=link, address=cidr)
        have.append(cidr)

    def delete_address(self, link: str | int, cidr: str) -> None:
        found = self.space.find(link)
        if found is not None and cidr in self.space.addresses.get(found.index, []):
            self.space.addresses[found.index].remove(cidr)

    def address_flags(self, address: str) -> int | None:
        for cidr in self.addresses():
            if cidr.split("/")[0] == address:
                return 0
        return None

    # neighbours and FDB
    def neighbours(self, link: str | int) -> list[Neighbour]:
        return sorted(self.space.neighbours.get(self.space.get(link).index, set()))

    def fdb(self, link: str | int) -> list[FdbEntry]:
        return sorted(self.space.fdb.get(self.space.get(link).index, set()))

    def replace_neighbours(self, link: str | int, entries: Iterable[Neighbour]) -> None:
        have = self.space.neighbours.setdefault(self.space.get(link).index, set())
        for entry in entries:
            have -= {old for old in have if old.ip == entry.ip}
            have.add(entry)

    def delete_neighbours(self, link: str | int, entries: Iterable[Neighbour]) -> None:
        self.space.neighbours.get(self.space.get(link).index, set()).difference_update(entries)

    def replace_fdb(self, link: str | int, entries: Iterable[FdbEntry]) -> None:
        self.space.fdb.setdefault(self.space.get(link).index, set()).update(entries)

    def delete_fdb(self, link: str | int, entries: Iterable[FdbEntry]) -> None:
        self.space.fdb.get(self.space.get(link).index, set()).difference_update(entries)

    def announce(self, links: Sequence[str], entries: Iterable[Neighbour]) -> int:
        """Recorded in ``kernel.announced`` as (namespace, links, entries); links that do not exist are skipped."""
        here = [name for name in links if self.space.find(name) is not None]
        items = sorted(entries)
        self.kernel.announced.append((self.space.key, tuple(here), tuple(items)))
        return len(here) * len(items)


class FakeSandbox:
    """Batched configuration inside a fake sandbox (:class:`libnet.kernel.api.SandboxOps`)."""

    def __init__(self, kernel: FakeKernel, space: FakeNamespace) -> None:
        self.kernel, self.space = kernel, space

    def __enter__(self) -> FakeSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def link_index(self, name: str) -> int | None:
        found = self.space.find(name)
        return None if found is None else found.index

    def configure(
        self,
        ifname: str,
        addresses: Sequence[str],
        gateways: Sequence[str] = (),
        alias: str | None = None,
        **ids: Any,
    ) -> None:
        self.kernel.check("configure")
        link = self.space.find(ifname)
        if link is None:
            raise NoSuchLink("the new interface is not in the sandbox", ifname=ifname, **ids)
        self.space.links[1].up = True
        have = self.space.addresses.setdefault(link.index, [])
        have.extend(cidr for cidr in addresses if cidr not in have)
        link.up = True
        if alias is not None:
            link.alias = alias
        self._add_default_routes(ifname, link.index, gateways, ids)

    def _add_default_routes(self, ifname: str, index: int, gateways: Sequence[str], ids: dict[str, Any]) -> None:
        """As the kernel with ``NLM_F_EXCL``: one default route per family; the same one
        again is fine, another one is refused (libnet never replaces it)."""
        routes = [(str(ipaddress.ip_interface(gw).ip), index) for gw in gateways]
        for route in routes:  # all checked first: a refusal adds none (as SandboxLinks undoes them)
            family = ipaddress.ip_address(route[0]).version
            other = [r for r in self.space.routes if ipaddress.ip_address(r[0]).version == family and r != route]
            if other:
                raise KernelObjectExists(
                    "the sandbox already has a default route libnet did not make",
                    ifname=ifname,
                    gateway=route[0],
                    **ids,
                )
        self.space.routes.update(routes)

    def set_default_routes(self, ifname: str, gateways: Sequence[str], present: bool, **ids: Any) -> None:
        link = self.space.find(ifname)
        if link is None:
            raise NoSuchLink("the endpoint's interface is not in the sandbox", ifname=ifname, **ids)
        if present:
            self._add_default_routes(ifname, link.index, gateways, ids)
            return
        self.space.routes -= {(str(ipaddress.ip_interface(gw).ip), link.index) for gw in gateways}

    def retire(self, ifname: str, new_name: str) -> bool:
        link = self.space.find(ifname)
        if link is None:
            return False
        link.up, link.name = False, new_name
        return True


class FakeFirewall:
    """One fake firewall table (:class:`libnet.kernel.api.FirewallOps`)."""

    def __init__(self, kernel: FakeKernel, table: FakeTable) -> None:
        self.kernel, self.table = kernel, table

    def close(self) -> None:
        pass

    def add(self, key: str, rules: RuleList) -> None:
        self.kernel.check("firewall_add")
        self.table.groups[key] = list(rules)

    def remove(self, key: str) -> None:
        self.table.groups.pop(key, None)

    def remove_prefix(self, prefix: str) -> None:
        for key in [k for k in self.table.groups if k.startswith(prefix)]:
            del self.table.groups[key]

    def add_bridge(self, bridge: str) -> bool:
        if bridge in self.table.bridges:
            return False
        self.table.bridges.add(bridge)
        return True

    def remove_bridge(self, bridge: str) -> None:
        self.table.bridges.discard(bridge)

    def bridges(self) -> set[str]:
        return set(self.table.bridges)

    def rules(self) -> list[dict[str, Any]]:
        return [
            {"key": key, "chain": chain, "handle": n, "expr": expr}
            for key, rules in self.table.groups.items()
            for n, (chain, expr) in enumerate(rules)
        ]


class FakeRelays:
    """Relays of ports published on ``[::1]`` without sockets (:class:`libnet.drivers.publish.RelayOps`)."""

    def __init__(self) -> None:
        self.running: dict[str, set[Any]] = {}

    def keys(self) -> set[str]:
        return set(self.running)

    def targets(self, key: str) -> set[Any]:
        return set(self.running.get(key, set()))

    async def start(self, key: str, targets: list[Any]) -> None:
        if targets:
            self.running[key] = set(targets)
        else:
            self.running.pop(key, None)

    async def stop(self, key: str) -> None:
        self.running.pop(key, None)

    async def close(self) -> None:
        self.running.clear()
