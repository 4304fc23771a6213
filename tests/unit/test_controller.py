"""Controller logic with fakes: memory store, fake driver, fake namespaces."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipam.ipam import StoreIpam
from libnet import Config, Controller, SyncController
from libnet.errors import (
    AddressInUse,
    BadRequest,
    Conflict,
    InvalidName,
    InvalidOption,
    KernelError,
    KernelObjectExists,
    NameInUse,
    NoSuchEndpoint,
    NoSuchNetwork,
    NoSuchSandbox,
)
from libnet.store.memory import MemoryStore
from libnet.testing.fakes import FakeDriver, FakeNamespaces


@pytest.fixture
async def ctl(tmp_path):
    store = MemoryStore()
    c = Controller(
        Config(state_dir=str(tmp_path), resolv_conf=str(tmp_path / "resolv.conf")),
        store=store,
        ipam=StoreIpam(store),
        drivers={"bridge": FakeDriver("bridge"), "null": FakeDriver("null")},
        namespaces=FakeNamespaces(),
    )
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.53\nnameserver 198.51.100.53\nsearch example.org\n")
    await c.start()
    yield c
    await c.close()


async def _snapshot(c: Controller):
    return [(p.key, p.value) for p in await c._store.list("libnet/")]


async def test_network_is_dual_stack_by_default(ctl: Controller) -> None:
    nw = await ctl.create_network("web")
    assert nw.ipv4_subnet == "172.17.0.0/16" and nw.ipv4_gateway == "172.17.0.1/16"
    assert nw.ipv6_subnet.startswith("fd") and nw.ipv6_subnet.endswith("/64")
    assert ctl.driver("bridge").networks == {nw.id}
    assert (await ctl.network("web")).id == nw.id
    assert (await ctl.network(nw.id[:8])).name == "web"
    v4only = await ctl.create_network("legacy", ipv6=False, ipv4_subnet="198.51.100.0/24")
    assert v4only.ipv6_subnet is None and v4only.ipv4_gateway == "198.51.100.1/24"
    assert [n.name for n in await ctl.networks()] == ["legacy", "web"]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"name": "not_a_label"}, InvalidName),
        ({"name": "-bad"}, InvalidName),
        ({"name": "x" * 64}, InvalidName),
        ({"name": "web"}, NameInUse),
        ({"name": "WEB"}, NameInUse),
        ({"name": "n2", "driver": "macvlan"}, InvalidOption),
        ({"name": "n2", "options": {"colour": "blue"}}, InvalidOption),
        ({"name": "n2", "options": {"mtu": "big"}}, InvalidOption),
        ({"name": "n2", "labels": {"a": 1}}, InvalidOption),
        ({"name": "n2", "internal": "yes"}, InvalidOption),
        ({"name": "n2", "ipv4_subnet": "198.51.100.1/24"}, BadRequest),
        ({"name": "n2", "ipv4_subnet": "172.17.1.0/24"}, Conflict),  # overlaps "web"
        ({"name": "n2", "ipv4_gateway": "198.51.100.1"}, InvalidOption),
        ({"name": "n2", "ipv6": False, "ipv6_subnet": "2001:db8::/64"}, InvalidOption),
    ],
)
async def test_bad_network_input_changes_nothing(ctl: Controller, kwargs, error) -> None:
    await ctl.create_network("web")
    before = await _snapshot(ctl)
    with pytest.raises(error):
        await ctl.create_network(**kwargs)
    assert await _snapshot(ctl) == before


async def test_failed_driver_step_rolls_back(ctl: Controller) -> None:
    before = await _snapshot(ctl)
    ctl.driver("bridge").fail_on = "create_network"
    with pytest.raises(KernelError):
        await ctl.create_network("web")
    after = [kv for kv in await _snapshot(ctl) if not kv[0].endswith("/ula48")]
    assert after == [kv for kv in before if not kv[0].endswith("/ula48")] or all(
        "/pools" in k and b'"pools":{}' in v for k, v in after
    )
    assert await ctl.ipam.audit() == []
    await ctl.create_network("web")  # the name is free again


async def test_endpoints_addresses_names_and_delete_rules(ctl: Controller) -> None:
    nw = await ctl.create_network("web", ipv4_subnet="198.51.100.0/24", ipv6_subnet="2001:db8:1::/64")
    ep = await ctl.create_endpoint("web", "app", aliases=["api"])
    assert (ep.ipv4, ep.ipv6, ep.mac) == ("198.51.100.2/24", "2001:db8:1::2/64", "02:42:c6:33:64:02")
    fixed = await ctl.create_endpoint("web", "db", ipv4="198.51.100.50", ipv6="2001:db8:1::50")
    assert fixed.ipv4 == "198.51.100.50/24"
    with pytest.raises(NameInUse):
        await ctl.create_endpoint("web", "app")
    with pytest.raises(AddressInUse):
        await ctl.create_endpoint("web", "db2", ipv4="198.51.100.50")
    with pytest.raises(NoSuchNetwork):
        await ctl.create_endpoint("nope", "x")
    with pytest.raises(InvalidOption):
        await ctl.create_endpoint("web", "x", ports=[{"host_port": -1, "container_port": 80}])
    with pytest.raises(InvalidName):
        await ctl.create_endpoint("web", "x", aliases=["bad alias"])
    assert (await ctl.endpoint("app", network="web")).id == ep.id
    assert {e.name for e in await ctl.endpoints("web")} == {"app", "db"}

    with pytest.raises(Conflict) as err:
        await ctl.delete_network("web")
    assert set(err.value.ids["endpoints"]) == {ep.id, fixed.id}
    await ctl.delete_endpoint(ep.id)
    await ctl.delete_endpoint("db", network="web")
    with pytest.raises(NoSuchEndpoint):
        await ctl.endpoint(ep.id)
    await ctl.delete_network("web")
    assert await ctl.ipam.audit() == []
    assert ctl.driver("bridge").networks == set()
    with pytest.raises(NoSuchNetwork):
        await ctl.delete_network(nw.id)


async def test_an_endpoint_with_its_own_mac(ctl: Controller) -> None:
    """``mac`` (Docker's --mac-address): the endpoint's, lower case; a malformed, multicast, zero or proxy
    MAC, or one on a network of another driver, is refused and changes nothing."""
    await ctl.create_network("web", ipv4_subnet="198.51.100.0/24", ipv6=False)
    await ctl.create_network("none", driver="null", ipv6=False, ipv4_subnet="198.51.101.0/24")
    ep = await ctl.create_endpoint("web", "given", mac="02:AB:00:00:00:02")
    assert ep.mac == (await ctl.endpoint(ep.id)).mac == "02:ab:00:00:00:02"
    assert (await ctl.create_endpoint("web", "derived")).mac.startswith("02:42:c6:33:64:")
    before = await _snapshot(ctl)
    for net, bad in [
        ("web", "02:ab:00:00:00"),
        ("web", "02-ab-00-00-00-02"),
        ("web", "01:00:5e:00:00:01"),
        ("web", "00:00:00:00:00:00"),
        ("web", "06:42:c6:33:64:07"),
        ("none", "02:ab:00:00:00:03"),
    ]:
        with pytest.raises(InvalidOption):
            await ctl.create_endpoint(net, "refused", mac=bad)
    assert await _snapshot(ctl) == before


async def test_sandbox_files_written_only_when_their_text_changes(ctl: Controller, monkeypatch) -> None:
    from libnet import sandbox_files

    await ctl.create_network("front")
    sb = await ctl.create_sandbox(hostname="app")
    files = Path(ctl.config.state_dir) / "sandboxes" / sb.id
    resolv_ino = (files / "resolv.conf").stat().st_ino
    hosts_before = (files / "hosts").read_text()
    await ctl.connect("front", sb.id, name="app-front")
    assert (files / "resolv.conf").stat().st_ino == resolv_ino  # same text: not written again
    assert (files / "hosts").read_text() != hosts_before and "app app-front" in (files / "hosts").read_text()
    (files / "resolv.conf").unlink()  # gone behind libnet's back: the next write brings it back
    (files / "hosts").write_text("# changed by hand\n")
    await ctl.create_network("side")
    e2 = await ctl.connect("side", sb.id, name="app-side")
    assert "nameserver" in (files / "resolv.conf").read_text()
    assert "app app-side" in (files / "hosts").read_text()
    await ctl.disconnect("side", sb.id)
    assert "app-side" not in (files / "hosts").read_text() and e2.id not in (await ctl.sandbox(sb.id)).endpoints

    written: list[str] = []
    real = sandbox_files.write_file
    monkeypatch.setattr(sandbox_files, "write_file", lambda d, n, t: written.append(n) or real(d, n, t))
    await ctl.delete_sandbox(sb.id)  # its leave does not rewrite files about to be removed
    assert written == [] and not files.exists()


async def test_connect_and_disconnect_list_no_networks(ctl: Controller, monkeypatch) -> None:
    """The gateway bridge is looked up by its name: a join or leave costs the same with 3 networks or 300."""
    for name in ("a", "b", "c"):
        await ctl.create_network(name)
    sb = await ctl.create_sandbox()
    listed: list[str] = []
    real = ctl._store.list

    async def counting(prefix: str):  # type: ignore[no-untyped-def]
        listed.append(prefix)
        return await real(prefix)

    monkeypatch.setattr(ctl._store, "list", counting)
    await ctl.connect("b", sb.id)
    await ctl.disconnect("b", sb.id)
    assert [p for p in listed if "/networks/" in p] == []


async def test_join_order_gateway_and_hand_over(ctl: Controller) -> None:
    await ctl.create_network("front")
    await ctl.create_network("back", internal=True)
    await ctl.create_network("side")
    sb = await ctl.create_sandbox(hostname="app")
    e_back = await ctl.connect("back", sb.id, name="app-back")
    e_front = await ctl.connect("front", sb.id, name="app-front")
    e_side = await ctl.connect("side", sb.id, name="app-side")
    assert [e.ifname for e in (e_back, e_front, e_side)] == ["eth0", "eth1", "eth2"]
    assert [e.gateway for e in (e_back, e_front, e_side)] == [False, True, False]  # internal gives no route
    assert (await ctl.sandbox(sb.id)).endpoints == [e_back.id, e_front.id, e_side.id]
    files = Path(ctl.config.state_dir) / "sandboxes" / sb.id
    assert "app app-front" in (files / "hosts").read_text()
    resolv = (files / "resolv.conf").read_text()
    assert "nameserver 198.51.100.53" in resolv and "127.0.0.53" not in resolv.split("#")[1]

    await ctl.leave(e_front.id)
    drv = ctl.driver("bridge")
    assert drv.gateways[e_side.id] is True  # the default route moved over
    assert (await ctl.endpoint(e_side.id)).gateway
    again = await ctl.join(e_front.id, sb.id)
    assert again.ifname == "eth1" and not again.gateway  # eth1 was free again
    assert await ctl.join(e_front.id, sb.id) == again  # idempotent
    other = await ctl.create_sandbox()
    with pytest.raises(Conflict):
        await ctl.join(e_front.id, other.id)
    with pytest.raises(Conflict):
        await ctl.delete_endpoint(e_front.id)

    await ctl.delete_sandbox(sb.id)
    assert await ctl.endpoints() == []
    assert not ctl._namespaces.exists(sb.netns)
    with pytest.raises(NoSuchSandbox):
        await ctl.sandbox(sb.id)


async def test_leave_is_not_failed_by_a_refused_hand_over(ctl: Controller, monkeypatch) -> None:
    """The next endpoint cannot take the default routes over (a default route libnet did
    not make is in the sandbox): the leave, done already, succeeds and the next endpoint
    does not claim them; before, the leave raised and a CNI DEL left its endpoint behind."""
    await ctl.create_network("front")
    await ctl.create_network("side")
    sb = await ctl.create_sandbox()
    e_front = await ctl.connect("front", sb.id)
    e_side = await ctl.connect("side", sb.id)
    assert e_front.gateway and not e_side.gateway
    drv = ctl.driver("bridge")

    async def refuse(nw, ep, sb_info, gateway):  # type: ignore[no-untyped-def]
        raise KernelObjectExists("the sandbox already has a default route libnet did not make", errno=17)

    monkeypatch.setattr(drv, "set_gateway", refuse)
    await ctl.disconnect("front", sb.id)
    assert not (await ctl.endpoint(e_side.id)).gateway
    assert [e.id for e in await ctl.endpoints()] == [e_side.id]


async def test_failed_join_leaves_nothing_and_connect_releases_addresses(ctl: Controller) -> None:
    await ctl.create_network("web")
    sb = await ctl.create_sandbox()
    ep = await ctl.create_endpoint("web", "app", ports=[{"host_port": 8080, "container_port": 80}])
    drv = ctl.driver("bridge")
    drv.fail_on = "program_external_connectivity"
    with pytest.raises(KernelError):
        await ctl.join(ep.id, sb.id)
    assert ("leave", ep.id) in drv.calls and ep.id not in drv.joined
    assert (await ctl.endpoint(ep.id)).sandbox_id is None
    assert (await ctl.sandbox(sb.id)).endpoints == []

    before = {a.address for a in await ctl.ipam.audit()}
    drv.fail_on = "join"
    with pytest.raises(KernelError):
        await ctl.connect("web", sb.id, name="second")
    assert {a.address for a in await ctl.ipam.audit()} == before
    assert [e.name for e in await ctl.endpoints("web")] == ["app"]


async def test_sandboxes_new_and_existing_namespaces(ctl: Controller) -> None:
    sb = await ctl.create_sandbox("container-1", hostname="web1")
    assert sb.owned and ctl._namespaces.exists(sb.netns)
    with pytest.raises(Conflict):
        await ctl.create_sandbox("container-1")
    with pytest.raises(BadRequest):
        await ctl.create_sandbox("bad/id")
    with pytest.raises(BadRequest, match="does not exist"):  # a path that is no namespace: 400 (issue 14)
        await ctl.create_sandbox(netns="/proc/999999/ns/net")
    with pytest.raises(BadRequest):
        await ctl.create_sandbox(netns="relative/path")
    path = "/run/netns/someone-elses"
    ctl._namespaces.paths.add(path)  # made by another program
    ext = await ctl.create_sandbox(netns=path)
    assert not ext.owned
    await ctl.delete_sandbox(ext.id)
    assert ctl._namespaces.exists(path)  # not ours to delete
    assert (await ctl.sandbox("container-1")).hostname == "web1"


async def test_restart_sees_everything_and_reconcile_reports(ctl: Controller, tmp_path) -> None:
    nw = await ctl.create_network("web")
    sb = await ctl.create_sandbox()
    ep = await ctl.connect("web", sb.id)
    leaked = ctl._namespaces.create(ctl.config.sandbox_prefix + "leaked", "gone-sandbox")
    foreign = "/run/netns/" + ctl.config.sandbox_prefix + "foreign"
    ctl._namespaces.paths.add(foreign)  # named like ours, made by someone else
    again = Controller(
        ctl.config, store=ctl._store, ipam=StoreIpam(ctl._store), drivers=ctl._drivers, namespaces=ctl._namespaces
    )
    await again.start()
    assert (await again.network("web")).id == nw.id
    assert (await again.endpoint(ep.id)).sandbox_id == sb.id
    ctl._namespaces.delete(sb.netns)
    report = await again.reconcile()
    assert any(sb.id[:12] in line for line in report.missing)
    assert report.removed == [f"sandbox namespace {leaked} of no sandbox"]
    assert ctl._namespaces.exists(foreign)
    second = await again.create_endpoint("web", "more")
    assert second.ipv4 != ep.ipv4  # the restarted IPAM knows what is taken


def test_sync_facade(tmp_path) -> None:
    store = MemoryStore()
    with SyncController(
        Config(state_dir=str(tmp_path)),
        store=store,
        ipam=StoreIpam(store),
        drivers={"bridge": FakeDriver()},
        namespaces=FakeNamespaces(),
    ) as ctl:
        ctl.create_network("web")
        sb = ctl.create_sandbox()
        ep = ctl.connect("web", sb.id)
        assert ep.ifname == "eth0"
        assert [n.name for n in ctl.networks()] == ["web"]


async def test_reconcile_cleans_up_after_a_crashed_connect(ctl: Controller) -> None:
    await ctl.create_network("web")
    sb = await ctl.create_sandbox()
    good = await ctl.connect("web", sb.id, name="good")
    # a connect that died after creating its endpoint, before the join finished
    half = await ctl._create_endpoint("web", "half", connecting=True)
    # an allocation and a name reservation whose owner never got stored
    nw = await ctl.network("web")
    await ctl.ipam.request_address(nw.ipv4_pool, options={"owner": "f" * 64})
    await ctl._store.put(ctl.repo.endpoint_name_key(nw.id, "ghost"), b"e" * 64)
    report = await ctl.reconcile()
    assert any("unfinished connect" in r for r in report.repaired)
    assert [e.name for e in await ctl.endpoints()] == ["good"]
    owners = {a.owner for a in await ctl.ipam.audit()}
    assert owners == {"gateway", good.id}
    assert not await ctl._store.exists(ctl.repo.endpoint_name_key(nw.id, "ghost"))
    assert half.id not in (await ctl.sandbox(sb.id)).endpoints
    assert (await ctl.reconcile()).removed == []  # a second pass finds nothing


async def test_reconcile_waits_for_operations_in_flight(ctl: Controller) -> None:
    import asyncio

    await ctl.create_network("web")
    drv = ctl.driver("bridge")
    release = asyncio.Event()
    real = drv.create_endpoint

    async def slow(nw, ep):
        await release.wait()
        await real(nw, ep)

    drv.create_endpoint = slow
    creating = asyncio.ensure_future(ctl.create_endpoint("web", "slow"))
    await asyncio.sleep(0.01)
    reconciling = asyncio.ensure_future(ctl.reconcile())
    await asyncio.sleep(0.01)
    assert not reconciling.done()  # it waits: the endpoint's address is not yet owned by a stored endpoint
    release.set()
    ep = await creating
    await reconciling
    assert {a.owner for a in await ctl.ipam.audit()} >= {ep.id}


async def test_connect_with_the_runtimes_interface_name_and_no_files(ctl: Controller, tmp_path) -> None:
    """``connect(ifname=...)`` keeps the runtime's interface name (libnet-ipam: the bridge plugin made
    it), refuses one the sandbox already has and a bad one before anything is made; a sandbox with
    ``files=False`` (CNI: the runtime writes resolv.conf and hosts) gets no files of libnet's."""
    await ctl.create_network("pool", "null", ipv4_subnet="198.51.100.0/26")
    await ctl.create_network("pool2", "null", ipv4_subnet="198.51.100.64/26")
    path = "/run/netns/runtime-made"
    ctl._namespaces.paths.add(path)
    sb = await ctl.create_sandbox("ctr", netns=path, files=False, origin="cni")
    assert not sb.files and sb.origin == "cni"
    ep = await ctl.connect("pool", "ctr", name="web", ifname="net1")
    assert ep.ifname == "net1"
    with pytest.raises(Conflict, match="net1"):
        await ctl.connect("pool2", "ctr", name="web2", ifname="net1")
    with pytest.raises(BadRequest):
        await ctl.connect("pool2", "ctr", name="web3", ifname="a/b")
    assert [e.name for e in await ctl.endpoints()] == ["web"]  # nothing left by the refusals
    assert not (tmp_path / "sandboxes" / "ctr").exists()
    await ctl.delete_sandbox("ctr")
    assert ctl._namespaces.exists(path)
    plain = await ctl.create_sandbox("plain", hostname="web4")
    await ctl.connect("pool", "plain")
    assert (tmp_path / "sandboxes" / "plain" / "resolv.conf").exists() and plain.origin == ""
