"""The bridge driver on the in-memory kernel (libnet.testing.fake_kernel): no root."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from libnet import ownership
from libnet.driverapi import EndpointInfo, NetworkInfo, PortMapping, SandboxInfo
from libnet.drivers.bridge import BridgeDriver, bridge_name, host_ifname
from libnet.errors import BadRequest, Conflict, KernelError
from libnet.kernel.api import Kernel
from libnet.kernel.host import HostKernel
from libnet.testing.fake_kernel import FakeKernel, FakeRelays

ME, OTHER = "0123456789ab", "ba9876543210"
NET, EP = "1" * 64, "2" * 64
OPTS = {"bridge_name": None, "mtu": None, "icc": True}


def net(nid: str = NET, internal: bool = False, **options: object) -> NetworkInfo:
    return NetworkInfo(
        nid, "web", "198.51.100.0/24", "198.51.100.1/24", "2001:db8:1::/64", "2001:db8:1::1/64", internal,
        {**OPTS, **options},
    )  # fmt: skip


def endpoint(eid: str = EP, ports: tuple[PortMapping, ...] = ()) -> EndpointInfo:
    return EndpointInfo(eid, NET, "a", "198.51.100.2/24", "2001:db8:1::2/64", "02:42:c6:33:64:02", ports)


@pytest.fixture(autouse=True, params=["alone", "busy"])
def in_flight(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test twice: as the only operation in flight (kernel work inline on the event loop)
    and with others in flight (plug + configure, retire + unplug on the host thread, issue 22)."""
    if request.param == "busy":
        monkeypatch.setattr("libnet.gate.in_flight", lambda: 2)
    return str(request.param)


@pytest.fixture
def kernel() -> FakeKernel:
    kernel = FakeKernel()
    kernel.add_link(None, "eth0", None, up=True)
    return kernel


@pytest.fixture
def driver(kernel: FakeKernel) -> BridgeDriver:
    return BridgeDriver(instance=ME, kernel=kernel, relays=FakeRelays(), reap_delay=0)


def host_links(kernel: FakeKernel) -> dict[str, object]:
    return kernel.namespace(None).by_name()  # type: ignore[return-value]


def table(kernel: FakeKernel):
    return kernel.tables[("(host)", ownership.firewall_table(ME))]


