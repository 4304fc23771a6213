"""Raw rtnetlink: message framing, a batching socket, and the link, address
and route messages on libnet's hot paths.

pyroute2 costs 0.5-1.3 ms per request here (Python-side encoding, parsing and
a name lookup per call); attaching a container needs about eight requests.
These hand-packed messages go out together in one ``send`` and cost a few
microseconds each to build, so a join is dominated by the kernel's own work.
pyroute2 stays the tool for everything else (dumps, rare operations).

The kernel handles rtnetlink requests synchronously inside ``send``, so the
acknowledgements are already queued when it returns: a :class:`RtnlSocket`
can be used from the event loop thread without blocking it for long.  Create
it inside the namespace it should act on (``netns.open_socket``).

The same fact makes a batch atomic against a crash of this process: a
SIGKILL cannot fall between two messages of one ``send``.  libnet creates
its links marked that way: the create message, then a message setting the
link's alias (its ownership mark, :mod:`libnet.ownership`) by name -- the
kernel ignores ``IFLA_IFALIAS`` in a create.  Each message of a batch runs
even when an earlier one failed, so the second message would also mark a
link that already had the name: callers look the name up first, and
:func:`alias_body` can require the link's kind (a bridge's alias message
fails on anything that is not a bridge).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import logging
import socket
import struct
from collections.abc import Sequence
from typing import NamedTuple

from libnet.kernel.errors import from_errno
from libnet.kernel.wire import (
    AF_BRIDGE,
    ERR,
    IFA_ADDRESS,
    IFA_F_NODAD,
    IFA_FLAGS,
    IFA_LOCAL,
    IFADDR,
    IFF_UP,
    IFINFO,
    IFLA_ADDRESS,
    IFLA_BR_MCAST_SNOOPING,
    IFLA_BRPORT_ISOLATED,
    IFLA_BRPORT_MODE,
    IFLA_GROUP,
    IFLA_IFALIAS,
    IFLA_IFNAME,
    IFLA_INFO_DATA,
    IFLA_INFO_KIND,
    IFLA_INFO_SLAVE_DATA,
    IFLA_INFO_SLAVE_KIND,
    IFLA_LINKINFO,
    IFLA_MASTER,
    IFLA_MTU,
    IFLA_NET_NS_FD,
    IFLA_NUM_RX_QUEUES,
    IFLA_NUM_TX_QUEUES,
    IFLA_PROTINFO,
    MAX_ALIAS,
    NETLINK_CAP_ACK,
    NETLINK_GET_STRICT_CHK,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    RT_TABLE_MAIN,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTA_PRIORITY,
    RTA_TABLE,
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RTM_SETLINK,
    RTMSG,
    RTN_UNICAST,
    RTPROT_STATIC,
    SOL_NETLINK,
    U32,
    VETH_INFO_PEER,
    attr,
    attrs,
    cstr,
    iter_messages,
    message,
    nested,
    u32,
)

log = logging.getLogger("libnet.kernel.rtnl")

#: times a dump is taken when the kernel flags it interrupted (:meth:`RtnlSocket.dump`)
DUMP_ATTEMPTS = 5

#: a request of a batch: (message type, extra flags, body, what it does -- for errors)
Request = tuple[int, int, bytes, str]
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = 32, 33
#: netdevice(7): SIOCGIFINDEX takes a struct ifreq (name, then the index in its union)
SIOCGIFINDEX, SIOCGIFNAME, SIOCGIFMTU, IFNAMSIZ = 0x8933, 0x8910, 0x8921, 16
_IFREQ = struct.Struct("16si20x")
_IFINFO, _IFADDR, _RTMSG, _ERR, _U32 = IFINFO, IFADDR, RTMSG, ERR, U32

__all__ = [
    "IFLA_ADDRESS",
    "IFLA_BR_MCAST_SNOOPING",
    "IFLA_GROUP",
    "IFLA_IFALIAS",
    "IFLA_IFNAME",
    "IFLA_INFO_DATA",
    "IFLA_INFO_KIND",
    "IFLA_LINKINFO",
    "IFLA_MASTER",
    "IFLA_MTU",
    "IFLA_NET_NS_FD",
    "MAX_ALIAS",
    "NLM_F_CREATE",
    "NLM_F_EXCL",
    "NLM_F_REPLACE",
    "RTM_DELLINK",
    "RTM_DELROUTE",
    "RTM_NEWADDR",
    "RTM_NEWLINK",
    "RTM_NEWROUTE",
    "RTM_SETLINK",
    "Request",
    "RtnlSocket",
    "addr_body",
    "alias_body",
    "attr",
    "attrs",
    "bridge_body",
    "brport_body",
    "brport_byname_body",
    "check_alias",
    "cstr",
    "default_route_body",
    "delgroup_body",
    "ifinfo",
    "iter_messages",
    "message",
    "nested",
    "parse_address",
    "setlink_body",
    "u32",
    "veth_body",
]


# --- message bodies -------------------------------------------------------------


def ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, change)


def veth_body(
    name: str,
    peer: str,
    peer_ns_fd: int | None,
    mtu: int | None,
    master: int | None,
    peer_mac: str | None,
    up: bool = True,
    queues: int | None = 1,
) -> bytes:
    """RTM_NEWLINK body: a veth pair, the peer created directly in another namespace.

    ``queues``: the TX and RX queues of each end (None: the kernel's choice).  Left
    to the kernel, a veth gets one per possible CPU and then, registered already,
    is cut down to one in use -- and cutting down a registered device's queues
    waits for an RCU grace period (``synchronize_net`` in
    ``netif_set_real_num_tx_queues``), one per end: most of the time a veth's
    creation took on a machine with more than one CPU (perf, issue 22).  Asked for
    one queue each it is made so, and nothing waits.  One queue in use is what a
    veth gets either way; only raising it later (``ethtool -L``, for XDP) is not
    possible on these."""
    peer_attrs = [cstr(IFLA_IFNAME, peer)]
    if peer_ns_fd is not None:
        peer_attrs.append(u32(IFLA_NET_NS_FD, peer_ns_fd))
    if peer_mac:
        peer_attrs.append(attr(IFLA_ADDRESS, bytes.fromhex(peer_mac.replace(":", ""))))
    if mtu:
        peer_attrs.append(u32(IFLA_MTU, mtu))
    if queues is not None:
        peer_attrs += [u32(IFLA_NUM_TX_QUEUES, queues), u32(IFLA_NUM_RX_QUEUES, queues)]
    info = nested(
        IFLA_LINKINFO,
        cstr(IFLA_INFO_KIND, "veth"),
        nested(IFLA_INFO_DATA, attr(VETH_INFO_PEER, ifinfo() + b"".join(peer_attrs))),
    )
    parts = [ifinfo(0, IFF_UP if up else 0, IFF_UP if up else 0), cstr(IFLA_IFNAME, name)]
    if mtu:
        parts.append(u32(IFLA_MTU, mtu))
    if master:
        parts.append(u32(IFLA_MASTER, master))
    if queues is not None:
        parts += [u32(IFLA_NUM_TX_QUEUES, queues), u32(IFLA_NUM_RX_QUEUES, queues)]
    parts.append(info)
    return b"".join(parts)


def bridge_body(name: str, mtu: int | None = None, mac: str | None = None, mcast_snooping: bool = False) -> bytes:
    """RTM_NEWLINK body creating a bridge (down)."""
    parts = [ifinfo(), cstr(IFLA_IFNAME, name)]
    if mtu:
        parts.append(u32(IFLA_MTU, mtu))
    if mac:
        parts.append(attr(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", ""))))
    data = attr(IFLA_BR_MCAST_SNOOPING, bytes([int(mcast_snooping)]))
    parts.append(nested(IFLA_LINKINFO, cstr(IFLA_INFO_KIND, "bridge"), nested(IFLA_INFO_DATA, data)))
    return b"".join(parts)


def check_alias(alias: str) -> bytes:
    """The alias as the kernel stores it; ``ValueError`` if it cannot hold it."""
    raw = alias.encode()
    if not raw or len(raw) > MAX_ALIAS or b"\0" in raw:
        raise ValueError(f"a link alias must be 1-{MAX_ALIAS} bytes without NUL: {alias!r}")
    return raw


def alias_body(name: str, alias: str, kind: str | None = None) -> bytes:
    """RTM_NEWLINK body setting the alias of the link called ``name``.

    With ``kind`` the message carries that link kind and empty kind data,
    which the kernel accepts only for a link of that kind (a bridge's alias
    message fails with EOPNOTSUPP on ``eth0`` or ``lo``); veths have no such
    check (they cannot be changed through kind data at all).
    """
    body = ifinfo() + cstr(IFLA_IFNAME, name) + attr(IFLA_IFALIAS, check_alias(alias))
    if kind is not None:
        body += nested(IFLA_LINKINFO, cstr(IFLA_INFO_KIND, kind), nested(IFLA_INFO_DATA))
    return body


def setlink_body(
    index: int,
    up: bool | None = None,
    master: int | None = None,
    group: int | None = None,
    name: str | None = None,
    alias: str | None = None,
) -> bytes:
    """RTM_NEWLINK body changing an existing link: up/down, master (0 = none), group, name, alias."""
    body = ifinfo(index, IFF_UP if up else 0, IFF_UP if up is not None else 0)
    if master is not None:
        body += u32(IFLA_MASTER, master)
    if group is not None:
        body += u32(IFLA_GROUP, group)
    if name is not None:
        body += cstr(IFLA_IFNAME, name)
    if alias is not None:
        body += attr(IFLA_IFALIAS, check_alias(alias))
    return body


def brport_body(index: int, hairpin: bool | None = None, isolated: bool | None = None) -> bytes:
    """RTM_SETLINK body (family ``AF_BRIDGE``) setting bridge port flags of link
    ``index``, as ``bridge link set dev X hairpin on isolated on``: the attributes
    ``IFLA_BRPORT_MODE`` and ``IFLA_BRPORT_ISOLATED`` (u8) nested in ``IFLA_PROTINFO``."""
    flags = [(IFLA_BRPORT_MODE, hairpin), (IFLA_BRPORT_ISOLATED, isolated)]
    port = [attr(kind, bytes([int(on)])) for kind, on in flags if on is not None]
    return _IFINFO.pack(AF_BRIDGE, 0, index, 0, 0) + nested(IFLA_PROTINFO, *port)


def brport_byname_body(name: str, hairpin: bool | None = None, isolated: bool | None = None) -> bytes:
    """RTM_NEWLINK body setting bridge port flags of the link called ``name`` (a
    port of a bridge: the kernel refuses it with EOPNOTSUPP on any other link), as
    :func:`brport_body` does by index: ``IFLA_BRPORT_MODE`` (hairpin) and
    ``IFLA_BRPORT_ISOLATED`` as the bridge's slave data.  By name, so it can follow
    the message creating the port in one batch."""
    flags = [(IFLA_BRPORT_MODE, hairpin), (IFLA_BRPORT_ISOLATED, isolated)]
    port = [attr(kind, bytes([int(on)])) for kind, on in flags if on is not None]
    return (
        ifinfo()
        + cstr(IFLA_IFNAME, name)
        + nested(IFLA_LINKINFO, cstr(IFLA_INFO_SLAVE_KIND, "bridge"), nested(IFLA_INFO_SLAVE_DATA, *port))
    )


def delgroup_body(group: int) -> bytes:
    """RTM_DELLINK body deleting every link of a group at once (one kernel grace period for all)."""
    return ifinfo(0) + u32(IFLA_GROUP, group)


def parse_address(text: str) -> tuple[int, bytes, int]:
    """(family, packed address, prefix length) of an address or interface CIDR
    (``"198.51.100.2/24"``, ``"2001:db8::1"``: /32 or /128 without a prefix), as
    :func:`ipaddress.ip_interface` reads it; ``ValueError`` if it is none.

    The attach path builds four of these per join: ``ipaddress`` costs 20-50
    microseconds each (an IPv6 interface the most), ``inet_pton`` under one.
    Forms it does not take (netmasks, scope ids) go through ``ipaddress``."""
    addr, sep, plen = text.partition("/")
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    bits = 128 if fam == socket.AF_INET6 else 32
    if not sep or (plen.isascii() and plen.isdigit() and len(plen) <= 3 and int(plen) <= bits):
        try:
            return fam, socket.inet_pton(fam, addr), int(plen) if sep else bits
        except OSError:
            pass
    iface = ipaddress.ip_interface(text)  # ValueError for what is no address
    return (socket.AF_INET if iface.version == 4 else socket.AF_INET6), iface.ip.packed, iface.network.prefixlen


def addr_body(index: int, cidr: str, nodad: bool = False) -> bytes:
    """RTM_NEWADDR body for an interface address."""
    fam, packed, prefixlen = parse_address(cidr)
    flags = IFA_F_NODAD if nodad and fam == socket.AF_INET6 else 0
    return (
        _IFADDR.pack(fam, prefixlen, flags & 0xFF, 0, index)
        + attr(IFA_LOCAL, packed)
        + attr(IFA_ADDRESS, packed)
        + u32(IFA_FLAGS, flags)
    )


def default_route_body(gateway: str, oif: int) -> bytes:
    """RTM_NEWROUTE/RTM_DELROUTE body: the default route via ``gateway`` (an
    address; an interface CIDR's prefix is ignored) out of ``oif``."""
    fam, packed, _ = parse_address(gateway)
    return (
        _RTMSG.pack(fam, 0, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, 0, RTN_UNICAST, 0)
        + attr(RTA_GATEWAY, packed)
        + u32(RTA_OIF, oif)
    )


class DefaultRoute(NamedTuple):
    """A default route of a namespace's main table (an ``RTM_NEWROUTE`` answer)."""

    gateway: str | None  # the next hop's address, None for a device route (or several: ``nexthops``)
    oif: int | None  # the outgoing interface's index
    metric: int  # RTA_PRIORITY (IPv4 default 0, IPv6 1024)
    kind: str = "unicast"  # or blackhole, unreachable, prohibit, ... (rtnetlink(7) rtm_type)
    nexthops: tuple[tuple[str | None, int], ...] = ()  # (gateway, oif) of a multipath route


#: rtnetlink(7) rtm_type values a default route may have, by name
_ROUTE_KINDS = {
    1: "unicast",
    2: "local",
    3: "broadcast",
    5: "multicast",
    6: "blackhole",
    7: "unreachable",
    8: "prohibit",
    9: "throw",
}
RTA_MULTIPATH = 9
_RTNEXTHOP = struct.Struct("=HBBi")  # rtnexthop: len, flags, hops, ifindex


def _nexthops(fam: int, data: bytes) -> tuple[tuple[str | None, int], ...]:
    """The (gateway, oif) pairs of an ``RTA_MULTIPATH`` attribute."""
    out: list[tuple[str | None, int]] = []
    off = 0
    while off + _RTNEXTHOP.size <= len(data):
        length, _flags, _hops, ifindex = _RTNEXTHOP.unpack_from(data, off)
        if length < _RTNEXTHOP.size:
            break
        gw = attrs(memoryview(data[off : off + length]), _RTNEXTHOP.size).get(RTA_GATEWAY)
        out.append((socket.inet_ntop(fam, gw) if gw else None, ifindex))
        off += (length + 3) & ~3
    return tuple(out)


def parse_default_route(payload: memoryview) -> DefaultRoute | None:
    """The route in an ``RTM_NEWROUTE`` payload if it is a default route of the main
    table (of any type: unicast, blackhole, ...), else None."""
    fam, dst_len, _src, _tos, table, _proto, _scope, rtype, _flags = _RTMSG.unpack_from(payload, 0)
    if dst_len:
        return None
    found = attrs(payload, _RTMSG.size)
    if (_U32.unpack(found[RTA_TABLE])[0] if RTA_TABLE in found else table) != RT_TABLE_MAIN:
        return None
    gw = found.get(RTA_GATEWAY)
    oif = found.get(RTA_OIF)
    return DefaultRoute(
        socket.inet_ntop(fam, gw) if gw else None,
        _U32.unpack(oif)[0] if oif else None,
        _U32.unpack(found[RTA_PRIORITY])[0] if RTA_PRIORITY in found else 0,
        _ROUTE_KINDS.get(rtype, f"type {rtype}"),
        _nexthops(fam, found[RTA_MULTIPATH]) if RTA_MULTIPATH in found else (),
    )


class Address(NamedTuple):
    """An interface address (an ``RTM_NEWADDR`` answer), as ``ip addr`` lists it."""

    cidr: str  # IFA_ADDRESS with the prefix length (for a point-to-point link: the peer's)
    ifindex: int  # the interface's index
    flags: int  # IFA_F_* (IFA_FLAGS when the kernel sends it: the full 32 bits)


def parse_ifaddr(payload: memoryview) -> Address | None:
    """The address in an ``RTM_NEWADDR`` payload (None without IFA_ADDRESS or IFA_LOCAL)."""
    fam, prefixlen, flags, _scope, index = _IFADDR.unpack_from(payload, 0)
    found = attrs(payload, _IFADDR.size)
    raw = found.get(IFA_ADDRESS) or found.get(IFA_LOCAL)
    if raw is None:
        return None
    if IFA_FLAGS in found:
        flags = _U32.unpack(found[IFA_FLAGS])[0]
    return Address(f"{socket.inet_ntop(fam, raw)}/{prefixlen}", index, flags)


class MainRoute(NamedTuple):
    """A route of a namespace's main table (an ``RTM_NEWROUTE`` answer), as ``ip route`` lists it."""

    dst: str  # CIDR, "default" for 0.0.0.0/0 and ::/0
    gateway: str | None  # RTA_GATEWAY
    oif: int | None  # RTA_OIF
    metric: int  # RTA_PRIORITY, 0 when absent
    rtype: int  # rtm_type: RTN_UNICAST 1, RTN_UNREACHABLE 7, ... (rtnetlink(7))
    proto: int  # rtm_protocol: RTPROT_KERNEL 2, RTPROT_BOOT 3, RTPROT_STATIC 4, ...
    nexthops: tuple[tuple[str | None, int], ...] = ()  # (gateway, oif) of a multipath route


def parse_route(payload: memoryview) -> MainRoute | None:
    """The route in an ``RTM_NEWROUTE`` payload if it is in the main table, else None."""
    fam, dst_len, _src, _tos, table, proto, _scope, rtype, _flags = _RTMSG.unpack_from(payload, 0)
    found = attrs(payload, _RTMSG.size)
    if (_U32.unpack(found[RTA_TABLE])[0] if RTA_TABLE in found else table) != RT_TABLE_MAIN:
        return None
    dst = found.get(RTA_DST)
    gw = found.get(RTA_GATEWAY)
    oif = found.get(RTA_OIF)
    return MainRoute(
        f"{socket.inet_ntop(fam, dst)}/{dst_len}" if dst else "default" if not dst_len else f"?/{dst_len}",
        socket.inet_ntop(fam, gw) if gw else None,
        _U32.unpack(oif)[0] if oif else None,
        _U32.unpack(found[RTA_PRIORITY])[0] if RTA_PRIORITY in found else 0,
        rtype,
        proto,
        _nexthops(fam, found[RTA_MULTIPATH]) if RTA_MULTIPATH in found else (),
    )


# --- the socket -------------------------------------------------------------------


class RtnlSocket:
    """A raw NETLINK_ROUTE socket sending requests in batches.

    Acts on the namespace it was created in.  Not safe for concurrent use.
    """

    def __init__(self, sock: socket.socket | None = None) -> None:
        self.sock = sock or socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        for opt, size in ((_SO_SNDBUFFORCE, 4 << 20), (_SO_RCVBUFFORCE, 8 << 20)):
            with contextlib.suppress(PermissionError):  # not root: keep the default buffers
                self.sock.setsockopt(socket.SOL_SOCKET, opt, size)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        self.sock.bind((0, 0))
        self._seq = 1

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RtnlSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_seq(self, n: int = 1) -> int:
        first = self._seq
        self._seq = (self._seq + n) & 0x7FFFFFFF or 1
        return first

    def recv(self) -> bytes:
        try:
            return self.sock.recv(1 << 20)
        except OSError as exc:
            raise from_errno(exc.errno or errno.EIO, "netlink receive") from exc

    def send_chunk(self, msgs: list[bytes], last_seq: int) -> dict[int, int]:
        """Send messages at once; return {seq: errno} of those that failed.

        Only the last message needs ``NLM_F_ACK``: the kernel handles the
        messages of one ``send`` in order and answers a failure whether or not
        it was asked to, so the last one's acknowledgement (or error) ends the
        chunk and every error before it names its message by sequence number.
        Each answer is a datagram of its own: acknowledging every message
        would cost a ``recv`` each.  The messages carry consecutive sequence
        numbers ending at ``last_seq``; answers to others (left over from an
        earlier, interrupted exchange) are ignored.
        """
        first = last_seq - len(msgs) + 1
        self.sock.send(b"".join(msgs))
        failed: dict[int, int] = {}
        while True:
            for mtype, _flags, seq, payload in iter_messages(self.recv()):
                if mtype != NLMSG_ERROR or not first <= seq <= last_seq:
                    continue
                (err,) = _ERR.unpack_from(payload, 0)
                if err:
                    failed[seq] = -err
                if seq == last_seq:
                    return failed

    def request(self, requests: Sequence[Request], ignore: frozenset[int] = frozenset()) -> None:
        """Send (type, flags, body, what) requests in one batch, all acknowledged;
        raise the typed error of the first failure whose errno is not ignored."""
        failed = self.request_each(requests)
        for pos in sorted(failed):
            if failed[pos] not in ignore:
                raise from_errno(failed[pos], requests[pos][3])

    def request_each(self, requests: Sequence[Request]) -> dict[int, int]:
        """Send (type, flags, body, what) requests in one batch; return
        {position in ``requests``: errno} of those that failed.  An empty batch is
        done at once (a netlink ``send`` of nothing fails with ``ENODATA``)."""
        if not requests:
            return {}
        first = self.next_seq(len(requests))
        last = first + len(requests) - 1
        msgs = [  # an acknowledgement for the last one only (send_chunk)
            message(t, f | NLM_F_REQUEST | (NLM_F_ACK if first + i == last else 0), first + i, body)
            for i, (t, f, body, _w) in enumerate(requests)
        ]
        failed = self.send_chunk(msgs, last)
        return {seq - first: code for seq, code in failed.items()}

    def dump(self, mtype: int, body: bytes, what: str) -> list[tuple[int, memoryview]]:
        """A dump request (``NLM_F_DUMP``): the (type, payload) of every answer
        before ``NLMSG_DONE``; the typed error if the kernel refuses it.

        A dump the kernel flags ``NLM_F_DUMP_INTR`` (the table changed while it was
        read, so an entry may be missing or stale: netlink(7)) is taken again, up to
        :data:`DUMP_ATTEMPTS` times in all; the last one is returned if every one was
        interrupted (a namespace changing faster than it can be read), with a warning."""
        out: list[tuple[int, memoryview]] = []
        for _ in range(DUMP_ATTEMPTS):
            out, interrupted = self._dump_once(mtype, body, what)
            if not interrupted:
                return out
        log.warning("%s: the kernel's dump was interrupted by changes %d times; using the last", what, DUMP_ATTEMPTS)
        return out

    def _dump_once(self, mtype: int, body: bytes, what: str) -> tuple[list[tuple[int, memoryview]], bool]:
        seq = self.next_seq()
        self.sock.send(message(mtype, NLM_F_REQUEST | NLM_F_DUMP, seq, body))
        out: list[tuple[int, memoryview]] = []
        interrupted = False
        while True:
            for mtype_, flags, mseq, payload in iter_messages(self.recv()):
                if mseq != seq:
                    continue  # left over from an earlier, interrupted exchange
                interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
                if mtype_ == NLMSG_DONE:
                    return out, interrupted
                if mtype_ == NLMSG_ERROR:
                    (err,) = _ERR.unpack_from(payload, 0)
                    if err:
                        raise from_errno(-err, what)
                    return out, interrupted
                out.append((mtype_, payload))

    def default_routes(self, family: int) -> list[DefaultRoute]:
        """The unicast default routes of the main table of ``family`` (AF_INET, AF_INET6)."""
        answers = self.dump(RTM_GETROUTE, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0), "list routes")
        routes = (parse_default_route(p) for t, p in answers if t == RTM_NEWROUTE)
        return [r for r in routes if r is not None]

    def routes(self, family: int) -> list[MainRoute]:
        """The routes of the main table of ``family`` (AF_INET, AF_INET6), every type.

        One dump parsed here: pyroute2's ``get_routes`` built ~1,000 objects per route list
        (message, attribute slots), cycles that lived until the next full garbage collection
        and made each of those scan them (issue 22: network creation dumped routes three times)."""
        answers = self.dump(RTM_GETROUTE, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0), "list routes")
        routes = (parse_route(p) for t, p in answers if t == RTM_NEWROUTE)
        return [r for r in routes if r is not None]

    def addresses(self, family: int = socket.AF_UNSPEC, index: int | None = None) -> list[Address]:
        """The addresses of this namespace (of ``family``; of the link ``index`` only, if given),
        from one dump parsed here (as :meth:`routes`: no pyroute2 messages left for the
        garbage collector)."""
        answers = self.dump(RTM_GETADDR, _IFADDR.pack(family, 0, 0, 0, 0), "list addresses")
        found = (parse_ifaddr(p) for t, p in answers if t == RTM_NEWADDR)
        return [a for a in found if a is not None and (index is None or a.ifindex == index)]

    def link_mtu(self, index: int) -> int | None:
        """MTU of the link with ``index`` in this socket's namespace (``SIOCGIFNAME`` then
        ``SIOCGIFMTU``, netdevice(7)), or None if there is no such link."""
        name = self.link_name(index)
        if name is None:
            return None
        try:
            answer = fcntl.ioctl(self.sock.fileno(), SIOCGIFMTU, _IFREQ.pack(name.encode(), 0))
        except OSError:
            return None
        mtu: int = _IFREQ.unpack(answer)[1]
        return mtu

    def link_name(self, index: int) -> str | None:
        """Name of the link with ``index`` in this socket's namespace (an
        ``SIOCGIFNAME`` ioctl), or None if there is none."""
        try:
            answer = fcntl.ioctl(self.sock.fileno(), SIOCGIFNAME, _IFREQ.pack(b"", index))
        except OSError:
            return None
        raw: bytes = _IFREQ.unpack(answer)[0]
        return raw.split(b"\0", 1)[0].decode(errors="replace")

    def link_index(self, name: str) -> int | None:
        """Index of the link called ``name``, or None."""
        return self.link_indexes([name])[0]

    def link_indexes(self, names: Sequence[str]) -> list[int | None]:
        """Indexes of the links called ``names`` (None: no such link).

        An ``SIOCGIFINDEX`` ioctl each on this socket, which acts in the socket's
        namespace (netdevice(7)): a few microseconds, against some 200 for an
        ``RTM_GETLINK``, whose answer the kernel fills with every attribute of
        the link (statistics, per-family settings) under the rtnl lock and
        Python then parses.  :meth:`lookup` when the alias is wanted too."""
        fd = self.sock.fileno()
        out: list[int | None] = []
        for name in names:
            raw = name.encode()
            if not raw or len(raw) >= IFNAMSIZ or b"\0" in raw:
                out.append(None)  # no link can have that name
                continue
            try:
                answer = fcntl.ioctl(fd, SIOCGIFINDEX, _IFREQ.pack(raw, 0))
            except OSError as exc:
                if exc.errno == errno.ENODEV:
                    out.append(None)
                    continue
                raise from_errno(exc.errno or errno.EIO, "look up link", ifname=name) from exc
            out.append(_IFREQ.unpack(answer)[1])
        return out

    def lookup(self, names: Sequence[str]) -> list[tuple[int, str | None] | None]:
        """(index, alias) of the links called ``names`` (None: no such link), in one round trip."""
        first = self.next_seq(len(names))
        self.sock.send(
            b"".join(
                message(RTM_GETLINK, NLM_F_REQUEST, first + i, ifinfo() + cstr(IFLA_IFNAME, name))
                for i, name in enumerate(names)
            )
        )
        out: dict[int, tuple[int, str | None] | None] = {}
        while len(out) < len(names):
            for mtype, _flags, mseq, payload in iter_messages(self.recv()):
                pos = mseq - first
                if not 0 <= pos < len(names) or pos in out:
                    continue
                if mtype == NLMSG_ERROR:
                    (err,) = _ERR.unpack_from(payload, 0)
                    if -err not in (errno.ENODEV, errno.ENOENT):
                        raise from_errno(-err, "look up link", ifname=names[pos])
                    out[pos] = None
                elif mtype == RTM_NEWLINK:
                    alias = attrs(payload, _IFINFO.size).get(IFLA_IFALIAS)
                    text = alias.rstrip(b"\0").decode(errors="replace") if alias else None
                    out[pos] = (_IFINFO.unpack_from(payload, 0)[2], text or None)
        return [out[i] for i in range(len(names))]
