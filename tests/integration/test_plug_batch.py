"""The hot path's veth: created, marked and given its port flags in one kernel request."""

from __future__ import annotations

import socket

import pytest

from libnet.errors import KernelError, NoSuchLink
from libnet.kernel import netns, rtnl
from libnet.kernel.netlink import Netlink
from libnet.testing.hosts import Testbed

pytestmark = pytest.mark.root


def _isolated(nl: Netlink, name: str) -> bool:
    links = nl.call(lambda: list(nl.ipr.get_links(family=socket.AF_BRIDGE)))
    msg = next(m for m in links if m.get("ifname") == name)
    return bool(msg.get("IFLA_PROTINFO").get("IFLA_BRPORT_ISOLATED"))


def test_port_flags_come_in_the_creating_request(single: Testbed, monkeypatch) -> None:
    sb = single.namespace("batch")
    with Netlink(single.hosts[0].ns) as nl:
        nl.add_bridge("br-batch")
        nl.plug_veth_here("vb-warm", "eth9", sb, "br-batch")  # opens the calling thread's socket
        sock = nl._here[1]  # type: ignore[index]
        sends: list[int] = []
        real = sock.send_chunk
        monkeypatch.setattr(sock, "send_chunk", lambda msgs, last: sends.append(len(msgs)) or real(msgs, last))
        index = nl.plug_veth_here("vb-a", "eth0", sb, "br-batch", 1400, None, "mark-b", hairpin=True, isolated=True)
        assert sends == [3]  # create, mark, port flags: one request
        assert nl.link("vb-a").index == index and nl.link("vb-a").alias == "mark-b"
        assert nl.hairpin_ports()["vb-a"] and _isolated(nl, "vb-a")
        assert not _isolated(nl, "vb-warm")


def test_a_refused_port_flag_leaves_no_veth(single: Testbed, monkeypatch) -> None:
    sb = single.namespace("batch2")
    with Netlink(single.hosts[0].ns) as nl:
        nl.add_bridge("br-batch2")
        # the flags addressed to the bridge itself, which is no bridge port: the kernel refuses them
        real = rtnl.brport_byname_body
        monkeypatch.setattr(rtnl, "brport_byname_body", lambda name, **flags: real("br-batch2", **flags))
        with pytest.raises(KernelError):
            nl.plug_veth_here("vb-b", "eth0", sb, "br-batch2", hairpin=True)
        with pytest.raises(NoSuchLink):
            nl.link_index("vb-b")
        assert netns.run_in(sb, lambda: sorted(n for _, n in socket.if_nameindex())) == ["lo"]


def test_both_ends_are_made_with_one_queue(single: Testbed) -> None:
    # the kernel's choice is one per possible CPU, cut down to one in use after registration,
    # which waits for an RCU grace period per end (see rtnl.veth_body)
    sb = single.namespace("queues")
    with Netlink(single.hosts[0].ns) as nl, Netlink(sb) as inside:
        nl.add_bridge("br-q")
        nl.plug_veth_here("vb-q", "eth0", sb, "br-q", 1400, None, "mark-q", hairpin=True)
        nl.plug_veth("vb-q2", "eth1", sb, "br-q", 1400, None, "mark-q2")  # on the namespace's thread
        for handle, name in ((nl, "vb-q"), (inside, "eth0"), (nl, "vb-q2"), (inside, "eth1")):
            msg = handle.call(lambda h=handle, n=name: h.ipr.get_links(h.link_index(n))[0])
            assert (msg.get("IFLA_NUM_TX_QUEUES"), msg.get("IFLA_NUM_RX_QUEUES")) == (1, 1), name
        assert inside.link("eth0").mtu == 1400 and nl.link("vb-q").alias == "mark-q"
