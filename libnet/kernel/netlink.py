"""Links, addresses and routes over netlink (pyroute2), per namespace.

Why pyroute2's *synchronous* ``IPRoute`` and not its asyncio API: pyroute2
opens its netlink socket lazily *per thread*, in the namespace that thread is
in, and entering a namespace in-process (``setns``) is itself per thread.  So
every netlink operation for a namespace must run on a thread that sits in it
-- a :class:`~libnet.kernel.netns.NamespaceThread`.  Calls on that thread are
plain blocking calls of well under a millisecond; the asyncio side of libnet
awaits them through :meth:`Netlink.submit` (a ``concurrent.futures.Future``
that ``asyncio.wrap_future`` turns into an awaitable), which keeps the event
loop free without a second event loop per namespace.

Neighbour and FDB entries go through :mod:`libnet.kernel.neighbours`, which
packs netlink messages itself for bulk speed, on the same thread.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2.iproute import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from libnet.errors import BadRequest, NoSuchLink, NoSuchNamespace
from libnet.kernel import netns, rtnl
from libnet.kernel.announce import announce as send_announcements
from libnet.kernel.errors import GONE, from_errno, is_gone, translate
from libnet.kernel.neighbours import FdbEntry, Neighbour, NeighbourSocket
from libnet.kernel.rtnl import Request, RtnlSocket
from libnet.kernel.wire import (
    IFA_F_NODAD,
    IFA_F_TENTATIVE,
    NLM_F_CREATE,
    NLM_F_EXCL,
    RTM_DELLINK,
    RTM_NEWLINK,
    RTM_SETLINK,
    RTN_UNICAST,
)

T = TypeVar("T")
log = logging.getLogger("libnet.kernel")

RTNH_F_ONLINK = 0x04
RTN_UNREACHABLE = 7  # route type: drop, answer EHOSTUNREACH
VXLAN_PORT = 4789
IFNAMSIZ = 15


@dataclass(frozen=True)
class Link:
    """A network interface as the kernel reports it."""

    index: int
    name: str
    kind: str | None
    mtu: int
    mac: str
    up: bool
    master: int | None
    alias: str | None = None


@dataclass(frozen=True)
class Route:
    """A route in the main table."""

    dst: str  # CIDR, "default" for 0/0 and ::/0
    via: str | None
    dev: int | None


@dataclass(frozen=True)
class Vxlan:
    """A VXLAN device's settings as the kernel reports them (:meth:`Netlink.vxlan`)."""

    link: Link
    vni: int | None
    local: str | None  # the VTEP address, IPv4 or IPv6
    port: int | None
    learning: bool
    proxy: bool
    #: set when the device's UDP socket lives in another namespace than the device
    link_netnsid: int | None


def _check_ifname(name: str) -> None:
    if not name or len(name) > IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
        raise BadRequest(f"invalid interface name {name!r} (1-{IFNAMSIZ} characters, no '/' or spaces)", ifname=name)


def _link_from_msg(msg: Any) -> Link:
    kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    return Link(
        index=msg["index"],
        name=msg.get("ifname"),
        kind=kind,
        mtu=msg.get("mtu"),
        mac=msg.get("address"),
        up=bool(msg["flags"] & 1),
        master=msg.get("master"),
        alias=msg.get("ifalias"),
    )


