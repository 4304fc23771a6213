"""The overlay driver's ownership rules without a kernel: VNI allocation against
the namespace ledger, VNI recovery after a store loss, and when a ``vxlan0`` is
rebuilt rather than reused."""

from __future__ import annotations

import pytest

from libnet import ownership
from libnet.driverapi import NetworkInfo
from libnet.drivers.overlay import plumbing
from libnet.drivers.overlay.driver import OverlayDriver, P
from libnet.errors import Conflict
from libnet.kernel.netlink import Link, Vxlan
from libnet.store.memory import MemoryStore
from libnet.testing.fake_kernel import FakeKernel

INSTANCE = "0123456789ab"
OLD, NEW = "a" * 64, "b" * 64


def net(nid: str, vni: int | None = None, mtu: int | None = None) -> NetworkInfo:
    return NetworkInfo(
        nid, f"n{nid[:4]}", "198.51.100.0/24", "198.51.100.1/24", None, None, False, {"vni": vni, "mtu": mtu}
    )


@pytest.fixture
def driver(tmp_path):
    kernel = FakeKernel()
    drv = OverlayDriver(
        cluster_store=MemoryStore(),
        vtep="203.0.113.1",
        overlay_prefix="lno-t-",
        instance=INSTANCE,
        state_dir=str(tmp_path),
        kernel=kernel,
    )
    drv.fake = kernel  # its namespaces are the ones that "exist"
    return drv


def running(drv: OverlayDriver, vni: int, owner: str) -> None:
    """A namespace of this instance for ``owner`` at ``vni``, as a running network leaves it."""
    name = drv.ns_name(vni)
    drv.ledger.record(name, "overlay", owner)
    drv.fake.add_namespace(name)


async def test_allocation_skips_vnis_in_use_here_after_a_store_loss(driver) -> None:
    running(driver, 256, OLD)  # the store knows nothing of it any more
    await driver.create_network(net(NEW))
    assert driver.vnis.cached(NEW) == 257
    assert (await driver.store.get(f"{P}/vni/257")).value == NEW.encode()


async def test_asking_for_a_vni_in_use_here_is_a_conflict(driver) -> None:
    running(driver, 300, OLD)
    with pytest.raises(Conflict) as exc:
        await driver.create_network(net(NEW, vni=300))
    assert exc.value.ids["other_network_id"] == OLD and exc.value.ids["netns"] == "lno-t-300"
    assert await driver.store.list(f"{P}/") == []


async def test_a_stale_ledger_record_blocks_nothing(driver) -> None:
    driver.ledger.record(driver.ns_name(256), "overlay", OLD)  # its namespace is gone
    await driver.create_network(net(NEW))
    assert driver.vnis.cached(NEW) == 256


async def test_a_lost_vni_comes_back_from_the_ledger(driver) -> None:
    running(driver, 777, OLD)
    assert await driver.vnis.get(driver.store, OLD) == 777
    assert (await driver.store.get(f"{P}/networks/{OLD}")).value == b"777"
    assert (await driver.store.get(f"{P}/vni/777")).value == OLD.encode()


async def test_deleting_a_network_keeps_a_vni_key_another_network_holds(driver) -> None:
    await driver.store.put(f"{P}/networks/{OLD}", b"256")
    await driver.store.put(f"{P}/vni/256", NEW.encode())  # given out again after a store loss
    await driver.delete_network(net(OLD))
    assert (await driver.store.get(f"{P}/vni/256")).value == NEW.encode()


def vx(driver, **changes) -> Vxlan:
    alias = ownership.mark(INSTANCE, "net", OLD)
    base = {
        "link": Link(5, "vxlan0", "vxlan", 1450, "02:00:00:00:00:01", True, 4, alias),
        "vni": 256,
        "local": "203.0.113.1",
        "port": 4789,
        "learning": False,
        "proxy": True,
        "link_netnsid": 0,
    }
    return Vxlan(**{**base, **changes})


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"local": "203.0.113.9"}, "local address 203.0.113.9"),
        ({"vni": 257}, "VNI 257"),
        ({"port": 8472}, "UDP port 8472"),
        ({"learning": True}, "learning True"),
        ({"proxy": False}, "ARP/ND proxy False"),
        ({"link_netnsid": None}, "UDP socket"),
        ({"link": Link(5, "vxlan0", "vxlan", 1400, "02:00:00:00:00:01", True, 4, None)}, "MTU 1400"),
        (
            {"link": Link(5, "vxlan0", "vxlan", 1450, "", True, 4, ownership.mark(INSTANCE, "net", NEW))},
            "the mark",
        ),
        (
            {"link": Link(5, "vxlan0", "vxlan", 1450, "", True, 4, ownership.mark("ba9876543210", "net", OLD))},
            "the mark",
        ),
    ],
)
def test_when_vxlan0_is_rebuilt(driver, changes, reason) -> None:
    why = driver.plumbing.vxlan_mismatch(vx(driver, **changes), net(OLD), 256, "203.0.113.1", 1450)
    if reason is None:
        assert why is None
    else:
        assert why is not None and reason in why


def test_not_a_vxlan_device_is_rebuilt(driver) -> None:
    assert driver.plumbing.vxlan_mismatch(None, net(OLD), 256, "203.0.113.1", 1450) == "not a VXLAN device"


def test_marks_carry_safe_names_only() -> None:
    assert plumbing.label("blue") == "blue"
    assert plumbing.label("a:b") == "" and plumbing.label("x" * 101) == ""
