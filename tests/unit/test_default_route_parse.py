"""Default routes as the kernel reports them (RTM_NEWROUTE), read for libnet's refusal message
when a sandbox holds a default route libnet did not make (libnet.kernel.sandbox)."""

from __future__ import annotations

import socket
import struct

from libnet.kernel import rtnl
from libnet.kernel.wire import RTMSG, attr, u32

RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE, RTA_MULTIPATH = 4, 5, 6, 15, 9


def route(rtype: int, *parts: bytes, fam: int = socket.AF_INET, dst_len: int = 0) -> memoryview:
    return memoryview(RTMSG.pack(fam, dst_len, 0, 0, 254, 4, 0, rtype, 0) + u32(RTA_TABLE, 254) + b"".join(parts))


def test_a_plain_default_route() -> None:
    r = rtnl.parse_default_route(
        route(1, attr(RTA_GATEWAY, socket.inet_aton("203.0.113.202")), u32(RTA_OIF, 7), u32(RTA_PRIORITY, 5))
    )
    assert r == rtnl.DefaultRoute("203.0.113.202", 7, 5, "unicast", ())


def test_a_blackhole_default_route_is_one_too() -> None:
    """Before, only unicast routes were read: the refusal then named "(unknown)"."""
    r = rtnl.parse_default_route(route(6))
    assert r is not None and r.kind == "blackhole" and r.gateway is None


def test_a_multipath_default_route_lists_its_next_hops() -> None:
    def hop(gw: str, oif: int) -> bytes:
        body = attr(RTA_GATEWAY, socket.inet_pton(socket.AF_INET6, gw))
        return struct.pack("=HBBi", 8 + len(body), 0, 0, oif) + body

    hops = hop("2001:db8:ff::2", 3) + hop("2001:db8:fe::2", 4)
    r = rtnl.parse_default_route(route(1, attr(RTA_MULTIPATH, hops), u32(RTA_PRIORITY, 1024), fam=socket.AF_INET6))
    assert r is not None and r.nexthops == (("2001:db8:ff::2", 3), ("2001:db8:fe::2", 4)) and r.metric == 1024
    main = rtnl.parse_route(route(1, attr(RTA_MULTIPATH, hops), fam=socket.AF_INET6))  # for the uplink's MTU
    assert main is not None and main.oif is None and main.nexthops == r.nexthops


def test_routes_that_are_not_default_are_skipped() -> None:
    assert rtnl.parse_default_route(route(1, attr(1, socket.inet_aton("198.51.100.0")), dst_len=24)) is None


def test_any_route_of_the_main_table_is_read_others_skipped() -> None:
    r = rtnl.parse_route(
        route(7, attr(1, socket.inet_pton(socket.AF_INET6, "2001:db8:9::")), u32(RTA_PRIORITY, 77), fam=10, dst_len=48)
    )
    assert r == rtnl.MainRoute("2001:db8:9::/48", None, None, 77, 7, 4)
    assert rtnl.parse_route(route(1, u32(RTA_OIF, 2)))[:3] == ("default", None, 2)  # type: ignore[index]
    other = memoryview(RTMSG.pack(socket.AF_INET, 0, 0, 0, 100, 4, 0, 1, 0) + u32(RTA_TABLE, 100))
    assert rtnl.parse_route(other) is None
