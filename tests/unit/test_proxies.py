"""Network proxies with fakes: model, API checks, backend following, rules, reconcile."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from ipam.ipam import StoreIpam
from libnet import Config, Controller
from libnet.driverapi import ReconcileReport
from libnet.errors import (
    BadRequest,
    Conflict,
    InvalidName,
    InvalidOption,
    NameInUse,
    NoSuchNetwork,
    NoSuchProxy,
    ProxyInUse,
)
from libnet.kernel import proxy_nat
from libnet.proxies import parse_services
from libnet.store.memory import MemoryStore
from libnet.testing.fakes import FakeDriver, FakeNamespaces, FakeProxyPlane


@dataclass(frozen=True)
class Peer:
    endpoint_id: str
    network_id: str
    name: str
    ipv4: str | None
    ipv6: str | None
    aliases: tuple[str, ...] = ()
    services: tuple[str, ...] = ()


class PeeringDriver(FakeDriver):
    """A fake overlay: other hosts' endpoints come from ``peers``."""

    def __init__(self) -> None:
        super().__init__("overlay", "global")
        self.peer_listeners: list = []
        self.peers: dict[str, list[Peer]] = {}

    def remote_endpoints(self, network_id: str) -> list[Peer]:
        return self.peers.get(network_id, [])


@pytest.fixture
async def ctl(tmp_path):
    store = MemoryStore()
    c = Controller(
        Config(state_dir=str(tmp_path), resolv_conf=str(tmp_path / "resolv.conf")),
        store=store,
        ipam=StoreIpam(store),
        drivers={"bridge": FakeDriver("bridge"), "overlay": PeeringDriver()},
        namespaces=FakeNamespaces(),
        proxy_plane=FakeProxyPlane(),
    )
    (tmp_path / "resolv.conf").write_text("nameserver 198.51.100.53\n")
    await c.start()
    yield c
    await c.close()


def plane(c: Controller) -> FakeProxyPlane:
    p = c._parts.proxy_plane
    assert isinstance(p, FakeProxyPlane)
    return p


async def table(c: Controller, name: str) -> proxy_nat.ProxyTable:
    return plane(c).tables[(await c.sandbox((await c.proxy(name)).id)).netns]


async def backend(c: Controller, net: str, name: str, aliases=("db",)):
    sb = await c.create_sandbox()
    return await c.connect(net, sb.id, name=name, aliases=list(aliases))


def test_service_specs() -> None:
    assert parse_services(["DB:5432"]) == [{"alias": "db", "port": 5432, "protocol": "tcp", "listen": 5432}]
    assert parse_services(["dns:53/udp"], 5353)[0]["listen"] == 5353
    bad_specs = (["db"], ["db:0"], ["db:65536"], ["db:5432/sctp"], ["db:5432/tpc"], ["db:5432/"], ["db:5432/udp/"])
    for bad in (*bad_specs, ["-x:1"], [], "db:1", ["db:1", "db:1"], ["db:\uff15"]):  # "db:5432/": breaker, issue 21
        with pytest.raises((InvalidOption, InvalidName)):
            parse_services(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidOption, match="needs exactly one service, not 2"):
        parse_services(["a:1", "b:2"], 99)


def test_rules_spread_refuse_and_snat() -> None:
    t = proxy_nat.ProxyTable(
        "eth0",
        "eth1",
        "198.51.100.3",
        "2001:db8:a::3",
        "198.51.100.9",
        "2001:db8:b::9",
        (
            proxy_nat.Forward(5432, "tcp", 5432, ("198.51.100.20", "198.51.100.21", "2001:db8:b::20")),
            proxy_nat.Forward(53, "udp", 5353, ()),
        ),
    )
    rules = proxy_nat.rules(t)
    dnats = [e[-1]["dnat"] for c, e in rules if c == "pre"]
    assert dnats[0]["family"] == "ip" and dnats[0]["port"] == 5432
    assert dnats[0]["addr"]["map"]["key"]["numgen"]["mod"] == 2  # round robin over the two v4 backends
    assert dnats[1] == {"family": "ip6", "addr": "2001:db8:b::20", "port": 5432}  # one v6 backend: plain DNAT
    assert len(dnats) == 2  # udp/53 has no backend: no DNAT ...
    rejects = [e[-1]["reject"] for c, e in rules if c == "fwd" and "reject" in e[-1]]
    assert {"type": "icmpx", "expr": "port-unreachable"} in rejects  # ... but a refusal, not a black hole
    assert {"type": "tcp reset"} in rejects
    snats = [e[-1]["snat"] for c, e in rules if c == "post"]
    assert snats == [{"family": "ip", "addr": "198.51.100.9"}, {"family": "ip6", "addr": "2001:db8:b::9"}]
    cmds = proxy_nat.commands("libnet-abc", t)
    assert [next(iter(c)) for c in cmds[:3]] == ["add", "delete", "add"]  # replaced whole, in one transaction
    assert proxy_nat.CHAINS["fwd"][3] == "drop"  # nothing else crosses
    with pytest.raises(BadRequest):
        proxy_nat.rules(proxy_nat.ProxyTable("a", "b", None, None, None, None, (proxy_nat.Forward(0, "tcp", 1),)))


