"""The hot path's address parsing (inet_pton) reads what ipaddress reads, and refuses what it refuses."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from libnet.kernel import rtnl

GOOD = [
    "198.51.100.2/24",
    "198.51.100.2",
    "0.0.0.0/0",
    "203.0.113.7/32",
    "2001:db8::1/64",
    "2001:DB8:0:0::1/64",
    "2001:db8::1",
    "::/0",
    "::ffff:198.51.100.2/128",
    "198.51.100.2/255.255.255.0",  # a netmask: through ipaddress
    "198.51.100.2/024",
]
BAD = [
    "",
    "/24",
    "198.51.100.2/33",
    "2001:db8::1/129",
    "198.51.100",
    "198.51.100.2/-1",
    "x/24",
    "198.51.100.2/ 24",
    "2001:db8::1/٦٤",
    "198.51.100.256/24",
    "01.2.3.4/8",
]


@pytest.mark.parametrize("text", GOOD)
def test_as_ipaddress_reads_it(text: str) -> None:
    iface = ipaddress.ip_interface(text)
    family = socket.AF_INET if iface.version == 4 else socket.AF_INET6
    assert rtnl.parse_address(text) == (family, iface.ip.packed, iface.network.prefixlen)


@pytest.mark.parametrize("text", BAD)
def test_refused_as_ipaddress_refuses_it(text: str) -> None:
    with pytest.raises(ValueError):
        ipaddress.ip_interface(text)
    with pytest.raises(ValueError):
        rtnl.parse_address(text)


def test_bodies_carry_the_parsed_address() -> None:
    body = rtnl.addr_body(5, "2001:db8::5/64", nodad=True)
    assert struct.unpack_from("=BBBBi", body) == (socket.AF_INET6, 64, 0x02, 0, 5)
    assert ipaddress.ip_address("2001:db8::5").packed in body
    route = rtnl.default_route_body("198.51.100.1/24", 7)
    assert route[0] == socket.AF_INET and ipaddress.ip_address("198.51.100.1").packed in route
