"""The overlay driver on the in-memory kernel (libnet.testing.fake_kernel): no root."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from libnet import ownership
from libnet.driverapi import Driver, EndpointInfo, NetworkInfo, SandboxInfo
from libnet.drivers.overlay.driver import OverlayDriver
from libnet.drivers.overlay.peerdb import Peer
from libnet.drivers.overlay.peerwatch import encode, peers_prefix
from libnet.drivers.overlay.vni import P
from libnet.errors import KernelError, Unavailable
from libnet.kernel.neighbours import FdbEntry, Neighbour
from libnet.store.memory import MemoryStore
from libnet.testing.fake_kernel import FakeKernel

ME = "0123456789ab"
NET, EP, REMOTE = "1" * 64, "2" * 64, "3" * 64
VTEP = "203.0.113.1"


def net(nid: str = NET) -> NetworkInfo:
    return NetworkInfo(nid, "ov", "198.51.100.0/24", "198.51.100.1/24", None, None, False, {"vni": None, "mtu": None})


def endpoint(eid: str = EP) -> EndpointInfo:
    return EndpointInfo(eid, NET, "a", "198.51.100.2/24", None, "02:42:c6:33:64:02")


class FlakyStore(MemoryStore):
    """Fails the next put under ``fail_prefix``."""

    fail_prefix: str | None = None

    async def put(self, key: str, value: bytes) -> int:
        if self.fail_prefix and key.startswith(self.fail_prefix):
            self.fail_prefix = None
            raise Unavailable("injected store failure")
        return await super().put(key, value)


@pytest.fixture
def kernel() -> FakeKernel:
    kernel = FakeKernel()
    eth0 = kernel.add_link(None, "eth0", None, up=True)
    kernel.namespace(None).addresses[eth0.index] = [f"{VTEP}/24"]
    return kernel


@pytest.fixture
async def driver(kernel: FakeKernel, tmp_path):
    drv = OverlayDriver(
        cluster_store=FlakyStore(),
        node="h1",
        vtep=VTEP,
        overlay_prefix="lno-t-",
        anti_entropy_interval=3600,
        instance=ME,
        state_dir=str(tmp_path),
        kernel=kernel,
    )
    yield drv
    await drv.close()


def test_the_driver_satisfies_its_protocol(driver: OverlayDriver) -> None:
    assert isinstance(driver, Driver)


async def test_create_and_delete_network_allocate_and_free_the_vni(driver: OverlayDriver) -> None:
    await driver.create_network(net())
    store = driver.store
    assert store is not None
    assert (await store.get(f"{P}/vni/256")).value == NET.encode()
    assert (await store.get(f"{P}/networks/{NET}")).value == b"256"
    await driver.create_network(net("4" * 64))
    assert driver.vnis.cached("4" * 64) == 257
    await driver.delete_network(net())
    assert await store.list(f"{P}/vni/256") == [] and await store.list(f"{P}/networks/{NET}") == []


async def test_vni_allocation_rolls_back_its_claim(driver: OverlayDriver) -> None:
    store = driver.store
    assert isinstance(store, FlakyStore)
    store.fail_prefix = f"{P}/networks/"
    with pytest.raises(Unavailable, match="injected"):
        await driver.create_network(net())
    assert await store.list(f"{P}/") == []


async def test_an_mtu_larger_than_this_hosts_path_is_lowered_to_it(kernel: FakeKernel, driver: OverlayDriver) -> None:
    """A network made on a host with a larger underlay (mtu 9000): here its devices get what the path carries."""
    nw = dataclasses.replace(net(), options={"vni": None, "mtu": 9000})
    await driver.create_network(nw)
    await driver.create_endpoint(nw, endpoint())
    await driver.join(nw, endpoint(), SandboxInfo("c1", kernel.add_namespace("sb1"), "eth0"))
    links = kernel.namespace("lno-t-256").by_name()
    assert links["br0"].mtu == links["vxlan0"].mtu == 1450


async def test_join_builds_the_namespace_and_leave_removes_it(kernel: FakeKernel, driver: OverlayDriver) -> None:
    nw, ep = net(), endpoint()
    await driver.create_network(nw)
    await driver.create_endpoint(nw, ep)
    sb = SandboxInfo("c1", kernel.add_namespace("sb1"), "eth0")
    await driver.join(nw, ep, sb)
    space = kernel.namespace("lno-t-256")
    links = space.by_name()
    assert links["br0"].kind == "bridge" and ownership.owned_by(links["br0"].alias, ME, "net", NET)
    assert space.addresses[links["br0"].index] == ["198.51.100.1/24"]
    vx = links["vxlan0"]
    assert vx.master == links["br0"].index and vx.mtu == 1450
    assert vx.vxlan == {"vni": 256, "local": VTEP, "port": 4789, "learning": False, "proxy": True}
    veth = next(link for link in links.values() if link.kind == "veth")
    assert veth.master == links["br0"].index and ownership.owned_by(veth.alias, ME, "ep", EP)
    inside = kernel.namespace("sb1")
    eth0 = inside.by_name()["eth0"]
    assert inside.addresses[eth0.index] == ["198.51.100.2/24"] and inside.routes == set()  # no default route
    assert driver.store is not None and await driver.store.list(peers_prefix(P, NET))
    await driver.leave(nw, ep, sb)
    assert not kernel.netns_exists("lno-t-256") and "eth0" not in inside.by_name()
    assert await driver.store.list(peers_prefix(P, NET)) == []
    await driver.delete_endpoint(nw, ep)
    await driver.delete_network(nw)


async def test_join_rolls_back_when_the_sandbox_side_fails(kernel: FakeKernel, driver: OverlayDriver) -> None:
    nw, ep = net(), endpoint()
    await driver.create_network(nw)
    kernel.fail_on("configure")
    with pytest.raises(KernelError):
        await driver.join(nw, ep, SandboxInfo("c1", kernel.add_namespace("sb1"), "eth0"))
    assert not [link for link in kernel.namespace("lno-t-256").links.values() if link.kind == "veth"]
    assert set(kernel.namespace("sb1").by_name()) == {"lo"}
    assert driver.store is not None and await driver.store.list(peers_prefix(P, NET)) == []


async def test_remote_peers_are_programmed_and_announced(kernel: FakeKernel, driver: OverlayDriver) -> None:
    nw, ep = net(), endpoint()
    seen: list[str] = []
    driver.peer_listeners.append(seen.append)
    await driver.create_network(nw)
    await driver.join(nw, ep, SandboxInfo("c1", kernel.add_namespace("sb1"), "eth0"))
    remote = Peer(REMOTE, NET, "02:42:c6:33:64:09", "203.0.113.2", "h2", "198.51.100.9/24", None, "b")
    assert driver.store is not None
    await driver.store.put(peers_prefix(P, NET) + REMOTE, encode(remote))
    for _ in range(100):
        if driver.remote_endpoints(NET):
            break
        await asyncio.sleep(0.01)
    await driver.programmer.settled()
    assert [peer.endpoint_id for peer in driver.remote_endpoints(NET)] == [REMOTE]
    assert NET in seen
    with kernel.netlink("lno-t-256") as nl:
        assert Neighbour("198.51.100.9", "02:42:c6:33:64:09") in nl.neighbours("vxlan0")
        assert FdbEntry("02:42:c6:33:64:09", "203.0.113.2") in nl.fdb("vxlan0")
        nl.delete_fdb("vxlan0", nl.fdb("vxlan0"))  # drift: repaired by anti-entropy
    assert any("neighbour/FDB" in line for line in await driver.repair())


async def test_a_new_remote_peer_is_announced_into_the_local_containers_ports(
    kernel: FakeKernel, driver: OverlayDriver
) -> None:
    """Only into the veths of this host's endpoints on that network (never br0, which floods to every VTEP)."""
    from libnet.drivers.bridge_model import host_ifname

    nw, ep = net(), endpoint()
    await driver.create_network(nw)
    await driver.join(nw, ep, SandboxInfo("c1", kernel.add_namespace("sb1"), "eth0"))
    await driver.programmer.settled()
    assert kernel.announced == []
    remote = Peer(REMOTE, NET, "02:42:c6:33:64:09", "203.0.113.2", "h2", "198.51.100.9/24", "2001:db8::9/64", "b")
    assert driver.store is not None
    await driver.store.put(peers_prefix(P, NET) + REMOTE, encode(remote))
    for _ in range(100):
        if kernel.announced:
            break
        await asyncio.sleep(0.01)
    assert kernel.announced == [
        (
            "lno-t-256",
            (host_ifname(ep),),
            (Neighbour("198.51.100.9", "02:42:c6:33:64:09"), Neighbour("2001:db8::9", "02:42:c6:33:64:09")),
        )
    ]