async def test_create_follow_and_remove(ctl: Controller) -> None:
    front = await ctl.create_network("front", ipv4_subnet="198.51.100.0/25")
    await ctl.create_network("back", ipv4_subnet="198.51.100.128/25")
    b1 = await backend(ctl, "back", "db1")
    px = await ctl.create_proxy("dbproxy", "front", "back", ["db:5432"])
    assert px.creating == "" and px.front_endpoint and px.back_endpoint
    fe = await ctl.endpoint(px.front_endpoint)
    assert fe.network_id == front.id and fe.aliases == ["db"] and fe.services == ["db:5432/tcp"]
    back_leg = await ctl.endpoint(px.back_endpoint)
    assert back_leg.aliases == [] and not back_leg.dns  # nothing new resolves on the backends' network
    assert fe.dns and fe.proxy == back_leg.proxy == px.id
    t = await table(ctl, "dbproxy")
    assert t.forwards[0].backends == (b1.ipv4.split("/")[0], b1.ipv6.split("/")[0])
    b2 = await backend(ctl, "back", "db2")
    await backend(ctl, "back", "web", aliases=())  # not a backend: another name
    assert len((await table(ctl, "dbproxy")).forwards[0].backends) == 4
    await ctl.disconnect("back", b2.sandbox_id)
    assert (await table(ctl, "dbproxy")).forwards[0].backends == t.forwards[0].backends
    assert (await ctl.inspect_proxy("dbproxy"))["backends"] == {"db": list(t.forwards[0].backends)}
    for refused in (  # its sandbox and legs are the proxy's
        ctl.delete_sandbox(px.id),
        ctl.disconnect("back", px.id),
        ctl.leave(px.front_endpoint, px.id),
    ):
        with pytest.raises(Conflict, match="proxy dbproxy's"):
            await refused
    for refused in (  # its legs and its networks: typed refusals naming the proxy, nothing changed
        ctl.delete_endpoint(px.back_endpoint),
        ctl.delete_endpoint(px.front_endpoint, force=True),
        ctl.delete_endpoint("dbproxy", "front"),
        ctl.delete_network("front"),
        ctl.delete_network("back"),
    ):
        with pytest.raises(ProxyInUse, match="proxy dbproxy") as caught:
            await refused
        assert caught.value.ids["proxy_id"] == px.id
    assert (await ctl.endpoint(px.front_endpoint)).sandbox_id == px.id
    assert len((await table(ctl, "dbproxy")).forwards[0].backends) == 2
    await ctl.delete_proxy("dbproxy")
    with pytest.raises(NoSuchProxy):
        await ctl.proxy("dbproxy")
    assert [e.name for e in await ctl.endpoints("front")] == []
    await ctl.delete_network("front")


async def test_bad_input_changes_nothing(ctl: Controller) -> None:
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/25")
    await ctl.create_network("back", ipv4_subnet="198.51.100.128/25")
    before = [(p.key, p.value) for p in await ctl._store.list("libnet/")]
    for args, kw, error in (
        (("p", "front", "nope", ["db:1"]), {}, NoSuchNetwork),
        (("p", "front", "front", ["db:1"]), {}, BadRequest),
        (("p", "front", "back", ["db"]), {}, InvalidOption),
        (("p", "front", "back", ["db:1", "x:2"]), {"listen_port": 7}, InvalidOption),
        (("bad_name", "front", "back", ["db:1"]), {}, InvalidName),
    ):
        with pytest.raises(error):
            await ctl.create_proxy(*args, **kw)
    assert [(p.key, p.value) for p in await ctl._store.list("libnet/")] == before
    await ctl.create_proxy("p", "front", "back", ["db:1"])
    with pytest.raises(NameInUse):
        await ctl.create_proxy("p", "back", "front", ["db:1"])


