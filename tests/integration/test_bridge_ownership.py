"""The bridge driver touches only what this libnet instance owns (issue 13, faults 1 and 2).

Every test runs in test-host namespaces; the root namespace is never touched.
Overlay addresses come from 198.51.100.0/24 and 2001:db8::/32 only.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from libnet import Config, Controller
from libnet.driverapi import NetworkInfo
from libnet.drivers.bridge import bridge_name
from libnet.errors import BadRequest, Conflict, InvalidOption
from libnet.info import net_info
from libnet.kernel.firewall import Firewall
from libnet.kernel.netlink import Netlink
from libnet.ownership import firewall_table, mark
from libnet.testing.hosts import Testbed
from libnet.testing.pools import ipam_config

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

OTHER_INSTANCE = "0123456789ab"
FOREIGN_VETH = "lnv" + "c0ffee00c0ff"  # named like libnet's veths, no mark
FOREIGN_BRIDGE = "lnb-f0f0f0f0f0f"  # named like libnet's bridges, no mark
OTHER_BRIDGE = "lnb-0a0a0a0a0a0"  # marked by another libnet instance
OTHER_MARK = mark(OTHER_INSTANCE, "net", "a" * 64, "theirs")
SINK = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 9999)); s.settimeout(2)
    print("ready", flush=True)
    try:
        print(s.recv(100).decode(), flush=True)
    except TimeoutError:
        print("nothing", flush=True)
    """
)
SEND = textwrap.dedent(
    """
    import socket, sys, time
    for _ in range(5):
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"hi", (sys.argv[1], 9999)); time.sleep(0.1)
    """
)
OTHER_TABLE = ["add table inet other", "add chain inet other c { type filter hook forward priority 5 ; }"]


def ns(path: str) -> str:
    return os.path.basename(path)


def ip(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).ip)


def nft(bed: Testbed, netns: str, command: str) -> str:
    r = bed.run(netns, ["nft", *command.split()], timeout=10)
    assert r.returncode == 0, r.stderr
    return r.stdout


def snapshot(netns: str, *names: str) -> dict:
    """What a test must find unchanged: the links (all attributes), their addresses and routes."""
    with Netlink(netns) as nl:
        links = {n: nl.link(n) for n in names}
        devs = {link.index for link in links.values()}
        routes = [r for f in (socket.AF_INET, socket.AF_INET6) for r in nl.routes(f) if r.dev in devs]
        return {
            "links": links,
            "addresses": {n: sorted(nl.addresses(n)) for n in names},
            "routes": sorted((r.dst, r.via or "", r.dev) for r in routes),
        }


def set_elements(bed: Testbed, netns: str, instance: str) -> str:
    return nft(bed, netns, f"list set inet {firewall_table(instance)} bridges")


def table(bed: Testbed, netns: str, instance: str) -> str:
    """The instance's nftables table as ``nft`` lists it ("" if there is none)."""
    return bed.run(netns, ["nft", "list", "table", "inet", firewall_table(instance)], timeout=10).stdout