async def test_a_new_local_endpoint_is_announced_into_the_other_local_containers_ports(
    kernel: FakeKernel, driver: OverlayDriver
) -> None:
    """An address that comes to this host (its former endpoint left here or on another host; an IPv6
    address given out again comes with a new MAC) is announced into this host's other containers on the
    network: one of them may still hold it with the old MAC, which the bridge no longer knows (a test host
    saw no reply for 40 s).  Not into the new endpoint's own port, nor br0."""
    from libnet.drivers.bridge_model import host_ifname

    nw, first = net(), endpoint()
    await driver.create_network(nw)
    await driver.join(nw, first, SandboxInfo("c1", kernel.add_namespace("sb1"), "eth0"))
    await driver.programmer.settled()
    assert kernel.announced == []  # alone on this host: no one to tell
    second = EndpointInfo("4" * 64, NET, "b", "198.51.100.3/24", "2001:db8::3/64", "02:42:c6:33:64:03")
    await driver.join(nw, second, SandboxInfo("c2", kernel.add_namespace("sb2"), "eth0"))
    await driver.told()  # the join does not wait for it
    assert kernel.announced == [
        (
            "lno-t-256",
            (host_ifname(first),),
            (Neighbour("198.51.100.3", "02:42:c6:33:64:03"), Neighbour("2001:db8::3", "02:42:c6:33:64:03")),
        )
    ]