async def test_failure_part_way_leaves_nothing(ctl: Controller) -> None:
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/25")
    await ctl.create_network("back", ipv4_subnet="198.51.100.128/25")
    before = [(p.key, p.value) for p in await ctl._store.list("libnet/")]
    ctl.driver("bridge").fail_on = "join"
    with pytest.raises(Exception, match="join"):
        await ctl.create_proxy("p", "front", "back", ["db:1"])
    assert [(p.key, p.value) for p in await ctl._store.list("libnet/")] == before
    assert await ctl.sandboxes() == []


async def test_remote_peers_are_backends(ctl: Controller) -> None:
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/25")
    back = await ctl.create_network("ov", "overlay", ipv4_subnet="198.51.100.128/25", ipv6=False)
    await ctl.create_proxy("p", "front", "ov", ["db:5432/udp"], listen_port=53)
    drv = ctl.driver("overlay")
    assert isinstance(drv, PeeringDriver) and drv.peer_listeners
    drv.peers[back.id] = [Peer("r1", back.id, "db-h2", "198.51.100.200/25", None, ("db",))]
    await ctl._proxies.refresh(back.id)
    t = await table(ctl, "p")
    assert t.forwards[0] == proxy_nat.Forward(53, "udp", 5432, ("198.51.100.200",), "db")
    drv.peers[back.id] = []
    await ctl._proxies.refresh(back.id)
    assert (await table(ctl, "p")).forwards[0].backends == ()


async def test_reconcile_rolls_back_unfinished_and_reapplies(ctl: Controller) -> None:
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/25")
    await ctl.create_network("back", ipv4_subnet="198.51.100.128/25")
    px = await ctl.create_proxy("p", "front", "back", ["db:1"])
    applied = plane(ctl).applied
    report = await ctl.reconcile()
    assert plane(ctl).applied == applied + 1  # table written again, whole
    assert not report.missing
    # a crash during a create: the record still says "creating" by this instance
    await ctl.repo.update_proxy(px, lambda p: setattr(p, "creating", ctl.instance))
    report = await ctl.reconcile()
    assert any("rolled back" in line for line in report.repaired)
    assert await ctl.proxies() == [] and await ctl.sandboxes() == []
    assert not [p for p in await ctl._store.list("libnet/v1/names/proxies/")]


async def test_reconcile_rebuilds_a_proxy_whose_leg_is_gone(ctl: Controller) -> None:
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/25")
    await ctl.create_network("back", ipv4_subnet="198.51.100.128/25")
    px = await ctl.create_proxy("p", "front", "back", ["db:1"])
    await ctl.leave(px.back_endpoint)  # by hand, behind the proxy's back
    report = ReconcileReport()
    await ctl._proxies.reconcile(report)
    assert any("built again" in line for line in report.repaired)
    again = await ctl.proxy("p")
    assert again.id == px.id and (await ctl.endpoint(again.back_endpoint)).sandbox_id == px.id


async def test_reconcile_finishes_an_interrupted_remove(ctl: Controller) -> None:
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/25")
    await ctl.create_network("back", ipv4_subnet="198.51.100.128/25")
    px = await ctl.create_proxy("p", "front", "back", ["db:1"])
    await ctl.repo.update_proxy(px, lambda p: setattr(p, "removing", ctl.instance))  # a crash after the mark
    report = await ctl.reconcile()
    assert any("finished removing" in line for line in report.repaired)
    assert await ctl.proxies() == [] and await ctl.sandboxes() == [] and await ctl.endpoints() == []


async def test_a_proxy_of_another_host(ctl: Controller) -> None:
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/25")
    await ctl.create_network("back", ipv4_subnet="198.51.100.128/25")
    px = await ctl.create_proxy("p", "front", "back", ["db:1"])
    await ctl.repo.update_proxy(px, lambda p: setattr(p, "node", "elsewhere"))
    with pytest.raises(Conflict, match="runs on host elsewhere"):
        await ctl.delete_proxy("p")
    applied = plane(ctl).applied
    await ctl._proxies.refresh()
    await ctl.reconcile()
    assert plane(ctl).applied == applied  # not this host's to program
    await ctl.remove_node("elsewhere")  # gone for good: its proxy's record goes
    assert await ctl.proxies() == []


