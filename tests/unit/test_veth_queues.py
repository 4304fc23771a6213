"""A veth is created with one TX and one RX queue per end, asked for in the creating message.

Left to the kernel, each end gets one queue per possible CPU and is cut down to one
once registered, which waits for an RCU grace period per end (``synchronize_net`` in
``netif_set_real_num_tx_queues``, seen with perf as most of a veth's creation time)."""

from __future__ import annotations

import struct

from libnet.kernel import rtnl
from libnet.kernel.wire import IFLA_INFO_DATA, IFLA_NUM_RX_QUEUES, IFLA_NUM_TX_QUEUES, VETH_INFO_PEER


def _attrs(body: bytes, offset: int = 16) -> dict[int, bytes]:
    return rtnl.attrs(memoryview(body), offset)


def _queues(attrs: dict[int, bytes]) -> tuple[int | None, int | None]:
    tx, rx = attrs.get(IFLA_NUM_TX_QUEUES), attrs.get(IFLA_NUM_RX_QUEUES)
    return (struct.unpack("=I", tx)[0] if tx else None, struct.unpack("=I", rx)[0] if rx else None)


def test_both_ends_ask_for_one_queue() -> None:
    body = rtnl.veth_body("lnv0123", "eth0", 7, 1500, 3, "02:42:c6:33:64:02")
    outer = _attrs(body)
    assert _queues(outer) == (1, 1)
    info = _attrs(outer[rtnl.IFLA_LINKINFO], 0)
    peer = _attrs(_attrs(info[IFLA_INFO_DATA], 0)[VETH_INFO_PEER])  # an ifinfomsg, then the peer's attributes
    assert _queues(peer) == (1, 1)
    assert peer[rtnl.IFLA_IFNAME] == b"eth0\0" and struct.unpack("=I", peer[rtnl.IFLA_NET_NS_FD])[0] == 7


def test_the_kernels_choice_when_asked() -> None:
    body = rtnl.veth_body("lnv0123", "eth0", None, None, None, None, queues=None)
    outer = _attrs(body)
    peer = _attrs(_attrs(_attrs(outer[rtnl.IFLA_LINKINFO], 0)[IFLA_INFO_DATA], 0)[VETH_INFO_PEER])
    assert _queues(outer) == (None, None) and _queues(peer) == (None, None)