async def test_reconcile_removes_entry_guards_of_encrypted_vnis_not_served_here(
    kernel: FakeKernel, driver: OverlayDriver
) -> None:
    """Breaker (issue 20): an agent killed in the middle of a join of an encrypted network (or down while it
    was deleted) left the VNI's entry guard; a plain overlay given that VNI later had its VXLAN dropped here."""
    from libnet.encryption.tunnel import GUARD_KEY
    from libnet.kernel.firewall import encrypted_vni_rules

    fw = kernel.firewall(None, ownership.firewall_table(ME))
    fw.add(f"{GUARD_KEY}:vni:256", encrypted_vni_rules(256, 4789, ["lnwx"]))  # a crash's leftover
    fw.add("other", [("forward", [{"drop": None}])])
    nw, ep = net(), endpoint()  # a plain overlay that got VNI 256
    await driver.create_network(nw)
    await driver.join(nw, ep, SandboxInfo("c1", kernel.add_namespace("sb1"), "eth0"))
    report = await driver.reconcile([nw], [(ep, SandboxInfo("c1", "/run/netns/sb1", "eth0"))])
    assert {r["key"] for r in fw.rules()} == {"other"}
    assert any("VNI 256" in line for line in report.removed), report.removed


async def test_reconcile_removes_own_orphans_and_leaves_foreign_namespaces(
    kernel: FakeKernel, driver: OverlayDriver
) -> None:
    nw, ep = net(), endpoint()
    await driver.create_network(nw)
    await driver.join(nw, ep, SandboxInfo("c1", kernel.add_namespace("sb1"), "eth0"))
    kernel.add_namespace("lno-t-999")  # named like ours, not in the ledger
    driver.ledger.record("lno-t-700", "overlay", "5" * 64)  # ours, no local endpoint needs it
    kernel.add_namespace("lno-t-700")
    report = await driver.reconcile([nw], [(ep, SandboxInfo("c1", "/run/netns/sb1", "eth0"))])
    assert kernel.netns_exists("lno-t-999") and any("lno-t-999" in line for line in report.foreign)
    assert not kernel.netns_exists("lno-t-700") and any("lno-t-700" in line for line in report.removed)
    assert kernel.netns_exists("lno-t-256")


async def test_a_restarted_driver_unplugs_the_veth_of_a_join_that_never_reached_the_store(
    kernel: FakeKernel, driver: OverlayDriver, tmp_path
) -> None:
    """kill -9 between a connect's driver join and its store step: the next start's reconcile
    deletes the endpoint (an unfinished connect) before the driver has seen the network; the
    delete looked for the VNI in this process's cache only, so the veth stayed plugged into the
    overlay and the container (its address free again for another endpoint), and every
    reconcile after reported it "kept (a lost store record?)"."""
    nw, ep = net(), endpoint()
    await driver.create_network(nw)
    await driver.create_endpoint(nw, ep)
    await driver.join(nw, ep, SandboxInfo("c1", kernel.add_namespace("sb1"), "eth0"))
    again = OverlayDriver(
        cluster_store=driver.store,
        node="h1",
        vtep=VTEP,
        overlay_prefix="lno-t-",
        anti_entropy_interval=3600,
        instance=ME,
        state_dir=str(tmp_path),
        kernel=kernel,
    )
    try:
        await again.delete_endpoint(nw, ep)
        assert not [link for link in kernel.namespace("lno-t-256").links.values() if link.kind == "veth"]
        assert "eth0" not in kernel.namespace("sb1").by_name()
        assert again.store is not None and await again.store.list(peers_prefix(P, NET)) == []
        await again.delete_endpoint(nw, endpoint("5" * 64))  # no veth at all: nothing to do
    finally:
        await again.close()