async def test_close_cancels_queued_refreshes(ctl: Controller) -> None:
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/25")
    back = await ctl.create_network("ov", "overlay", ipv4_subnet="198.51.100.128/25", ipv6=False)
    await ctl.create_proxy("p", "front", "ov", ["db:1"])
    ctl._proxies.peers_changed(back.id)
    assert ctl._proxies._tasks
    await ctl._proxies.close()
    assert not ctl._proxies._tasks


async def test_a_back_leg_is_no_backend_and_no_remote_name(ctl: Controller) -> None:
    """Another proxy's back leg named like the service is no backend; an overlay announces
    a back leg to the other hosts without a name (so their DNS has none for it)."""
    from libnet.drivers.overlay.driver import OverlayDriver
    from libnet.info import ep_info

    await ctl.create_network("front", ipv4_subnet="198.51.100.0/26")
    await ctl.create_network("back", ipv4_subnet="198.51.100.128/25")
    await ctl.create_network("side", ipv4_subnet="198.51.100.64/26")
    await ctl.create_proxy("db", "side", "back", ["x:1"])  # its back leg (db.proxy) is on back
    p2 = await ctl.create_proxy("p2", "front", "back", ["db:1"])  # backends: back's endpoints named or aliased db
    assert (await table(ctl, "p2")).forwards[0].backends == ()
    info = ep_info(await ctl.endpoint(p2.back_endpoint))
    drv = object.__new__(OverlayDriver)  # _peer reads only the host's name
    drv.node = "h1"
    peer = drv._peer(info, "203.0.113.1")
    assert (peer.name, peer.aliases, peer.services) == ("", (), ())


def test_services_are_kept_in_the_rules_for_adopt() -> None:
    """The table alone tells what a proxy forwards (``--adopt`` rebuilds a lost record from it)."""
    fw = proxy_nat.Forward(5353, "udp", 53, ("198.51.100.20",), "dns")
    t = proxy_nat.ProxyTable("eth0", "eth1", "198.51.100.3", None, "198.51.100.9", None, (fw,))
    cmds = proxy_nat.commands("libnet-x", t)
    comments = [c["add"]["rule"].get("comment") for c in cmds if "rule" in c.get("add", {})]
    assert [c for c in comments if c] == ["libnet-proxy-service dns:53/udp listen 5353"]
    assert proxy_nat.parse_service_comment("libnet-proxy-service dns:53/udp listen 5353") == {
        "alias": "dns",
        "port": 53,
        "protocol": "udp",
        "listen": 5353,
    }
    for bad in ("", "libnet-proxy-service dns:0/udp listen 1", "libnet-proxy-service dns:53/sctp listen 1", "x"):
        assert proxy_nat.parse_service_comment(bad) is None


async def test_the_proxy_takes_no_name_on_the_backends_network(ctl: Controller) -> None:
    """A proxy named like a backend (``db``) is made, and a container can still take the
    proxy's name on the backends' network: its back leg's name, ``db.proxy``, is no DNS label."""
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/25")
    await ctl.create_network("back", ipv4_subnet="198.51.100.128/25")
    b = await backend(ctl, "back", "db", aliases=())
    px = await ctl.create_proxy("db", "front", "back", ["db:5432"])
    assert (await ctl.endpoint(px.back_endpoint)).name == "db.proxy"
    assert (await table(ctl, "db")).forwards[0].backends == (b.ipv4.split("/")[0], b.ipv6.split("/")[0])
    px2 = await ctl.create_proxy("p2", "front", "back", ["other:1"])
    await backend(ctl, "back", "p2", aliases=())  # the name of proxy p2 is free on back
    assert [e.name for e in await ctl.endpoints("back") if e.proxy == px2.id] == ["p2.proxy"]


