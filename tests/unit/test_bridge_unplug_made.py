"""A leave unplugs the veth this process made without reading its mark again; anything else is checked."""

from __future__ import annotations

import pytest

from libnet.driverapi import EndpointInfo, NetworkInfo, SandboxInfo
from libnet.drivers.bridge import BridgeDriver, host_ifname
from libnet.testing.fake_kernel import FakeKernel, FakeRelays

ME, NET, EP = "0123456789ab", "1" * 64, "2" * 64
OPTS = {"bridge_name": None, "mtu": None, "icc": True}
NW = NetworkInfo(NET, "web", "198.51.100.0/24", "198.51.100.1/24", "2001:db8:1::/64", "2001:db8:1::1/64", False, OPTS)
EPI = EndpointInfo(EP, NET, "a", "198.51.100.2/24", "2001:db8:1::2/64", "02:42:c6:33:64:02", ())


@pytest.fixture
def setup(monkeypatch):  # type: ignore[no-untyped-def]
    kernel = FakeKernel()
    driver = BridgeDriver(instance=ME, kernel=kernel, relays=FakeRelays(), reap_delay=0)
    asked: list[str | None] = []
    real = driver._owns_veth

    def owns(ep):  # type: ignore[no-untyped-def]
        check = real(ep)
        return lambda alias: asked.append(alias) or check(alias)

    monkeypatch.setattr(driver, "_owns_veth", owns)
    return kernel, driver, asked


async def test_the_veth_made_here_is_unplugged_without_reading_its_mark(setup) -> None:  # type: ignore[no-untyped-def]
    kernel, driver, asked = setup
    await driver.create_network(NW)
    sb = SandboxInfo("c1", kernel.add_namespace("sb1"), "eth0")
    await driver.join(NW, EPI, sb)
    await driver.leave(NW, EPI, sb)
    assert asked == [] and host_ifname(EPI) not in kernel.namespace(None).by_name()


async def test_a_link_that_took_the_name_since_is_checked_and_left_alone(setup) -> None:  # type: ignore[no-untyped-def]
    kernel, driver, asked = setup
    await driver.create_network(NW)
    sb = SandboxInfo("c1", kernel.add_namespace("sb1"), "eth0")
    await driver.join(NW, EPI, sb)
    name = host_ifname(EPI)
    space = kernel.namespace(None)
    kernel.delete(space, space.by_name()[name].index)  # gone behind libnet's back ...
    foreign = kernel.add_link(None, name, "veth", alias="someone else's", up=True)  # ... and the name reused
    await driver.leave(NW, EPI, sb)
    assert asked == ["someone else's"] and space.by_name()[name] is foreign and foreign.up
