"""The netlink wire format: constants and message framing, declared once.

Both hand-packed paths -- :mod:`libnet.kernel.rtnl` (links, addresses,
routes) and :mod:`libnet.kernel.neighbours` (neighbour and FDB entries) --
take their numbers and their framing from here.  Values from
``linux/netlink.h``, ``linux/rtnetlink.h``, ``linux/if_link.h``,
``linux/if_addr.h`` and ``linux/neighbour.h``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

# --- linux/netlink.h ------------------------------------------------------------
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x100, 0x200, 0x400, 0x800
NLM_F_BULK = 0x200  # on delete requests
NLM_F_DUMP = 0x300
NLM_F_DUMP_INTR = 0x10  # on a dump's answers: the table changed while it was read (netlink(7))
NLA_F_NESTED = 0x8000
SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_GET_STRICT_CHK = 10, 12

# --- linux/rtnetlink.h ------------------------------------------------------------
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
RT_TABLE_MAIN, RTPROT_STATIC, RTN_UNICAST = 254, 4, 1
AF_BRIDGE = 7

# --- linux/if_link.h, linux/if.h ---------------------------------------------------
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_GROUP, IFLA_NET_NS_FD = 1, 3, 4, 10, 18, 27, 28
IFLA_IFALIAS = 20
IFLA_NUM_TX_QUEUES, IFLA_NUM_RX_QUEUES = 31, 32
IFLA_PROTINFO = 12
# --- linux/if_link.h: bridge port attributes (nested in IFLA_PROTINFO, AF_BRIDGE) ---------
IFLA_BRPORT_MODE, IFLA_BRPORT_ISOLATED = 4, 33
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 4, 5
IFLA_BR_MCAST_SNOOPING = 23
IFF_UP = 0x1
#: IFALIASZ - 1: the longest alias the kernel keeps
MAX_ALIAS = 255

# --- linux/if_addr.h ----------------------------------------------------------------
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD, IFA_F_DADFAILED, IFA_F_TENTATIVE = 0x02, 0x08, 0x40

# --- linux/neighbour.h ----------------------------------------------------------------
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
NTF_SELF, NTF_MASTER = 0x02, 0x04
NDA_DST, NDA_LLADDR, NDA_IFINDEX = 1, 2, 8

# --- structures ------------------------------------------------------------------------
HDR = struct.Struct("=IHHII")  # nlmsghdr
IFINFO = struct.Struct("=BxHiII")  # ifinfomsg
IFADDR = struct.Struct("=BBBBi")  # ifaddrmsg
RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg
NDMSG = struct.Struct("=BBHiHBB")  # ndmsg
RTA = struct.Struct("=HH")  # rtattr / nlattr header
ERR = struct.Struct("=i")  # nlmsgerr's error
U32 = struct.Struct("=I")


def attr(kind: int, data: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    n = 4 + len(data)
    return RTA.pack(n, kind) + data + b"\0" * (-n % 4)


def nested(kind: int, *parts: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(parts))


def u32(kind: int, value: int) -> bytes:
    return attr(kind, U32.pack(value))


def cstr(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def message(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    """A whole netlink message (header + body)."""
    return HDR.pack(16 + len(body), mtype, flags, seq, 0) + body


def iter_messages(buf: bytes) -> Iterator[tuple[int, int, int, memoryview]]:
    """Split a netlink buffer into (type, flags, seq, payload) tuples."""
    view = memoryview(buf)
    off, end = 0, len(buf)
    while off + 16 <= end:
        length, mtype, flags, seq, _pid = HDR.unpack_from(buf, off)
        if length < 16 or off + length > end:
            break
        yield mtype, flags, seq, view[off + 16 : off + length]
        off += (length + 3) & ~3


def attrs(payload: memoryview, off: int) -> dict[int, bytes]:
    """The attributes of a payload after its fixed header of ``off`` bytes."""
    out: dict[int, bytes] = {}
    end = len(payload)
    while off + 4 <= end:
        alen, atype = RTA.unpack_from(payload, off)
        if alen < 4:
            break
        out[atype & 0x3FFF] = bytes(payload[off + 4 : off + alen])
        off += (alen + 3) & ~3
    return out