@pytest.mark.parametrize("failing_write", [1, 2], ids=["front", "back"])
async def test_a_leg_made_but_not_yet_recorded_is_undone(ctl: Controller, failing_write: int) -> None:
    """Breaker (issue 21): the store write naming a new leg in the proxy's record fails (or
    the agent dies just before it): the leg exists, the record does not know it.  The undo
    (and a reconcile's roll back) still finds it by its ``proxy`` field: nothing is left, and
    the proxy's name is free again on its networks."""
    from libnet.errors import LibnetError

    await ctl.create_network("front", ipv4_subnet="198.51.100.0/25")
    await ctl.create_network("back", ipv4_subnet="198.51.100.128/25")
    before = [(p.key, p.value) for p in await ctl._store.list("libnet/")]
    real, writes = ctl.repo.update_proxy, []

    async def failing(px, change):
        writes.append(px.id)
        if len(writes) == failing_write:
            raise LibnetError("the store went away")
        return await real(px, change)

    ctl.repo.update_proxy = failing  # type: ignore[method-assign]
    with pytest.raises(LibnetError, match="went away"):
        await ctl.create_proxy("p", "front", "back", ["db:1"])
    ctl.repo.update_proxy = real  # type: ignore[method-assign]
    assert await ctl.endpoints() == [] and await ctl.sandboxes() == []
    assert [(p.key, p.value) for p in await ctl._store.list("libnet/")] == before
    px = await ctl.create_proxy("p", "front", "back", ["db:1"])  # the names are free again
    assert px.front_endpoint and px.back_endpoint


async def test_proxies_both_ways_with_one_alias_do_not_forward_to_each_other(ctl: Controller) -> None:
    """Breaker (issue 21): ``db`` served on both networks and a proxy each way for it.  Each
    proxy's front leg carries the alias ``db`` on the other's backends' network; it was taken
    for a backend, so half the connections went from one proxy to the other and back (a loop
    until the TTL ran out).  No proxy's leg is a backend, this host's or another's."""
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/25")
    ov = await ctl.create_network("ov", "overlay", ipv4_subnet="198.51.100.128/25", ipv6=False)
    here = await backend(ctl, "ov", "db1")
    await backend(ctl, "front", "db2")
    p1 = await ctl.create_proxy("p1", "front", "ov", ["db:5432"])
    p2 = await ctl.create_proxy("p2", "ov", "front", ["db:5432"])
    await ctl.reconcile()  # every table written again from what the store says now
    fronts = {(await ctl.endpoint(p.front_endpoint)).ipv4.split("/")[0] for p in (p1, p2)}
    for name in ("p1", "p2"):
        got = set((await table(ctl, name)).forwards[0].backends)
        assert got and not got & fronts, (name, got, fronts)
    # another host's proxy leg, as the overlay's peer table shows it: no backend either
    leg = await ctl.endpoint(p2.front_endpoint)
    drv = ctl.driver("overlay")
    assert isinstance(drv, PeeringDriver)
    drv.peers[ov.id] = [Peer(leg.id, ov.id, "p2", "198.51.100.250/25", None, ("db",))]
    await ctl._proxies.refresh(ov.id)
    assert (await table(ctl, "p1")).forwards[0].backends == (here.ipv4.split("/")[0],)


async def test_a_leaving_udp_backend_loses_its_conntrack_entries(ctl: Controller) -> None:
    """A UDP backend that drops out has its conntrack entries dropped (a client's next
    datagram goes to a current backend), also one gone while the agent was down (the first
    table after a start); TCP ones are left to end with their connection."""
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/25")
    await ctl.create_network("back", ipv4_subnet="198.51.100.128/25")
    b1, b2 = await backend(ctl, "back", "db1"), await backend(ctl, "back", "db2")
    await ctl.create_proxy("u", "front", "back", ["db:53/udp"])
    await ctl.create_proxy("t", "front", "back", ["db:5432/tcp"])
    u_ns = (await ctl.sandbox((await ctl.proxy("u")).id)).netns
    forgotten = plane(ctl).forgotten
    both = sorted(a.split("/")[0] for b in (b1, b2) for a in (b.ipv4, b.ipv6) if a)
    assert forgotten == [(u_ns, both)]  # its first table
    await ctl.disconnect("back", b1.sandbox_id)
    b2_only = sorted(a.split("/")[0] for a in (b2.ipv4, b2.ipv6) if a)
    assert forgotten == [(u_ns, both), (u_ns, b2_only)]
    await backend(ctl, "back", "db3")  # one more: nothing to forget
    assert len(forgotten) == 2
    ctl._proxies._applied.clear()  # as after a restart of the agent
    await ctl.reconcile()
    assert len(forgotten) == 3 and forgotten[-1][0] == u_ns


