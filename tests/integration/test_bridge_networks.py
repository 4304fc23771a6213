"""Single-host bridge networks end to end: controller + bridge driver in test hosts."""

from __future__ import annotations

import ipaddress
import os
import sys
import textwrap

import pytest

from libnet import Config, Controller
from libnet.errors import LibnetError
from libnet.kernel.netlink import Netlink
from libnet.ownership import mark
from libnet.testing.hosts import Testbed
from libnet.testing.pools import ipam_config

pytestmark = pytest.mark.root

SERVER = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8); s.settimeout(30)
    print("ready", flush=True)
    while True:
        conn, peer = s.accept()
        conn.sendall(("hello " + peer[0] + "\\n").encode()); conn.close()
    """
)
CLIENT = textwrap.dedent(
    """
    import socket, sys
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    print(c.recv(100).decode().strip())
    """
)


def ns(path: str) -> str:
    return os.path.basename(path)


def ip(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).ip)


@pytest.fixture
def bed():
    with Testbed(2) as b:
        yield b


@pytest.fixture
async def ctl(bed: Testbed, tmp_path):
    config = Config(
        store=f"sqlite://{tmp_path}/store.db",
        state_dir=str(tmp_path),
        host_netns=bed.hosts[0].ns,
        sandbox_prefix=bed.prefix + "sb-",
        ipam=ipam_config(),  # networks without a subnet: documentation ranges
    )
    async with Controller(config) as c:
        yield c


def serve(bed: Testbed, netns: str, addr: str, port: int) -> None:
    proc = bed.spawn(netns, [sys.executable, "-c", SERVER, addr, str(port)], stdout=-1, text=True)
    assert proc.stdout.readline().strip() == "ready"


def fetch(bed: Testbed, netns: str, addr: str, port: int) -> str | None:
    r = bed.run(netns, [sys.executable, "-c", CLIENT, addr, str(port)], timeout=10)
    return r.stdout.strip() if r.returncode == 0 else None


async def test_same_network_talks_other_network_is_isolated(bed: Testbed, ctl: Controller) -> None:
    await ctl.create_network("front")
    await ctl.create_network("back")
    a, b, c = [await ctl.create_sandbox(hostname=n) for n in ("a", "b", "c")]
    ea = await ctl.connect("front", a.id)
    eb = await ctl.connect("front", b.id)
    ec = await ctl.connect("back", c.id)
    assert bed.ping(ns(a.netns), ip(eb.ipv4), count=3)
    assert bed.ping(ns(b.netns), ip(ea.ipv6), count=3)
    assert bed.ping(ns(a.netns), ip(eb.ipv6))
    assert not bed.ping(ns(c.netns), ip(ea.ipv4), wait=1)
    assert not bed.ping(ns(a.netns), ip(ec.ipv4), wait=1)
    assert not bed.ping(ns(c.netns), ip(ea.ipv6), wait=1)
    # a sandbox on both networks reaches both, through eth0 and eth1
    both = await ctl.connect("back", b.id)
    assert both.ifname == "eth1" and not both.gateway
    assert bed.ping(ns(b.netns), ip(ec.ipv4))
    out = bed.run(ns(b.netns), ["ip", "-o", "addr", "show", "dev", "eth0"]).stdout
    assert ip(eb.ipv4) in out and ip(eb.ipv6) in out and "tentative" not in out


async def test_internal_network_has_no_way_out(bed: Testbed, ctl: Controller) -> None:
    await ctl.create_network("private", internal=True)
    await ctl.create_network("public")
    a, b = await ctl.create_sandbox(), await ctl.create_sandbox()
    ea = await ctl.connect("private", a.id)
    eb = await ctl.connect("private", b.id)
    assert not ea.gateway
    assert bed.ping(ns(a.netns), ip(eb.ipv4))  # inside the network: fine
    outside = bed.hosts[1]
    assert not bed.ping(ns(a.netns), outside.ipv4, wait=1)
    assert bed.run(ns(a.netns), ["ip", "route", "show", "default"]).stdout.strip() == ""
    # a public sandbox on the same host reaches outside; masquerade shows the host's address
    p = await ctl.create_sandbox()
    await ctl.connect("public", p.id)
    serve(bed, outside.ns, "0.0.0.0", 9000)
    assert fetch(bed, ns(p.netns), outside.ipv4, 9000) == f"hello {bed.hosts[0].ipv4}"
    assert fetch(bed, ns(a.netns), outside.ipv4, 9000) is None


async def test_published_port_from_outside_host_and_containers(bed: Testbed, ctl: Controller) -> None:
    await ctl.create_network("web")
    await ctl.create_network("other")
    srv = await ctl.create_sandbox(hostname="srv")
    ep = await ctl.connect("web", srv.id, ports=[{"host_port": 8080, "container_port": 80}])
    serve(bed, ns(srv.netns), "0.0.0.0", 80)
    host = bed.hosts[0]
    assert fetch(bed, bed.hosts[1].ns, host.ipv4, 8080).startswith("hello ")  # from outside
    peer = await ctl.create_sandbox()
    await ctl.connect("web", peer.id)
    assert fetch(bed, ns(peer.netns), host.ipv4, 8080) is not None  # hairpin, same network
    stranger = await ctl.create_sandbox()
    await ctl.connect("other", stranger.id)
    assert fetch(bed, ns(stranger.netns), host.ipv4, 8080) is not None  # from another network
    assert not bed.ping(ns(stranger.netns), ip(ep.ipv4), wait=1)  # ... which stays isolated otherwise
    await ctl.disconnect("web", srv.id)
    assert fetch(bed, bed.hosts[1].ns, host.ipv4, 8080) is None  # withdrawn with the endpoint


async def test_icc_false_isolates_containers_from_each_other(bed: Testbed, ctl: Controller) -> None:
    nw = await ctl.create_network("quiet", options={"icc": False})
    a, b = await ctl.create_sandbox(), await ctl.create_sandbox()
    await ctl.connect("quiet", a.id)
    eb = await ctl.connect("quiet", b.id)
    assert not bed.ping(ns(a.netns), ip(eb.ipv4), wait=1)
    assert bed.ping(ns(a.netns), ip(nw.ipv4_gateway))


async def test_restart_keeps_state_and_reconcile_removes_leaks(bed: Testbed, ctl: Controller, tmp_path) -> None:
    nw = await ctl.create_network("web", options={"bridge_name": "br-web"})
    a, b = await ctl.create_sandbox(), await ctl.create_sandbox()
    await ctl.connect("web", a.id)
    eb = await ctl.connect("web", b.id)
    await ctl.close()
    me = ctl.config.instance_id
    with Netlink(bed.hosts[0].ns) as nl:  # leaks a crashed run could leave behind: marked as this instance's
        nl.add_veth("lnvdeadbeef0000", "leak-peer")
        nl.set_alias("lnvdeadbeef0000", mark(me, "ep", "d" * 64))
        nl.add_bridge("lnb-0123456789a")
        nl.set_alias("lnb-0123456789a", mark(me, "net", "0" * 64))
        nl.add_bridge("lnb-legacy")  # libnet's mark before instances, of no stored network: not provably ours
        nl.set_alias("lnb-legacy", "libnet:net:" + "1" * 64)
    again = Controller(ctl.config)
    await again.start()
    try:
        assert (await again.network("web")).id == nw.id
        assert (await again.endpoint(eb.id)).sandbox_id == b.id
        report = await again.reconcile()
        assert len(report.removed) == 2 and report.missing == []
        assert [f for f in report.foreign if "lnb-legacy" in f] == report.foreign and len(report.foreign) == 1
        with Netlink(bed.hosts[0].ns) as nl:
            assert not nl.has_link("lnvdeadbeef0000") and not nl.has_link("lnb-0123456789a")
            assert nl.has_link("br-web") and nl.has_link("lnb-legacy")
        assert bed.ping(ns(a.netns), ip(eb.ipv4))  # the data plane never stopped
        # a missing bridge is reported
        with Netlink(bed.hosts[0].ns) as nl:
            nl.delete_link("br-web")
        assert any("br-web" in m for m in (await again.reconcile()).missing)
    finally:
        await again.close()


async def test_join_that_fails_midway_leaves_nothing(bed: Testbed, ctl: Controller) -> None:
    nw = await ctl.create_network("web")
    path = f"/run/netns/{bed.namespace('ext')}"
    sb = await ctl.create_sandbox(netns=path)
    os.system(f"ip netns del {ns(path)}")  # the container died before the join
    with pytest.raises(LibnetError):
        await ctl.connect("web", sb.id)
    with Netlink(bed.hosts[0].ns) as nl:
        assert [link.name for link in nl.links() if link.name.startswith("lnv")] == []
    audit = await ctl.ipam.audit()
    assert {a.owner for a in audit} == {"gateway"} and len(audit) == 2
    assert await ctl.endpoints("web") == []
    assert nw.id


async def test_uplink_mtu_is_used(bed: Testbed, ctl: Controller) -> None:
    with Netlink(bed.hosts[0].ns) as nl:
        nl.set_mtu("eth0", 1400)
        nl.add_route("default", via="203.0.113.1", dev="eth0", onlink=True)
    await ctl.create_network("small")
    await ctl.create_network("big", options={"mtu": 1300})
    sb = await ctl.create_sandbox()
    await ctl.connect("small", sb.id)
    await ctl.connect("big", sb.id)
    out = bed.run(ns(sb.netns), ["ip", "-o", "link"]).stdout
    assert "eth0@" in out and " mtu 1400 " in out.split("eth0@")[1].splitlines()[0]
    assert " mtu 1300 " in out.split("eth1@")[1].splitlines()[0]


async def test_concurrent_connects_and_disconnects_configure_every_sandbox(bed: Testbed, ctl: Controller) -> None:
    """With other operations in flight the bridge driver hands plug + configure (join) and
    retire + unplug (leave) to the host thread in one go (issue 22); every sandbox still gets
    its addresses, default routes and a working link, and a disconnect frees its eth0 at once."""
    import asyncio

    await ctl.create_network("busy")
    boxes = [await ctl.create_sandbox(hostname=f"b{i}") for i in range(6)]
    for _round in range(2):
        eps = await asyncio.gather(*(ctl.connect("busy", sb.id) for sb in boxes))
        for sb, ep in zip(boxes, eps, strict=True):
            out = bed.run(ns(sb.netns), ["ip", "-o", "addr", "show", "dev", "eth0"]).stdout
            assert (
                ip(ep.ipv4) in out
                and ip(ep.ipv6) in out
                and "state UP" in bed.run(ns(sb.netns), ["ip", "link", "show", "eth0"]).stdout
            )
            routes = bed.run(ns(sb.netns), ["ip", "route", "show", "default"]).stdout
            assert "default via" in routes, routes
        assert bed.ping(ns(boxes[0].netns), ip(eps[-1].ipv4), count=1)
        await asyncio.gather(*(ctl.disconnect("busy", sb.id) for sb in boxes))
        for sb in boxes:
            names = bed.run(ns(sb.netns), ["ip", "-o", "link", "show"]).stdout
            assert " eth0:" not in names, names  # retired (renamed), so the next connect takes eth0