class Netlink:
    """Netlink access to one namespace (``ns=None``: this process's own).

    Every method runs on the namespace's own thread and blocks until done;
    :meth:`submit` queues any callable taking this object, for async callers.
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, ns: str | None = None) -> None:
        self.ns = ns
        self._thread = netns.NamespaceThread(ns)
        self._ipr: IPRoute | None = None
        self._neigh: NeighbourSocket | None = None
        self._rtnl: rtnl.RtnlSocket | None = None
        # a socket of one other thread (the event loop's) for plug_veth_here
        self._here: tuple[int, RtnlSocket] | None = None

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the sockets and end the namespace thread."""

        def shut() -> None:
            if self._ipr is not None:
                self._ipr.close()
            if self._neigh is not None:
                self._neigh.close()
            if self._rtnl is not None:
                self._rtnl.close()

        self._thread.call(shut)
        self._thread.close()
        if self._here is not None:
            self._here[1].close()
            self._here = None

    # --- plumbing ---------------------------------------------------------

    @property
    def ipr(self) -> IPRoute:
        """The pyroute2 handle; only valid on the namespace thread."""
        if self._ipr is None:
            self._ipr = IPRoute()
        return self._ipr

    @property
    def neigh(self) -> NeighbourSocket:
        """The bulk neighbour/FDB socket; only valid on the namespace thread."""
        if self._neigh is None:
            self._neigh = NeighbourSocket()
        return self._neigh

    @property
    def rtnl(self) -> rtnl.RtnlSocket:
        """The raw batching socket; only valid on the namespace thread."""
        if self._rtnl is None:
            self._rtnl = rtnl.RtnlSocket()
        return self._rtnl

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue ``fn(*args)`` on the namespace thread."""
        return self._thread.submit(fn, *args)

    def _run(self, action: str, fn: Callable[..., T], *args: Any, **ids: Any) -> T:
        """``fn(*args)`` on the namespace thread, kernel errors translated."""

        def body() -> T:
            try:
                return fn(*args)
            except (NetlinkError, OSError) as exc:
                raise translate(exc, action, netns=self.ns, **ids) from exc

        return self._thread.call(body)

    def _run_gone_ok(self, action: str, fn: Callable[..., object], *args: Any, **ids: Any) -> None:
        """As :meth:`_run`, for deletions: an object already gone is success."""

        def body() -> None:
            try:
                fn(*args)
            except (NetlinkError, OSError) as exc:
                if not is_gone(exc):
                    raise translate(exc, action, netns=self.ns, **ids) from exc

        self._thread.call(body)

    def _index(self, link: str | int) -> int:
        """Index of ``link`` (name or index); must run on the thread."""
        if isinstance(link, int):
            return link
        # one ioctl in the thread's namespace (pyroute2's link_lookup dumps and parses every link: ~2 ms)
        try:
            return socket.if_nametoindex(link)
        except OSError:
            raise NoSuchLink("no such interface", ifname=link, netns=self.ns) from None

    # --- links ------------------------------------------------------------

    def links(self) -> list[Link]:
        """All interfaces of the namespace."""
        return self._run("list links", lambda: [_link_from_msg(m) for m in self.ipr.get_links()])

    def link(self, link: str | int) -> Link:
        """One interface by name or index (``NoSuchLink`` if absent)."""

        def get() -> Link:
            return _link_from_msg(self.ipr.get_links(self._index(link))[0])

        return self._run("get link", get, ifname=link)

    def link_index(self, name: str) -> int:
        """Index of the interface called ``name``."""
        return self._run("look up link", self._index, name, ifname=name)

    def has_link(self, name: str) -> bool:
        """Whether an interface called ``name`` exists."""
        return self._run("look up link", lambda: bool(self.ipr.link_lookup(ifname=name)))

    def _add(self, name: str, **spec: Any) -> int:
        _check_ifname(name)
        spec = {k: v for k, v in spec.items() if v is not None}

        def add() -> int:
            self.ipr.link("add", ifname=name, **spec)
            return self._index(name)

        return self._run(f"create {spec.get('kind')} link", add, ifname=name)

    def add_bridge(
        self,
        name: str,
        mtu: int | None = None,
        mac: str | None = None,
        mcast_snooping: bool = False,
        alias: str | None = None,
    ) -> int:
        """Create a bridge (down); returns its index. ``KernelObjectExists`` if taken.

        With ``alias`` (an ownership mark) the bridge is created and marked in
        one batch (see :mod:`libnet.kernel.rtnl`): it never exists unmarked.
        A taken name is refused before anything is sent; should a link take
        the name in the microseconds between, the mark can reach it only if
        it is a bridge.
        """
        if alias is None:
            return self._add(name, kind="bridge", mtu=mtu, address=mac, br_mcast_snooping=int(mcast_snooping))
        _check_ifname(name)
        create = rtnl.bridge_body(name, mtu, mac, mcast_snooping)

        def body() -> int:
            if self.rtnl.link_index(name) is not None:
                raise from_errno(errno.EEXIST, "create bridge", ifname=name, netns=self.ns)
            return self._create_marked(name, create, alias, "bridge")

        return self._run("create bridge", body, ifname=name, alias=alias)

    def _create_marked(
        self,
        name: str,
        create: bytes,
        alias: str | None,
        kind: str | None,
        sock: RtnlSocket | None = None,
        then: Sequence[Request] = (),
    ) -> int:
        """Create a link and set its alias in one batch; on the thread.  Returns its index.

        ``then``: more requests for the new link, by its name, in the same batch
        (a port's flags).  The caller has checked that ``name`` is free.  When
        the create fails nothing was made (the alias message met no link, or
        -- a link that took the name since -- one of ``kind``); when only the
        alias or one of ``then`` fails, the new link is deleted again."""
        reqs: list[Request] = [(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, create, f"create {kind or 'link'}")]
        if alias is not None:
            try:
                reqs.append((RTM_NEWLINK, 0, rtnl.alias_body(name, alias, kind), "mark link"))
            except ValueError as exc:
                raise BadRequest(str(exc), ifname=name, alias=alias) from None
        reqs += then
        sock = sock or self.rtnl
        failed = sock.request_each(reqs)
        if 0 in failed:
            raise from_errno(failed[0], f"create {kind or 'link'}", ifname=name, netns=self.ns)
        index = sock.link_index(name)
        if failed:
            if index is not None:
                sock.request([(RTM_DELLINK, 0, rtnl.ifinfo(index), "delete new link")], ignore=GONE)
            first = min(failed)
            raise from_errno(failed[first], reqs[first][3], ifname=name, netns=self.ns)
        if index is None:
            raise NoSuchLink("the new link vanished", ifname=name, netns=self.ns)
        return index

    def add_veth(
        self,
        name: str,
        peer: str,
        peer_ns: str | None = None,
        mtu: int | None = None,
        mac: str | None = None,
        peer_mac: str | None = None,
    ) -> int:
        """Create a veth pair, the peer directly inside ``peer_ns`` if given.

        Creating the peer in place costs a fraction of creating it here and
        moving it.  Returns the index of ``name``.
        """
        _check_ifname(peer)
        peer_spec: dict[str, Any] = {"ifname": peer}
        if mtu is not None:
            peer_spec["mtu"] = mtu
        if peer_mac is not None:
            peer_spec["address"] = peer_mac
        fd = None
        try:
            if peer_ns is not None:
                fd = os.open(netns.path_of(peer_ns), os.O_RDONLY | os.O_CLOEXEC)
                peer_spec["net_ns_fd"] = fd
            return self._add(name, kind="veth", mtu=mtu, address=mac, peer=peer_spec)
        except FileNotFoundError:
            raise NoSuchNamespace("no such network namespace", netns=peer_ns) from None
        finally:
            if fd is not None:
                os.close(fd)

    def add_vxlan(
        self,
        name: str,
        vni: int,
        local: str,
        port: int = VXLAN_PORT,
        underlay: str | int | None = None,
        mtu: int | None = None,
        mac: str | None = None,
        learning: bool = False,
        proxy: bool = True,
        udp_csum: bool = True,
    ) -> int:
        """Create a VXLAN device with a local IPv4 or IPv6 VTEP address.

        Learning is off and ARP/ND proxy on by default: remote peers come from
        static neighbour and FDB entries.  ``udp_csum`` controls UDP checksums
        of the outer packets (for IPv6 underlays the zero-checksum options are
        its inverse, as RFC 6935 allows).
        """
        spec = _vxlan_spec(vni, local, port, learning, proxy, udp_csum)
        spec.update(mtu=mtu, address=mac)
        if underlay is not None:
            spec["vxlan_link"] = self.link_index(underlay) if isinstance(underlay, str) else underlay
        return self._add(name, **spec)

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
        """Create a VXLAN device directly inside namespace ``ns``, its UDP socket here.

        One request: the device appears in ``ns`` under its final name while
        its socket stays in this (the underlay's) namespace -- nothing is ever
        left under a temporary name here.  Settings as :meth:`add_vxlan`.
        """
        _check_ifname(name)
        spec = _vxlan_spec(vni, local, port, learning, proxy, udp_csum)
        spec["ifname"] = name
        if mtu is not None:
            spec["mtu"] = mtu

        def body() -> None:
            try:
                fd = os.open(netns.path_of(ns), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise NoSuchNamespace("no such network namespace", netns=ns) from None
            try:
                self.ipr.link("add", net_ns_fd=fd, **spec)
            finally:
                os.close(fd)

        self._run("create vxlan link", body, ifname=name, target_netns=ns)

    def vxlan(self, link: str | int) -> Vxlan | None:
        """The VXLAN settings of ``link`` (None if it is no VXLAN device; ``NoSuchLink`` if absent)."""

        def get() -> Vxlan | None:
            msg = self.ipr.get_links(self._index(link))[0]
            if msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") != "vxlan":
                return None
            data = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
            if data is None:
                return None
            local = data.get("IFLA_VXLAN_LOCAL") or data.get("IFLA_VXLAN_LOCAL6")
            return Vxlan(
                link=_link_from_msg(msg),
                vni=data.get("IFLA_VXLAN_ID"),
                local=str(ipaddress.ip_address(local)) if local else None,
                port=data.get("IFLA_VXLAN_PORT"),
                learning=bool(data.get("IFLA_VXLAN_LEARNING")),
                proxy=bool(data.get("IFLA_VXLAN_PROXY")),
                link_netnsid=msg.get("IFLA_LINK_NETNSID"),
            )

        return self._run("get vxlan link", get, ifname=link)

    def _set(self, link: str | int, action: str, **attrs: Any) -> None:
        self._run(action, lambda: self.ipr.link("set", index=self._index(link), **attrs), ifname=link)

    def set_up(self, link: str | int) -> None:
        """Bring an interface up."""
        self._set(link, "set link up", state="up")

    def set_down(self, link: str | int) -> None:
        """Bring an interface down."""
        self._set(link, "set link down", state="down")

    def set_mtu(self, link: str | int, mtu: int) -> None:
        """Set an interface's MTU."""
        self._set(link, "set mtu", mtu=mtu)

    def set_mac(self, link: str | int, mac: str) -> None:
        """Set an interface's MAC address."""
        self._set(link, "set mac", address=mac)

    def set_master(self, link: str | int, master: str | int | None) -> None:
        """Attach an interface to a bridge, or detach it (``None``)."""

        def body() -> None:
            idx = 0 if master is None else self._index(master)
            self.ipr.link("set", index=self._index(link), master=idx)

        self._run("set master", body, ifname=link, master=master)

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
        """A veth pair in one request: ``name`` up and a port of bridge
        ``master`` here, ``peer`` created directly inside ``peer_ns``.

        The hot path of attaching a container (one kernel request instead of
        four).  With ``alias`` (an ownership mark) ``name`` is created and
        marked in one batch.  ``KernelObjectExists``, with nothing touched,
        if ``name`` is taken.  Returns the index of ``name``.
        """
        _check_ifname(name)
        _check_ifname(peer)
        return self._run(
            "create veth", lambda: self._plug(self.rtnl, name, peer, peer_ns, master, mtu, peer_mac, alias), ifname=name
        )

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
        """:meth:`plug_veth` and the new port's flags (hairpin, isolated) on the
        *calling* thread, through an rtnetlink socket of its own made inside this
        namespace (:func:`libnet.kernel.netns.sockets_in`): no hand-over to the
        namespace thread, whose two thread wake-ups cost more than the kernel's
        work on a busy machine.  Blocks for that work (the veth's creation, 1-4
        ms).  One calling thread only (the event loop's).  If the flags cannot
        be set, the new veth is deleted again."""
        _check_ifname(name)
        _check_ifname(peer)
        me = threading.get_ident()
        if self._here is None:
            (made,) = netns.sockets_in(self.ns, [(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)])
            if isinstance(made, OSError):
                raise from_errno(made.errno or 0, "open rtnetlink socket", netns=self.ns)
            self._here = (me, rtnl.RtnlSocket(made))
        elif self._here[0] != me:
            raise RuntimeError("plug_veth_here is for one thread only")
        sock = self._here[1]
        then: list[Request] = []
        if hairpin or isolated:  # in the creating batch: no round trip of their own
            flags = rtnl.brport_byname_body(name, hairpin=hairpin, isolated=isolated if isolated else None)
            then.append((RTM_NEWLINK, 0, flags, "set bridge port flags"))
        try:
            index = self._plug(sock, name, peer, peer_ns, master, mtu, peer_mac, alias, then)
        except (NetlinkError, OSError) as exc:
            raise translate(exc, "create veth", netns=self.ns, ifname=name) from exc
        return index

    def _plug(
        self,
        sock: RtnlSocket,
        name: str,
        peer: str,
        peer_ns: str,
        master: str,
        mtu: int | None,
        peer_mac: str | None,
        alias: str | None,
        then: Sequence[Request] = (),
    ) -> int:
        master_idx, taken = sock.link_indexes([master, name])
        if master_idx is None:
            raise NoSuchLink("no such bridge", ifname=master, netns=self.ns)
        if taken is not None:
            raise from_errno(errno.EEXIST, "create veth", ifname=name, netns=self.ns)
        try:
            fd = os.open(netns.path_of(peer_ns), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NoSuchNamespace("no such network namespace", netns=peer_ns) from None
        try:
            msg = rtnl.veth_body(name, peer, fd, mtu, master_idx, peer_mac)
            if alias is not None or then:
                return self._create_marked(name, msg, alias, None, sock, then)
            sock.request([(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, msg, "create veth")])
        finally:
            os.close(fd)
        index = sock.link_index(name)
        assert index is not None
        return index

    def unplug(
        self,
        link: str,
        group: int | None = None,
        owned: Callable[[str | None], bool] | None = None,
        made: int | None = None,
    ) -> bool:
        """Take a port out of service at once: down, out of its bridge, and
        (optionally) into link ``group`` for a later :meth:`delete_group`.

        Deleting a veth takes the kernel 15-25 ms (an RCU grace period);
        callers that need the interface to stop carrying traffic *now* unplug
        it and delete it afterwards, many at once.  False if it does not
        exist, or if ``owned`` is given and says no to the link's alias (then
        it is left untouched; the alias comes with the lookup, no extra
        round trip).

        ``made``: the index this process's own (marked) create gave ``link``.
        While the name still has that index it is that very link -- the kernel
        hands out a namespace's indexes in turn, not again -- so its alias need
        not be read: an ioctl instead of an ``RTM_GETLINK`` under the rtnl lock.
        """

        def body() -> bool:
            if made is not None and self.rtnl.link_index(link) == made:
                index = made
            else:
                found = self.rtnl.lookup([link])[0]
                if found is None or (owned is not None and not owned(found[1])):
                    return False
                index = found[0]
            msg = rtnl.setlink_body(index, up=False, master=0, group=group)
            self.rtnl.request([(RTM_NEWLINK, 0, msg, "unplug")], ignore=GONE)
            return True

        return self._run("unplug link", body, ifname=link)

    def delete_group(self, group: int) -> None:
        """Delete every link in ``group`` in one request (one grace period for all)."""
        self._run(
            "delete link group",
            lambda: self.rtnl.request([(RTM_DELLINK, 0, rtnl.delgroup_body(group), "delete group")], ignore=GONE),
            group=group,
        )  # gone: nothing in it

    def set_alias(self, link: str | int, alias: str) -> None:
        """Set an interface's alias (libnet marks the links it owns with it)."""
        self._set(link, "set alias", ifalias=alias)

    def set_port_isolated(self, link: str | int, isolated: bool = True) -> None:
        """Bridge port isolation: isolated ports cannot talk to each other,
        only to non-isolated ports and to the bridge itself."""
        self._set_brport(link, "set port isolation", isolated=isolated)

    def set_hairpin(self, link: str | int, on: bool = True) -> None:
        """Bridge port hairpin mode (``IFLA_BRPORT_MODE``, ``bridge link set
        dev X hairpin on``): the bridge may send a frame back out of the port
        it came in on.  Needed when ``br_netfilter`` DNATs a container's own
        packet back to it (``bridge-nf-call-iptables=1``): such frames are
        bridged, not routed, and go back through the ingress port."""
        self._set_brport(link, "set hairpin mode", hairpin=on)

    def _set_brport(self, link: str | int, action: str, **flags: bool) -> None:
        """One raw request on the attach path (pyroute2's ``brport`` cost ~1 ms of Python here)."""

        def body() -> None:
            index = link if isinstance(link, int) else self.rtnl.link_index(link)
            if index is None:
                raise NoSuchLink("no such interface", ifname=link, netns=self.ns)
            self.rtnl.request([(RTM_SETLINK, 0, rtnl.brport_body(index, **flags), action)])

        self._run(action, body, ifname=link)

    def hairpin_ports(self) -> dict[str, bool]:
        """Every bridge port of the namespace -> whether hairpin mode is on (one dump)."""

        def body() -> dict[str, bool]:
            out = {}
            for msg in self.ipr.get_links(family=socket.AF_BRIDGE):
                info = msg.get("IFLA_PROTINFO")
                if msg.get("ifname") and info is not None:
                    out[msg.get("ifname")] = bool(info.get("IFLA_BRPORT_MODE"))
            return out

        return self._run("list bridge ports", body)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the namespace thread, where this object's own
        methods run inline: several operations for the price of one hop."""
        return self._thread.call(fn)

    def uplink_mtu(self) -> int | None:
        """MTU of the device carrying the default route (IPv4, else IPv6), if any: the first
        unicast default route of the main table (the kernel lists the one it uses first); of
        a multipath route, the smallest MTU of its next hops' devices.  A blackhole, prohibit
        or unreachable default carries nothing out (IPv6 lists those with ``dev lo``: its
        65,536 bytes were taken for the uplink's)."""

        def body() -> int | None:
            for family in (socket.AF_INET, socket.AF_INET6):
                for route in self.rtnl.routes(family):
                    if route.dst != "default" or route.rtype != RTN_UNICAST:
                        continue
                    devices = [route.oif] if route.oif else [oif for _gw, oif in route.nexthops]
                    mtus = [m for m in map(self.rtnl.link_mtu, devices) if m is not None]
                    if mtus:
                        return min(mtus)
            return None

        return self._run("find uplink", body)

    def rename(self, link: str | int, new_name: str) -> None:
        """Rename an interface (it must be down)."""
        _check_ifname(new_name)
        self._set(link, "rename link", ifname=new_name)

    def move_to_ns(self, link: str | int, ns: str | int, new_name: str | None = None) -> None:
        """Move an interface into namespace ``ns`` (a name, a path, or an open descriptor of the
        namespace, left open: :func:`libnet.kernel.netns.open_own`), optionally renaming it."""
        if new_name is not None:
            _check_ifname(new_name)
        if isinstance(ns, int):
            fd, opened = ns, False
        else:
            try:
                fd, opened = os.open(netns.path_of(ns), os.O_RDONLY | os.O_CLOEXEC), True
            except FileNotFoundError:
                raise NoSuchNamespace("no such network namespace", netns=ns) from None
        try:
            attrs: dict[str, Any] = {"net_ns_fd": fd}
            if new_name is not None:
                attrs["ifname"] = new_name
            self._set(link, "move link to namespace", **attrs)
        finally:
            if opened:
                os.close(fd)

    def delete_link(self, link: str | int) -> None:
        """Delete an interface; one that is already gone is success."""

        def body() -> None:
            try:
                idx = self._index(link)
            except NoSuchLink:
                return
            self.ipr.link("del", index=idx)

        self._run_gone_ok("delete link", body, ifname=link)

    # --- addresses --------------------------------------------------------

    def add_address(self, link: str | int, cidr: str, nodad: bool = False) -> None:
        """Add an address (``"198.51.100.1/24"``) to an interface.

        ``nodad`` skips IPv6 duplicate address detection, so the address is
        usable at once instead of staying tentative for 1-2 s.
        """
        iface = _interface(cidr)
        flags = IFA_F_NODAD if nodad and iface.version == 6 else 0

        def body() -> None:
            self.ipr.addr(
                "add", index=self._index(link), address=str(iface.ip), prefixlen=iface.network.prefixlen, flags=flags
            )

        self._run("add address", body, ifname=link, address=cidr)

    def delete_address(self, link: str | int, cidr: str) -> None:
        """Remove an address; one that is already gone is success."""
        iface = _interface(cidr)

        def body() -> None:
            self.ipr.addr("del", index=self._index(link), address=str(iface.ip), prefixlen=iface.network.prefixlen)

        self._run_gone_ok("delete address", body, ifname=link, address=cidr)

    def addresses(self, link: str | int | None = None) -> list[str]:
        """Addresses as CIDR strings, of one interface or of all."""

        def body() -> list[str]:
            index = None if link is None else self._index(link)
            return [a.cidr for a in self.rtnl.addresses(index=index)]

        return self._run("list addresses", body, ifname=link)

    def addresses_by_link(self) -> list[tuple[str, int]]:
        """Every address of the namespace as (CIDR, interface index), in one dump."""
        return self._run("list addresses", lambda: [(a.cidr, a.ifindex) for a in self.rtnl.addresses()]) or []

    def tentative_addresses(self, link: str | int) -> list[str]:
        """IPv6 addresses of ``link`` still in duplicate address detection."""

        def body() -> list[str]:
            found = self.rtnl.addresses(socket.AF_INET6, self._index(link))
            return [a.cidr.split("/")[0] for a in found if a.flags & IFA_F_TENTATIVE]

        return self._run("list addresses", body, ifname=link)

    def address_flags(self, address: str) -> int | None:
        """The ``IFA_F_*`` flags of ``address`` on whichever link holds it, or
        None when no link does (see :data:`IFA_F_TENTATIVE`, :data:`IFA_F_DADFAILED`)."""
        ip = ipaddress.ip_address(address)
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET

        def body() -> int | None:
            for a in self.rtnl.addresses(family):
                if ipaddress.ip_address(a.cidr.split("/")[0]) == ip:
                    return a.flags
            return None

        return self._run("list addresses", body, address=address)

    # --- routes -----------------------------------------------------------

    def add_route(
        self,
        dst: str,
        via: str | None = None,
        dev: str | int | None = None,
        onlink: bool = False,
        family: int | None = None,
        src: str | None = None,
    ) -> None:
        """Add or replace a route (one atomic replace: what matched ``dst`` before is changed in place).

        ``dst`` is a CIDR or ``"default"``; ``via`` a gateway, ``dev`` the
        output interface (a connected route when ``via`` is None); ``onlink``
        lets the gateway sit outside the interface's subnets; ``src`` the
        preferred source address of packets that take the route.
        """
        spec = _route_spec(dst, via, family)
        if src is not None:
            spec["prefsrc"] = str(ipaddress.ip_address(src))

        def body() -> None:
            if dev is not None:
                spec["oif"] = self._index(dev)
            if onlink:
                spec["flags"] = RTNH_F_ONLINK
            self.ipr.route("replace", **spec)

        self._run("add route", body, dst=dst, via=via, ifname=dev)

    def delete_route(self, dst: str, via: str | None = None, family: int | None = None) -> None:
        """Delete a route; one that is already gone is success."""
        spec = _route_spec(dst, via, family)
        self._run_gone_ok("delete route", lambda: self.ipr.route("del", **spec), dst=dst)

    def route_at(self, dst: str, metric: int) -> tuple[int, int] | None:
        """The type (``RTN_*``: 1 unicast, 7 unreachable, ...) and protocol number (``RTPROT_*``)
        of the main table's route to exactly ``dst`` (a CIDR) with ``metric``; None: there is none."""
        spec = _route_spec(dst, None, None)
        net = ipaddress.ip_network(spec["dst"])

        def body() -> tuple[int, int] | None:
            for r in self.rtnl.routes(spec["family"]):
                if r.dst != "default" and ipaddress.ip_network(r.dst) == net and r.metric == metric:
                    return r.rtype, r.proto
            return None

        return self._run("list routes", body, dst=dst)

    def add_unreachable_route(self, dst: str, metric: int, proto: int) -> None:
        """Create (never replace) an ``unreachable`` route to ``dst`` with ``metric`` and protocol
        number ``proto``: packets it takes are dropped, their sender told EHOSTUNREACH.
        ``KernelObjectExists`` when a route to ``dst`` with that metric is there already."""
        spec = {**_route_spec(dst, None, None), "type": RTN_UNREACHABLE, "priority": metric, "proto": proto}
        self._run("add route", lambda: self.ipr.route("add", **spec), dst=dst)

    def delete_unreachable_route(self, dst: str, metric: int, proto: int) -> None:
        """Delete the ``unreachable`` route to ``dst`` with exactly ``metric`` and ``proto``
        (the kernel matches both); one already gone is success."""
        spec = {**_route_spec(dst, None, None), "type": RTN_UNREACHABLE, "priority": metric, "proto": proto}
        self._run_gone_ok("delete route", lambda: self.ipr.route("del", **spec), dst=dst)

    def routes(self, family: int = socket.AF_INET) -> list[Route]:
        """Routes of the main table for one address family."""

        def body() -> list[Route]:
            return [Route(r.dst, r.gateway, r.oif) for r in self.rtnl.routes(family)]

        return self._run("list routes", body)

    # --- neighbours and FDB -------------------------------------------------

    def replace_neighbours(self, link: str | int, entries: Iterable[Neighbour]) -> None:
        """Add or replace permanent neighbour entries (v4 and v6), in bulk."""
        items = list(entries)
        self._run("replace neighbours", lambda: self.neigh.replace_neighbours(self._index(link), items), ifname=link)

    def delete_neighbours(self, link: str | int, entries: Iterable[Neighbour]) -> None:
        """Delete neighbour entries in bulk; missing ones are fine."""
        items = list(entries)
        self._run("delete neighbours", lambda: self.neigh.delete_neighbours(self._index(link), items), ifname=link)

    def neighbours(self, link: str | int) -> list[Neighbour]:
        """The neighbour entries with a MAC on ``link``, sorted."""
        return self._run("dump neighbours", lambda: self.neigh.dump_neighbours(self._index(link)), ifname=link)

    def flush_neighbours(self, link: str | int) -> int:
        """Delete the permanent (programmed) neighbour entries of ``link``; returns how many."""
        return self._run("flush neighbours", lambda: self.neigh.flush_neighbours(self._index(link)), ifname=link)

    def flush_learned_neighbours(self, link: str | int) -> int:
        """Delete the neighbour entries the kernel learned on ``link`` (all but permanent and NOARP ones)."""
        return self._run(
            "flush learned neighbours", lambda: self.neigh.flush_learned_neighbours(self._index(link)), ifname=link
        )

    def replace_fdb(self, link: str | int, entries: Iterable[FdbEntry]) -> None:
        """Add or replace FDB entries (MAC -> VTEP) in bulk; flood entries append."""
        items = list(entries)
        self._run("replace fdb", lambda: self.neigh.replace_fdb(self._index(link), items), ifname=link)

    def delete_fdb(self, link: str | int, entries: Iterable[FdbEntry]) -> None:
        """Delete FDB entries in bulk; missing ones are fine."""
        items = list(entries)
        self._run("delete fdb", lambda: self.neigh.delete_fdb(self._index(link), items), ifname=link)

    def announce(self, links: Sequence[str], entries: Iterable[Neighbour]) -> int:
        """Gratuitous ARP (IPv4) and unsolicited Neighbor Advertisements (IPv6) for ``entries``, sent
        on each of ``links`` of this namespace (:mod:`libnet.kernel.announce`); returns the frames
        sent.  Never raises: an announcement only saves a container a retransmission."""
        ports, items = list(links), list(entries)
        try:
            return self._thread.call(send_announcements, ports, items)
        except Exception as exc:  # the namespace thread is gone
            log.debug("neighbour announcement in %s: %s", self.ns, exc)
            return 0

    def fdb(self, link: str | int) -> list[FdbEntry]:
        """The device's own FDB entries with a remote destination, sorted."""
        return self._run("dump fdb", lambda: self.neigh.dump_fdb(self._index(link)), ifname=link)

    def flush_fdb(self, link: str | int) -> None:
        """Delete all FDB entries of a VXLAN device in one kernel call."""
        self._run("flush fdb", lambda: self.neigh.flush_fdb(self._index(link)), ifname=link)


def _vxlan_spec(vni: int, local: str, port: int, learning: bool, proxy: bool, udp_csum: bool) -> dict[str, Any]:
    """pyroute2 attributes of a VXLAN device (``BadRequest`` on a bad VNI or address)."""
    if not 0 < vni < 1 << 24:
        raise BadRequest(f"VNI {vni} out of range 1..16777215", vni=vni)
    try:
        ip = ipaddress.ip_address(local)
    except ValueError:
        raise BadRequest(f"invalid VTEP address {local!r}", vtep=local) from None
    spec: dict[str, Any] = {
        "kind": "vxlan",
        "vxlan_id": vni,
        "vxlan_port": port,
        "vxlan_learning": int(learning),
        "vxlan_proxy": int(proxy),
    }
    if ip.version == 4:
        spec["vxlan_local"] = str(ip)
        spec["vxlan_udp_csum"] = int(udp_csum)
    else:
        spec["vxlan_local6"] = str(ip)
        spec["vxlan_udp_zero_csum6_tx"] = int(not udp_csum)
        spec["vxlan_udp_zero_csum6_rx"] = int(not udp_csum)
    return spec


def _interface(cidr: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    try:
        return ipaddress.ip_interface(cidr)
    except ValueError:
        raise BadRequest(f"invalid address {cidr!r}, expected ADDRESS/PREFIXLEN", address=cidr) from None


def _route_spec(dst: str, via: str | None, family: int | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"table": 254}
    try:
        gw = ipaddress.ip_address(via) if via else None
        net = None if dst == "default" else ipaddress.ip_network(dst)
    except ValueError as exc:
        raise BadRequest(f"invalid route: {exc}", dst=dst, via=via) from None
    version = net.version if net else gw.version if gw else 6 if family == socket.AF_INET6 else 4
    spec["family"] = socket.AF_INET if version == 4 else socket.AF_INET6
    spec["dst"] = str(net) if net else ("0.0.0.0/0" if version == 4 else "::/0")
    if gw is not None:
        if gw.version != version:
            raise BadRequest("gateway and destination are of different IP versions", dst=dst, via=via)
        spec["gateway"] = str(gw)
    return spec