async def test_a_refresh_during_a_leave_does_not_bring_the_backend_back(ctl: Controller) -> None:
    """Breaker (issue 21): while a backend is being unplugged, a refresh for another reason
    (a remote peer's change, another container joining) read the store, where the backend
    was still joined, and put it back in the table -- where it stayed after it was gone,
    until the next change: connections to it were black-holed."""
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/25")
    ov = await ctl.create_network("ov", "overlay", ipv4_subnet="198.51.100.128/25", ipv6=False)
    b1, b2 = await backend(ctl, "ov", "db1"), await backend(ctl, "ov", "db2")
    await ctl.create_proxy("p", "front", "ov", ["db:5432"])
    real = ctl._joins.leave

    async def leave_meanwhile_a_peer_changes(*args, **kw):
        ctl._proxies.peers_changed(ov.id)  # the overlay's listener, as a remote peer comes or goes
        await asyncio.sleep(0.05)  # the unplugging takes a while: the refresh runs meanwhile
        return await real(*args, **kw)

    ctl._joins.leave = leave_meanwhile_a_peer_changes  # type: ignore[method-assign]
    await ctl.leave(b1.id)  # a plain leave (``libnet leave``, a runtime's Leave): no removing mark first
    ctl._joins.leave = real  # type: ignore[method-assign]
    await asyncio.sleep(0.05)  # anything still queued has run
    assert b2.ipv4 and (await table(ctl, "p")).forwards[0].backends == (b2.ipv4.split("/")[0],)


async def test_proxied_frames_skip_the_hosts_conntrack_safely(ctl: Controller) -> None:
    """The host's notrack list holds the host side of each bridge leg's veth and its MAC, which is of a
    range no other endpoint has: with equal subnets a container of the proxy's address keeps its MAC."""
    from libnet.drivers.bridge_model import host_ifname
    from libnet.info import ep_info
    from libnet.model import is_proxy_mac, mac_from_ipv4

    await ctl.create_network("front", ipv4_subnet="198.51.100.0/25")
    await ctl.create_network("back", ipv4_subnet="198.51.100.128/25")
    await ctl.create_network("ov", driver="overlay", ipv4_subnet="198.51.100.0/25")  # equal to front's
    px = await ctl.create_proxy("p", "front", "back", ["db:1"])
    legs = [await ctl.endpoint(e) for e in (px.front_endpoint, px.back_endpoint)]
    assert all(is_proxy_mac(leg.mac) for leg in legs)
    twin = await backend(ctl, "ov", "db", aliases=())  # the front leg's address, on another network
    assert twin.ipv4 == legs[0].ipv4 and twin.mac == mac_from_ipv4(twin.ipv4) != legs[0].mac
    assert not is_proxy_mac(twin.mac)
    want = (sorted(host_ifname(ep_info(leg)) for leg in legs), sorted(leg.mac for leg in legs))
    assert plane(ctl).untracked == want
    await ctl.create_proxy("o", "front", "ov", ["db:2"])  # a leg on an overlay: its bridge is not the host's
    o = await ctl.proxy("o")
    front_o = await ctl.endpoint(o.front_endpoint)
    assert host_ifname(ep_info(front_o)) in plane(ctl).untracked[0]
    assert host_ifname(ep_info(await ctl.endpoint(o.back_endpoint))) not in plane(ctl).untracked[0]
    await ctl.delete_proxy("o")
    assert plane(ctl).untracked == want
    await ctl.delete_proxy("p")
    assert plane(ctl).untracked == ([], [])
    p2 = await ctl.create_proxy("p2", "front", "back", ["db:1"])
    plane(ctl).untracked = ([], [])  # lost (a flushed ruleset): reconcile writes it again
    await ctl.reconcile()
    assert len(plane(ctl).untracked[1]) == 2 and p2.id


