"""Marks on links without a kernel: the rtnetlink messages and the bridge driver's rules."""

from __future__ import annotations

import asyncio
import struct

import pytest

from libnet.driverapi import EndpointInfo, NetworkInfo
from libnet.drivers.bridge import BridgeDriver, _orphan, describe, link_mark
from libnet.errors import BadRequest
from libnet.kernel import rtnl
from libnet.kernel.netlink import Link
from libnet.ownership import Mark, mark

ME, OTHER = "a1b2c3d4e5f6", "0123456789ab"
NET = "1" * 64


def parse(body: bytes) -> tuple[tuple[int, ...], dict[int, bytes]]:
    """(ifinfomsg fields, attributes) of an RTM_NEWLINK body."""
    return struct.unpack_from("=BxHiII", body), rtnl.attrs(memoryview(body), 16)


def test_alias_message_names_the_link_and_carries_the_mark() -> None:
    head, attrs = parse(rtnl.alias_body("lnb-x", "libnet:m"))
    assert head[2] == 0  # by name, not index
    assert attrs[rtnl.IFLA_IFNAME] == b"lnb-x\0" and attrs[rtnl.IFLA_IFALIAS] == b"libnet:m"
    assert rtnl.IFLA_LINKINFO not in attrs


def test_bridge_alias_message_requires_a_bridge() -> None:
    _, attrs = parse(rtnl.alias_body("lnb-x", "libnet:m", kind="bridge"))
    info = rtnl.attrs(memoryview(attrs[rtnl.IFLA_LINKINFO]), 0)
    assert info[rtnl.IFLA_INFO_KIND] == b"bridge\0" and info[rtnl.IFLA_INFO_DATA] == b""


@pytest.mark.parametrize("alias", ["", "x" * 256, "a\0b"])
def test_aliases_the_kernel_cannot_keep_are_refused(alias: str) -> None:
    with pytest.raises(ValueError):
        rtnl.alias_body("lnb-x", alias)
    assert rtnl.check_alias("x" * 255)


def test_bridge_create_and_setlink_bodies() -> None:
    _, attrs = parse(rtnl.bridge_body("br0", mtu=1400))
    assert attrs[rtnl.IFLA_IFNAME] == b"br0\0" and struct.unpack("=I", attrs[rtnl.IFLA_MTU]) == (1400,)
    info = rtnl.attrs(memoryview(attrs[rtnl.IFLA_LINKINFO]), 0)
    assert info[rtnl.IFLA_INFO_KIND] == b"bridge\0"
    data = rtnl.attrs(memoryview(info[rtnl.IFLA_INFO_DATA]), 0)
    assert data[rtnl.IFLA_BR_MCAST_SNOOPING] == b"\0"
    head, attrs = parse(rtnl.setlink_body(7, up=True, alias="libnet:m"))
    assert head[2] == 7 and attrs[rtnl.IFLA_IFALIAS] == b"libnet:m"
    assert rtnl.IFLA_IFALIAS not in parse(rtnl.setlink_body(7, up=True))[1]


def test_link_mark_keeps_the_owner_even_without_a_usable_name() -> None:
    assert Mark.parse(link_mark(ME, "net", NET, "web")) == Mark(ME, "net", NET, "web")
    assert Mark.parse(link_mark(ME, "ep", NET, "a:b")) == Mark(ME, "ep", NET, "")
    assert len(link_mark(ME, "ep", NET, "n" * 63)) <= rtnl.MAX_ALIAS


def link(name: str, kind: str | None, alias: str | None) -> Link:
    return Link(5, name, kind, 1500, "02:00:00:00:00:01", True, None, alias)


def test_describe_names_the_owner_or_says_it_is_not_libnets() -> None:
    assert describe(link("eth0", "veth", None)) == "veth eth0 (not libnet's)"
    text = describe(link("lnb-x", "bridge", mark(OTHER, "net", NET, "web")))
    assert "network web" in text and OTHER in text
    assert "no libnet mark" in describe(link("lnb-y", "bridge", "libnet:net:" + NET))


def test_only_the_drivers_own_kinds_of_link_can_be_orphans() -> None:
    nets = {NET: NetworkInfo(NET, "web", None, None, None, None, False, {})}
    ep = EndpointInfo("2" * 64, NET, "a", None, None, "02:00:00:00:00:02")
    joined = {ep.id: ep}
    gone = "3" * 64
    assert _orphan(link("lnb-x", "bridge", ""), Mark(ME, "net", gone), nets, joined)
    assert not _orphan(link("lnb-x", "bridge", ""), Mark(ME, "net", NET), nets, joined)
    assert not _orphan(link("vx0", "vxlan", ""), Mark(ME, "net", gone), nets, joined)  # another driver's
    assert _orphan(link("lnv333333333333", "veth", ""), Mark(ME, "ep", gone), nets, joined)
    assert not _orphan(link("lnv222222222222", "veth", ""), Mark(ME, "ep", ep.id), nets, joined)
    assert not _orphan(link("other", "veth", ""), Mark(ME, "ep", gone), nets, joined)


def test_bridge_driver_touches_no_kernel_without_an_instance() -> None:
    drv = BridgeDriver(host_ns="nowhere")
    nw = NetworkInfo(NET, "web", None, None, None, None, False, {"bridge_name": None, "mtu": None, "icc": True})
    with pytest.raises(BadRequest, match="instance"):
        asyncio.run(drv.create_network(nw))
    with pytest.raises(BadRequest, match="instance"):
        drv.fw  # noqa: B018
    assert drv._nl is None and drv._fw is None
