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
import ipaddress
import socket
import struct
from collections.abc import Iterator, Sequence

from libnet.kernel.errors import from_errno

# linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x100, 0x200, 0x400, 0x800
NLM_F_DUMP = 0x300
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR = 20
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_GROUP, IFLA_NET_NS_FD = 1, 3, 4, 10, 18, 27, 28
IFLA_IFALIAS = 20
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFLA_BR_MCAST_SNOOPING = 23
#: IFALIASZ - 1: the longest alias the kernel keeps
MAX_ALIAS = 255
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD = 0x02
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
RT_TABLE_MAIN, RTPROT_STATIC, RTN_UNICAST = 254, 4, 1
IFF_UP = 0x1
NLA_F_NESTED = 0x8000
SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_GET_STRICT_CHK = 10, 12
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = 32, 33

_HDR = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBi")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTA = struct.Struct("=HH")
_ERR = struct.Struct("=i")
_U32 = struct.Struct("=I")


# --- framing ------------------------------------------------------------------


def attr(kind: int, data: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    n = 4 + len(data)
    return _RTA.pack(n, kind) + data + b"\0" * (-n % 4)


def nested(kind: int, *parts: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(parts))


def u32(kind: int, value: int) -> bytes:
    return attr(kind, _U32.pack(value))


def cstr(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def message(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    """A whole netlink message (header + body)."""
    return _HDR.pack(16 + len(body), mtype, flags, seq, 0) + body


def iter_messages(buf: bytes) -> Iterator[tuple[int, int, int, memoryview]]:
    """Split a netlink buffer into (type, flags, seq, payload) tuples."""
    view = memoryview(buf)
    off, end = 0, len(buf)
    while off + 16 <= end:
        length, mtype, flags, seq, _pid = _HDR.unpack_from(buf, off)
        if length < 16 or off + length > end:
            break
        yield mtype, flags, seq, view[off + 16 : off + length]
        off += (length + 3) & ~3


def attrs(payload: memoryview, off: int) -> dict[int, bytes]:
    """The attributes of a payload after its fixed header of ``off`` bytes."""
    out: dict[int, bytes] = {}
    end = len(payload)
    while off + 4 <= end:
        alen, atype = _RTA.unpack_from(payload, off)
        if alen < 4:
            break
        out[atype & 0x3FFF] = bytes(payload[off + 4 : off + alen])
        off += (alen + 3) & ~3
    return out


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
) -> bytes:
    """RTM_NEWLINK body: a veth pair, the peer created directly in another namespace."""
    peer_attrs = [cstr(IFLA_IFNAME, peer)]
    if peer_ns_fd is not None:
        peer_attrs.append(u32(IFLA_NET_NS_FD, peer_ns_fd))
    if peer_mac:
        peer_attrs.append(attr(IFLA_ADDRESS, bytes.fromhex(peer_mac.replace(":", ""))))
    if mtu:
        peer_attrs.append(u32(IFLA_MTU, mtu))
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


def delgroup_body(group: int) -> bytes:
    """RTM_DELLINK body deleting every link of a group at once (one kernel grace period for all)."""
    return ifinfo(0) + u32(IFLA_GROUP, group)


def addr_body(index: int, cidr: str, nodad: bool = False) -> bytes:
    """RTM_NEWADDR body for an interface address."""
    iface = ipaddress.ip_interface(cidr)
    fam = socket.AF_INET if iface.version == 4 else socket.AF_INET6
    packed = iface.ip.packed
    flags = IFA_F_NODAD if nodad and iface.version == 6 else 0
    return (
        _IFADDR.pack(fam, iface.network.prefixlen, flags & 0xFF, 0, index)
        + attr(IFA_LOCAL, packed)
        + attr(IFA_ADDRESS, packed)
        + u32(IFA_FLAGS, flags)
    )


def default_route_body(gateway: str, oif: int) -> bytes:
    """RTM_NEWROUTE/RTM_DELROUTE body: the default route via ``gateway`` out of ``oif``."""
    gw = ipaddress.ip_address(gateway)
    fam = socket.AF_INET if gw.version == 4 else socket.AF_INET6
    return (
        _RTMSG.pack(fam, 0, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, 0, RTN_UNICAST, 0)
        + attr(RTA_GATEWAY, gw.packed)
        + u32(RTA_OIF, oif)
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

        Only the last message needs ``NLM_F_ACK``: failures are reported
        anyway, and its acknowledgement ends the chunk.
        """
        self.sock.send(b"".join(msgs))
        failed: dict[int, int] = {}
        while True:
            for mtype, _flags, seq, payload in iter_messages(self.recv()):
                if mtype != NLMSG_ERROR:
                    continue
                (err,) = _ERR.unpack_from(payload, 0)
                if err:
                    failed[seq] = -err
                if seq == last_seq:
                    return failed

    def request(self, requests: Sequence[tuple[int, int, bytes, str]], ignore: frozenset[int] = frozenset()) -> None:
        """Send (type, flags, body, what) requests in one batch, all acknowledged;
        raise the typed error of the first failure whose errno is not ignored."""
        failed = self.request_each(requests)
        for pos in sorted(failed):
            if failed[pos] not in ignore:
                raise from_errno(failed[pos], requests[pos][3])

    def request_each(self, requests: Sequence[tuple[int, int, bytes, str]]) -> dict[int, int]:
        """Send (type, flags, body, what) requests in one batch; return
        {position in ``requests``: errno} of those that failed."""
        first = self.next_seq(len(requests))
        msgs = [
            message(t, f | NLM_F_REQUEST | NLM_F_ACK, first + i, body) for i, (t, f, body, _w) in enumerate(requests)
        ]
        failed = self.send_chunk(msgs, first + len(requests) - 1)
        return {seq - first: code for seq, code in failed.items()}

    def link_index(self, name: str) -> int | None:
        """Index of the link called ``name``, or None."""
        return self.link_indexes([name])[0]

    def link_indexes(self, names: Sequence[str]) -> list[int | None]:
        """Indexes of the links called ``names`` (None: no such link), in one round trip."""
        return [None if found is None else found[0] for found in self.lookup(names)]

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