def test_untrack_commands_replace_a_bridge_table() -> None:
    cmds = proxy_nat.untrack_commands("libnet-abc", ["lnv2", "lnv1"], ["06:42:C6:33:64:07"])
    assert [next(iter(c)) for c in cmds[:3]] == ["add", "delete", "add"]
    assert all(next(iter(next(iter(c.values())).values()))["family"] == "bridge" for c in cmds)
    chain = cmds[3]["add"]["chain"]
    assert (chain["hook"], chain["prio"]) == ("prerouting", -300)  # before br_netfilter's conntrack
    matches = [c["add"]["rule"]["expr"][0]["match"]["right"]["set"] for c in cmds[4:]]
    assert matches == [["lnv1", "lnv2"], ["06:42:c6:33:64:07"]]
    assert all(c["add"]["rule"]["expr"][1] == {"notrack": None} for c in cmds[4:])
    gone = proxy_nat.untrack_commands("libnet-abc", [], [])
    assert [next(iter(c)) for c in gone] == ["add", "delete"]  # nothing to untrack: no table


async def test_the_front_leg_has_only_the_families_the_backends_network_has(ctl: Controller) -> None:
    """A proxy to an IPv4-only network: its front leg gets no IPv6 address on a dual-stack
    front network, so no AAAA for the alias points at an address that refuses everything."""
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/26", ipv6_subnet="2001:db8:21:a::/64")
    await ctl.create_network("back", ipv4_subnet="198.51.100.128/25", ipv6=False)
    px = await ctl.create_proxy("p", "front", "back", ["db:1"])
    fe = await ctl.endpoint(px.front_endpoint)
    assert fe.ipv4 and fe.ipv6 is None
    t = await table(ctl, "p")
    assert t.front_v6 is None and t.back_v6 is None
    await ctl.create_network("dual", ipv4_subnet="198.51.100.64/26", ipv6_subnet="2001:db8:21:c::/64")
    both = await ctl.endpoint((await ctl.create_proxy("p2", "front", "dual", ["db2:1"])).front_endpoint)
    assert both.ipv4 and both.ipv6


async def test_another_hosts_refusals_name_the_proxy_not_its_hidden_leg(ctl: Controller) -> None:
    """On a host that sees a proxy's leg (a global network) but not the proxy (local scope, in
    its own host's store), refusals name the proxy and its host, not the leg's ``NAME.proxy``."""
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/25")
    await ctl.create_network("back", ipv4_subnet="198.51.100.128/25")
    px = await ctl.create_proxy("p", "front", "back", ["db:1"])
    leg = await ctl.endpoint(px.back_endpoint)
    await ctl.repo.update_endpoint(leg, lambda e: setattr(e, "node", "h1"))
    await ctl.repo.delete_proxy(px)  # what another host sees: no record of the proxy
    for refused in (ctl.delete_network("back"), ctl.delete_endpoint(leg.id)):
        with pytest.raises(ProxyInUse) as caught:
            await refused
        msg = str(caught.value)
        assert "proxy p " in msg and "host h1" in msg and "p.proxy" not in msg, msg
        assert caught.value.ids["proxy_id"] == px.id


async def test_a_service_alias_taken_by_an_endpoint_name_on_the_clients_network(ctl: Controller) -> None:
    """The alias would resolve to both the endpoint and the proxy (names and aliases share
    one round-robin set): refused before anything is made, naming the endpoint."""
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/25")
    await ctl.create_network("back", ipv4_subnet="198.51.100.128/25")
    db = await backend(ctl, "front", "db", aliases=())
    before = (await ctl.endpoints(), await ctl.sandboxes())
    with pytest.raises(NameInUse, match=f"endpoint {db.id[:12]} on network front") as caught:
        await ctl.create_proxy("p", "front", "back", ["DB:1"])
    assert caught.value.ids["holder"] == db.id
    assert (await ctl.endpoints(), await ctl.sandboxes()) == before and await ctl.proxies() == []
    await ctl.create_proxy("p", "front", "back", ["cache:1"])  # another alias: made


async def test_a_host_notrack_failure_does_not_fail_the_proxy(ctl: Controller) -> None:
    """A kernel without nftables' bridge family: the proxy is made and works; only its
    frames keep the host's conntrack (reconcile reports it)."""
    from libnet.errors import KernelError

    async def refuse(ports, macs) -> None:
        raise KernelError("nftables: bridge family not supported")

    plane(ctl).untrack = refuse  # type: ignore[method-assign]
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/25")
    await ctl.create_network("back", ipv4_subnet="198.51.100.128/25")
    px = await ctl.create_proxy("p", "front", "back", ["db:1"])
    assert px.creating == "" and await table(ctl, "p")
    report = await ctl.reconcile()
    assert any("notrack" in line for line in report.missing)
    await ctl.delete_proxy("p")
    assert await ctl.proxies() == []