def udp_reaches(bed: Testbed, src: str, dst: str, addr: str) -> bool:
    """Whether UDP datagrams from namespace ``src`` reach a socket in ``dst`` (one way:
    a ping also needs the way back, which the other network's own rule drops)."""
    sink = bed.spawn(dst, [sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline().strip() == "ready"
    bed.run(src, [sys.executable, "-c", SEND, addr], timeout=10)
    return sink.stdout.readline().strip() == "hi"


@pytest.fixture
def bed():
    with Testbed(1) as b:
        yield b


def config(bed: Testbed, state: str, tag: str) -> Config:
    return Config(
        store=f"sqlite://{state}/store.db",
        state_dir=state,
        host_netns=bed.hosts[0].ns,
        sandbox_prefix=f"{bed.prefix}{tag}-sb-",
        ipam=ipam_config(),
    )


@pytest.fixture
async def ctl(bed: Testbed, tmp_path):
    async with Controller(config(bed, str(tmp_path / "a"), "a")) as c:
        yield c


async def net(ctl: Controller, name: str, n: int, **kw):
    """A network with subnets of the documentation ranges (n: 0..3)."""
    return await ctl.create_network(
        name, ipv4_subnet=f"198.51.100.{64 * n}/26", ipv6_subnet=f"2001:db8:{n + 1}::/64", **kw
    )


async def test_bridge_name_of_a_host_interface_is_refused_and_left_alone(bed: Testbed, ctl: Controller) -> None:
    """Fault 1: ``bridge_name=eth0`` / ``lo``: Conflict, and eth0 (addresses, default route) and lo intact.

    Before: the create's rollback deleted eth0 (its alias was empty, so it
    passed for libnet's), and tried to delete lo (the error of that replaced
    the Conflict)."""
    host = bed.hosts[0].ns
    with Netlink(host) as nl:
        nl.add_route("default", via="203.0.113.1", dev="eth0", onlink=True)
        nl.add_route("default", via="2001:db8:ffff::1", dev="eth0", onlink=True)
    before = snapshot(host, "eth0", "lo")
    assert ("default", "203.0.113.1", before["links"]["eth0"].index) in before["routes"]
    for name in ("eth0", "lo"):
        with pytest.raises(Conflict) as err:
            await net(ctl, "x", 0, options={"bridge_name": name})
        assert name in str(err.value) and err.value.ids["ifname"] == name
        assert snapshot(host, "eth0", "lo") == before
        assert await ctl.networks() == []
        assert name not in table(bed, host, ctl.instance)  # no set element, no rule
    assert bed.ping(host, "127.0.0.1")
    # the driver's own create checks too (callers that skip check_network)
    drv = ctl.driver("bridge")
    info = NetworkInfo("e" * 64, "x", "198.51.100.0/26", "198.51.100.1/26", None, None, False, {"bridge_name": "eth0"})
    with pytest.raises(Conflict):
        await drv.create_network(info)
    await drv.delete_network(info)  # and a delete of a network whose bridge name is eth0 leaves it too
    assert snapshot(host, "eth0", "lo") == before


async def test_bridge_name_of_another_network_is_refused_and_isolation_holds(bed: Testbed, ctl: Controller) -> None:
    """Fault 2: naming another network's bridge is refused; that bridge stays in the
    isolation set (before: the rollback removed it), and reconcile repairs the set."""
    host = bed.hosts[0].ns
    first = await net(ctl, "first", 0, options={"bridge_name": "br-first"})
    third = await net(ctl, "third", 2)
    br = bridge_name(net_info(first))
    assert br == "br-first"
    # a name of libnet's own shape is refused before anything is looked up (issue 14, fault 8)
    with pytest.raises(InvalidOption):
        await net(ctl, "second", 1, options={"bridge_name": bridge_name(net_info(third))})
    a, c = await ctl.create_sandbox(), await ctl.create_sandbox()
    ea = await ctl.connect("first", a.id)
    await ctl.connect("third", c.id)
    assert not bed.ping(ns(c.netns), ip(ea.ipv4), wait=1)
    assert not udp_reaches(bed, ns(c.netns), ns(a.netns), ip(ea.ipv4))
    before = snapshot(host, br)
    with pytest.raises(Conflict) as err:
        await net(ctl, "second", 1, options={"bridge_name": br})
    assert not udp_reaches(bed, ns(c.netns), ns(a.netns), ip(ea.ipv4))  # before: it did
    assert br in set_elements(bed, host, ctl.instance)
    assert snapshot(host, br) == before
    assert br in str(err.value) and "first" in str(err.value)
    assert err.value.ids["owner_network_id"] == first.id
    assert not bed.ping(ns(c.netns), ip(ea.ipv4), wait=1)
    assert not bed.ping(ns(c.netns), ip(ea.ipv6), wait=1)
    # the same refusal straight from the driver's create: nothing of "first" goes either
    drv = ctl.driver("bridge")
    info = NetworkInfo(
        "f" * 64, "second", "198.51.100.64/26", "198.51.100.65/26", None, None, False, {"bridge_name": br}
    )
    with pytest.raises(Conflict):
        await drv.create_network(info)
    await drv.delete_network(info)
    assert br in set_elements(bed, host, ctl.instance) and snapshot(host, br) == before
    # drift: the element deleted by hand; reconcile puts it back
    nft(bed, host, f"delete element inet {firewall_table(ctl.instance)} bridges {{ {br} }}")
    assert br not in set_elements(bed, host, ctl.instance)
    assert udp_reaches(bed, ns(c.netns), ns(a.netns), ip(ea.ipv4))  # the hole a lost element makes
    report = await ctl.reconcile()
    assert br in set_elements(bed, host, ctl.instance)
    assert any(br in r and "isolation set" in r for r in report.repaired), report
    assert report.removed == [] and report.foreign == []
    assert not udp_reaches(bed, ns(c.netns), ns(a.netns), ip(ea.ipv4))


async def test_failed_create_undoes_only_its_own_steps(bed: Testbed, ctl: Controller, monkeypatch) -> None:
    """A create failing late (here: at its masquerade rules) removes its bridge, set
    element and rules, nothing of another network and no host interface.

    (A regression test of the step-wise rollback; the old blanket rollback passed it too.)"""
    host = bed.hosts[0].ns
    first = await net(ctl, "first", 0)
    first_br = bridge_name(net_info(first))
    rules_before = table(bed, host, ctl.instance)
    before = snapshot(host, "eth0", first_br)
    add = Firewall.add

    def failing_add(self: Firewall, key: str, rules) -> None:
        if key.endswith(":masq"):
            raise BadRequest("injected failure", key=key)
        add(self, key, rules)

    monkeypatch.setattr(Firewall, "add", failing_add)
    with pytest.raises(BadRequest, match="injected"):
        await net(ctl, "second", 1, options={"bridge_name": "br-second"})
    with Netlink(host) as nl:
        assert not nl.has_link("br-second")
    assert snapshot(host, "eth0", first_br) == before
    assert table(bed, host, ctl.instance) == rules_before
    assert [n.name for n in await ctl.networks()] == ["first"]


async def test_foreign_objects_are_reported_never_touched(bed: Testbed, ctl: Controller) -> None:
    """An unmarked lnv veth, an unmarked lnb bridge, a bridge marked by another instance
    and another program's nftables table: untouched through create, refusals,
    connect, reconcile, disconnect, delete; reported in ``foreign``.

    Before: reconcile deleted the lnv veth (named like libnet's, of no joined endpoint)."""
    host = bed.hosts[0].ns
    with Netlink(host) as nl:
        nl.add_veth(FOREIGN_VETH, "fpeer")
        nl.add_bridge(FOREIGN_BRIDGE)
        nl.add_address(FOREIGN_BRIDGE, "198.51.100.253/32")
        nl.set_up(FOREIGN_BRIDGE)
        nl.add_bridge(OTHER_BRIDGE)
        nl.set_alias(OTHER_BRIDGE, OTHER_MARK)
    for command in OTHER_TABLE:
        nft(bed, host, command)
    subprocess.run(
        ["ip", "netns", "exec", host, "nft", f'add rule inet other c iifname "{FOREIGN_BRIDGE}" counter accept'],
        check=True,
        timeout=10,
    )
    names = (FOREIGN_VETH, "fpeer", FOREIGN_BRIDGE, OTHER_BRIDGE)
    before = snapshot(host, *names)
    other_table = nft(bed, host, "list table inet other")

    def untouched() -> None:
        assert snapshot(host, *names) == before
        assert nft(bed, host, "list table inet other") == other_table

    for name in names:
        # libnet's own name shapes are refused outright (InvalidOption), the others as taken
        with pytest.raises(Conflict if name == "fpeer" else InvalidOption):
            await net(ctl, "taken", 3, options={"bridge_name": name})
        untouched()
    await net(ctl, "mine", 0)
    sb = await ctl.create_sandbox()
    await ctl.connect("mine", sb.id, ports=[{"host_port": 8080, "container_port": 80}])
    untouched()
    report = await ctl.reconcile()
    untouched()
    assert report.removed == [] and report.missing == []
    for name in (FOREIGN_VETH, FOREIGN_BRIDGE, OTHER_BRIDGE):
        assert any(name in f for f in report.foreign), (name, report.foreign)
    assert any(OTHER_INSTANCE in f for f in report.foreign)
    await ctl.disconnect("mine", sb.id)
    await ctl.delete_network("mine")
    assert (await ctl.reconcile()).removed == []
    untouched()
    # the instance's own table goes entirely; the other program's stays
    with Firewall(host, table=firewall_table(ctl.instance)) as fw:
        fw.delete_table()
    untouched()


async def test_two_instances_in_one_namespace_leave_each_other_alone(bed: Testbed, tmp_path) -> None:
    """Two controllers (two state dirs, two instance ids) sharing a host namespace:
    each one's reconcile leaves the other's bridges, veths and table alone.

    Before: the first reconcile deleted the other's veths (lnv*, of no endpoint of
    its store) and took the other's bridges and rules out of the shared table."""
    host = bed.hosts[0].ns
    async with (
        Controller(config(bed, str(tmp_path / "a"), "a")) as one,
        Controller(config(bed, str(tmp_path / "b"), "b")) as two,
    ):
        assert one.instance != two.instance
        eps = {}
        for ctl, n in ((one, 0), (two, 1)):
            await net(ctl, "web", n)
            x, y = await ctl.create_sandbox(), await ctl.create_sandbox()
            await ctl.connect("web", x.id)
            eps[ctl.instance] = (x, await ctl.connect("web", y.id))
        with Netlink(host) as nl:
            links = {link.name: link for link in nl.links()}
        tables = {c.instance: table(bed, host, c.instance) for c in (one, two)}
        assert len([n for n in links if n.startswith("lnv")]) == 4
        for ctl, other in ((one, two), (two, one)):
            report = await ctl.reconcile()
            assert report.removed == [] and report.missing == [] and report.repaired == [], report
            theirs = [f for f in report.foreign if other.instance in f]
            assert len(theirs) == 3, report.foreign  # their bridge and two veths
            with Netlink(host) as nl:
                assert {link.name: link for link in nl.links()} == links
            for c in (one, two):
                assert table(bed, host, c.instance) == tables[c.instance]
        for x, ey in eps.values():
            assert bed.ping(ns(x.netns), ip(ey.ipv4))
        for ctl in (one, two):  # each one's delete leaves the other's network working
            x, _ = eps[ctl.instance]
            await ctl.disconnect("web", x.id)
        await one.disconnect("web", eps[one.instance][1].sandbox_id)
        await one.delete_network("web")
        x, ey = eps[two.instance]
        other_sb = await two.create_sandbox()
        await two.connect("web", other_sb.id)
        assert bed.ping(ns(other_sb.netns), ip(ey.ipv4))