async def cancel_while_the_thread_is_held(
    operation: Coroutine[Any, Any, None], entered: threading.Event, release: threading.Event, pool: ThreadPoolExecutor
) -> None:
    """Run ``operation``, cancel it once the (fake) host thread ``pool`` has ``entered`` the held
    call, then ``release`` it and wait for the thread's work and what it queued when done."""
    task = asyncio.create_task(operation)
    try:
        assert await asyncio.to_thread(entered.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        release.set()
        for _ in range(2):  # the thread's work, then what it queued when done
            await asyncio.wrap_future(pool.submit(lambda: None))
        pool.shutdown()


def test_real_and_fake_kernels_satisfy_the_protocol() -> None:
    assert isinstance(HostKernel(), Kernel) and isinstance(FakeKernel(), Kernel)


async def test_create_and_delete_network(kernel: FakeKernel, driver: BridgeDriver) -> None:
    nw = net()
    await driver.create_network(nw)
    br = kernel.namespace(None).by_name()[bridge_name(nw)]
    assert br.kind == "bridge" and br.up and ownership.owned_by(br.alias, ME, "net", NET)
    assert kernel.namespace(None).addresses[br.index] == ["198.51.100.1/24", "2001:db8:1::1/64"]
    assert table(kernel).bridges == {br.name}
    assert set(table(kernel).groups) == {f"net:{NET}:isolate", f"net:{NET}:masq", f"net:{NET}:localhost"}
    assert kernel.sysctl_get(None, ("net", "ipv4", "conf", br.name, "route_localnet")) == "1"
    assert kernel.sysctl_get(None, "net.ipv4.ip_forward") == "1"
    await driver.create_network(nw)  # adopting what exists is fine
    await driver.delete_network(nw)
    assert set(host_links(kernel)) == {"lo", "eth0"}
    assert table(kernel).groups == {} and table(kernel).bridges == set()
    await driver.delete_network(nw)  # gone is fine


async def test_internal_network_drops_forwarding_and_refuses_ports(kernel: FakeKernel, driver: BridgeDriver) -> None:
    nw = net(internal=True)
    await driver.create_network(nw)
    assert set(table(kernel).groups) == {f"net:{NET}:isolate", f"net:{NET}:internal"}
    with pytest.raises(BadRequest):
        await driver.create_endpoint(nw, endpoint(ports=(PortMapping(8080, 80),)))


async def test_a_foreign_bridge_name_is_a_conflict_and_untouched(kernel: FakeKernel, driver: BridgeDriver) -> None:
    kernel.add_link(None, "br-them", "bridge", alias="someone else's")
    with pytest.raises(Conflict, match="br-them"):
        await driver.check_network(net(bridge_name="br-them"))
    with pytest.raises(Conflict):
        await driver.create_network(net(bridge_name="br-them"))
    assert host_links(kernel)["br-them"].alias == "someone else's"  # type: ignore[attr-defined]
    assert kernel.tables == {} or table(kernel).groups == {}


async def test_create_network_rolls_back_on_failure(kernel: FakeKernel, driver: BridgeDriver) -> None:
    kernel.fail_on("firewall_add")
    with pytest.raises(KernelError, match="injected"):
        await driver.create_network(net())
    assert set(host_links(kernel)) == {"lo", "eth0"}
    assert table(kernel).bridges == set() and table(kernel).groups == {}


async def test_endpoint_join_leave_delete(kernel: FakeKernel, driver: BridgeDriver) -> None:
    nw, ep = net(), endpoint()
    await driver.create_network(nw)
    path = kernel.add_namespace("sb1")
    sb = SandboxInfo("c1", path, "eth0")
    await driver.create_endpoint(nw, ep)
    await driver.join(nw, ep, sb)
    veth = host_links(kernel)[host_ifname(ep)]
    br = host_links(kernel)[bridge_name(nw)]
    assert veth.master == br.index and veth.hairpin and veth.up  # type: ignore[attr-defined]
    assert ownership.owned_by(veth.alias, ME, "ep", EP)  # type: ignore[attr-defined]
    inside = kernel.namespace("sb1")
    eth0 = inside.by_name()["eth0"]
    assert eth0.up and eth0.mac == ep.mac and ownership.owned_by(eth0.alias, ME, "ep", EP)
    assert inside.addresses[eth0.index] == ["198.51.100.2/24", "2001:db8:1::2/64"]
    assert inside.routes == {("198.51.100.1", eth0.index), ("2001:db8:1::1", eth0.index)}
    await driver.set_gateway(nw, ep, sb, False)
    assert inside.routes == set()
    await driver.set_gateway(nw, ep, sb, True)
    assert len(inside.routes) == 2
    await driver.leave(nw, ep, sb)
    assert host_ifname(ep) not in host_links(kernel)  # unplugged, then reaped with its group
    assert "eth0" not in inside.by_name()
    await driver.delete_endpoint(nw, ep)
    await driver.leave(nw, ep, sb)  # gone is fine


async def test_a_default_route_libnet_did_not_make_is_refused_not_replaced(
    kernel: FakeKernel, driver: BridgeDriver
) -> None:
    nw, ep = net(), endpoint()
    await driver.create_network(nw)
    path = kernel.add_namespace("sb1")
    up0 = kernel.add_link("sb1", "up0", "veth", up=True)
    inside = kernel.namespace("sb1")
    inside.routes.add(("203.0.113.202", up0.index))  # the runtime's own
    await driver.create_endpoint(nw, ep)
    with pytest.raises(Conflict, match="default route"):
        await driver.join(nw, ep, SandboxInfo("c1", path, "eth0"))
    assert inside.routes == {("203.0.113.202", up0.index)}
    assert "eth0" not in inside.by_name()  # the join rolled back


async def test_delete_after_this_process_left_spares_the_second_unplug(
    kernel: FakeKernel, driver: BridgeDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    nw, ep = net(), endpoint()
    await driver.create_network(nw)
    sb = SandboxInfo("c1", kernel.add_namespace("sb1"), "eth0")
    await driver.join(nw, ep, sb)
    calls: list[str] = []
    real = type(driver.nl).unplug
    monkeypatch.setattr(
        type(driver.nl), "unplug", lambda self, link, **kw: calls.append(link) or real(self, link, **kw)
    )
    await driver.leave(nw, ep, sb)
    await driver.delete_endpoint(nw, ep)
    assert calls == [host_ifname(ep)]  # the leave's unplug only
    await driver.join(nw, ep, sb)  # joined again, then deleted without a leave (a crash's leftover, say)
    await driver.delete_endpoint(nw, ep)
    assert calls == [host_ifname(ep)] * 2


async def test_icc_false_isolates_ports(kernel: FakeKernel, driver: BridgeDriver) -> None:
    nw, ep = net(icc=False), endpoint()
    await driver.create_network(nw)
    await driver.join(nw, ep, SandboxInfo("c1", kernel.add_namespace("sb1"), "eth0"))
    assert host_links(kernel)[host_ifname(ep)].isolated  # type: ignore[attr-defined]


async def test_join_rolls_back_when_the_sandbox_side_fails(kernel: FakeKernel, driver: BridgeDriver) -> None:
    nw, ep = net(), endpoint()
    await driver.create_network(nw)
    kernel.fail_on("configure")
    with pytest.raises(KernelError):
        await driver.join(nw, ep, SandboxInfo("c1", kernel.add_namespace("sb1"), "eth0"))
    assert host_ifname(ep) not in host_links(kernel)
    assert set(kernel.namespace("sb1").by_name()) == {"lo"}


async def test_join_twice_is_a_conflict(kernel: FakeKernel, driver: BridgeDriver) -> None:
    nw, ep = net(), endpoint()
    await driver.create_network(nw)
    sb = SandboxInfo("c1", kernel.add_namespace("sb1"), "eth0")
    await driver.join(nw, ep, sb)
    with pytest.raises(Conflict):
        await driver.join(nw, ep, sb)


async def test_published_ports(kernel: FakeKernel, driver: BridgeDriver) -> None:
    nw = net()
    ep = endpoint(ports=(PortMapping(8080, 80), PortMapping(5353, 53, "udp", "127.0.0.1")))
    await driver.create_network(nw)
    await driver.program_external_connectivity(nw, ep)
    assert table(kernel).groups[f"ep:{EP}:ports"]
    relays = driver.publisher.relays
    assert relays.keys() == {EP} and {t.host_port for t in relays.targets(EP)} == {8080}
    await driver.revoke_external_connectivity(nw, ep)
    assert f"ep:{EP}:ports" not in table(kernel).groups and relays.keys() == set()


async def test_reconcile_removes_own_orphans_and_leaves_foreign_objects(
    kernel: FakeKernel, driver: BridgeDriver
) -> None:
    kept, gone = net(), net("3" * 64)
    await driver.create_network(kept)
    await driver.create_network(gone)
    kernel.add_link(None, "lnb-foreign", "bridge")  # named like ours, no mark
    kernel.add_link(None, "lnb-theirs", "bridge", alias=ownership.mark(OTHER, "net", "4" * 64))
    del table(kernel).groups[f"net:{NET}:masq"]  # drift
    report = await driver.reconcile([kept], [])
    links = host_links(kernel)
    assert bridge_name(gone) not in links and bridge_name(kept) in links
    assert "lnb-foreign" in links and "lnb-theirs" in links
    assert any("lnb-foreign" in line for line in report.foreign)
    assert any("lnb-theirs" in line for line in report.foreign)
    assert not [key for key in table(kernel).groups if key.startswith(f"net:{gone.id}")]
    assert f"net:{NET}:masq" in table(kernel).groups and any("masq" in line for line in report.repaired)
    assert table(kernel).bridges == {bridge_name(kept)}


async def test_reconcile_keeps_an_unknown_bridge_that_containers_use(kernel: FakeKernel, driver: BridgeDriver) -> None:
    nw, ep = net(), endpoint()
    await driver.create_network(nw)
    await driver.join(nw, ep, SandboxInfo("c1", kernel.add_namespace("sb1"), "eth0"))
    report = await driver.reconcile([], [])  # the store lost both records
    assert bridge_name(nw) in host_links(kernel) and host_ifname(ep) in host_links(kernel)
    assert NET in report.kept and EP in report.kept


async def test_the_reaper_waits_for_a_pause_in_operations_but_not_forever(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting links holds the kernel's rtnl lock for a grace period and every netlink request
    waits: a pass each second stalled the requests of a burst (issue 22).  It waits while
    operations keep coming, up to REAP_MAX_DELAY, and goes as soon as they pause."""
    import asyncio

    from libnet.drivers import bridge

    driver = BridgeDriver(instance=ME, kernel=kernel, relays=FakeRelays(), reap_delay=0.05)
    monkeypatch.setattr(bridge, "REAP_IDLE", 0.05)
    monkeypatch.setattr(bridge, "REAP_MAX_DELAY", 0.6)
    busy = [True]
    monkeypatch.setattr("libnet.gate.idle_for", lambda: 0.0 if busy[0] else 1.0)
    nw, ep = net(), endpoint()
    await driver.create_network(nw)
    sb = SandboxInfo("c1", kernel.add_namespace("sb1"), "eth0")
    await driver.join(nw, ep, sb)
    await driver.leave(nw, ep, sb)
    await asyncio.sleep(0.3)
    assert host_ifname(ep) in host_links(kernel)  # unplugged, waiting: operations keep coming
    await asyncio.sleep(0.5)
    assert driver._reaping is not None
    await asyncio.wrap_future(driver._reaping)
    assert host_ifname(ep) not in host_links(kernel)  # REAP_MAX_DELAY passed: reaped anyway

    busy[0] = False
    await driver.join(nw, ep, sb)
    await driver.leave(nw, ep, sb)
    await asyncio.sleep(0.15)
    await asyncio.wrap_future(driver._reaping)
    assert host_ifname(ep) not in host_links(kernel)  # a pause: reaped within reap_delay
    await driver.close()


async def test_a_join_cancelled_while_the_host_thread_plugs_leaves_nothing_behind(
    kernel: FakeKernel, driver: BridgeDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With other operations in flight the host thread plugs and configures; a join cancelled
    meanwhile (its caller gone) left that work done for nobody: the veth plugged, ``eth0`` up in
    the sandbox with the endpoint's addresses and default routes, until the reaper's pass (up to
    REAP_MAX_DELAY under load), and the next connect there refused as a name clash (breaker:
    4 of 4 cancelled connects through the Controller).  It is deleted again once the thread is done."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr("libnet.gate.in_flight", lambda: 2)
    nw, ep = net(), endpoint()
    await driver.create_network(nw)
    pool = ThreadPoolExecutor(1, thread_name_prefix="host")  # the host namespace's thread
    monkeypatch.setattr(driver.nl, "submit", pool.submit)
    entered, release = threading.Event(), threading.Event()
    real_check = kernel.check

    def check(operation: str) -> None:
        if operation == "configure" and threading.current_thread().name.startswith("host"):
            entered.set()
            release.wait(5)
        real_check(operation)

    monkeypatch.setattr(kernel, "check", check)
    sb = SandboxInfo("c1", kernel.add_namespace("sb1"), "eth0")
    await cancel_while_the_thread_is_held(driver.join(nw, ep, sb), entered, release, pool)
    assert host_ifname(ep) not in host_links(kernel)
    assert set(kernel.namespace("sb1").by_name()) == {"lo"}
    monkeypatch.setattr(driver.nl, "submit", type(driver.nl).submit.__get__(driver.nl))
    await driver.join(nw, ep, sb)  # the sandbox's eth0 is free again
    assert "eth0" in kernel.namespace("sb1").by_name()


async def test_a_leave_cancelled_while_the_host_thread_unplugs_still_has_the_veth_reaped(
    kernel: FakeKernel, driver: BridgeDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leave cancelled while the host thread retires and unplugs: the veth went into the dead
    group, but no reaper pass was queued for it (it waited for another leave's, or reconcile)."""
    import asyncio
    import threading
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr("libnet.gate.in_flight", lambda: 2)
    nw, ep = net(), endpoint()
    await driver.create_network(nw)
    sb = SandboxInfo("c1", kernel.add_namespace("sb1"), "eth0")
    await driver.join(nw, ep, sb)
    pool = ThreadPoolExecutor(1, thread_name_prefix="host")
    monkeypatch.setattr(driver.nl, "submit", pool.submit)
    entered, release = threading.Event(), threading.Event()
    real_unplug = driver.nl.unplug

    def unplug(*args: object, **kw: object) -> bool:
        entered.set()
        release.wait(5)
        return real_unplug(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(driver.nl, "unplug", unplug)
    await cancel_while_the_thread_is_held(driver.leave(nw, ep, sb), entered, release, pool)
    for _ in range(3):
        await asyncio.sleep(0)  # the pass queued from the thread runs on the loop (reap_delay 0: at once)
    assert host_ifname(ep) not in host_links(kernel)
    assert "eth0" not in kernel.namespace("sb1").by_name()


async def test_a_rejoin_whose_old_veth_the_reaper_takes_meanwhile_succeeds(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A join finds its endpoint's old veth (unplugged, waiting for the reaper) holding the name;
    the reaper's pass deletes it before the join's own cleanup looks: the name is free, so the
    join tries again instead of failing with a Conflict (breaker, session 9)."""
    from libnet.errors import KernelObjectExists

    driver = BridgeDriver(instance=ME, kernel=kernel, relays=FakeRelays(), reap_delay=100)
    nw, ep = net(), endpoint()
    await driver.create_network(nw)
    sb = SandboxInfo("c1", kernel.add_namespace("sb1"), "eth0")
    await driver.join(nw, ep, sb)
    await driver.leave(nw, ep, sb)
    assert host_ifname(ep) in host_links(kernel)  # unplugged, waiting for the reaper
    cls = type(driver.nl)
    clashes = [0]
    for method in ("plug_veth", "plug_veth_here"):
        real = getattr(cls, method)

        def clash_once(self, *args, _real=real, **kw):  # type: ignore[no-untyped-def]
            if clashes[0] == 0:
                clashes[0] += 1
                driver.reaper.delete_group(ownership.dead_group(ME))  # the reaper's pass, meanwhile
                raise KernelObjectExists("exists", ifname=host_ifname(ep))
            return _real(self, *args, **kw)

        monkeypatch.setattr(cls, method, clash_once)
    await driver.join(nw, ep, sb)
    assert clashes[0] == 1 and host_links(kernel)[host_ifname(ep)].up  # type: ignore[attr-defined]
    await driver.close()


async def test_reconcile_deletes_the_veths_waiting_for_the_reaper_in_one_request(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash leaves up to REAP_MAX_DELAY's worth of unplugged veths: the next reconcile deleted
    them one by one (a grace period each) with a line each; now one request, one line."""
    from libnet.testing.fake_kernel import FakeNetlink

    driver = BridgeDriver(instance=ME, kernel=kernel, relays=FakeRelays(), reap_delay=100)
    nw = net()
    await driver.create_network(nw)
    eps = [endpoint(f"{i}" * 64) for i in range(4, 9)]
    for i, ep in enumerate(eps):
        sb = SandboxInfo(f"c{i}", kernel.add_namespace(f"sb{i}"), "eth0")
        await driver.join(nw, ep, sb)
        await driver.leave(nw, ep, sb)
    assert all(host_ifname(ep) in host_links(kernel) for ep in eps)  # waiting
    deletes: list[str] = []
    real_delete, real_group = FakeNetlink.delete_link, FakeNetlink.delete_group
    monkeypatch.setattr(
        FakeNetlink, "delete_link", lambda self, link: deletes.append("link") or real_delete(self, link)
    )
    monkeypatch.setattr(FakeNetlink, "delete_group", lambda self, g: deletes.append("group") or real_group(self, g))
    # the agent was killed (its reaper's pass never came); the next one starts and reconciles
    after = BridgeDriver(instance=ME, kernel=kernel, relays=FakeRelays(), reap_delay=100)
    report = await after.reconcile([nw], [])
    assert not any(host_ifname(ep) in host_links(kernel) for ep in eps)
    assert deletes == ["group"]
    assert [line for line in report.removed if "waiting for the reaper" in line] == [
        "5 unplugged veth(s) waiting for the reaper (" + ", ".join(sorted(host_ifname(ep) for ep in eps)) + "): "
        "deleted at once"
    ]
    await after.close()
