"""Unplugged veths are deleted in one reaper pass per ``reap_delay`` (libnet.drivers.bridge):
each deletion request holds the kernel's rtnl lock for an RCU grace period, whatever the
number of links, so one pass for many leaves, not one per leave (issue 22: a pass after
every disconnect kept the lock held most of the time under 8 API clients)."""

from __future__ import annotations

import asyncio

from libnet import ownership
from libnet.driverapi import EndpointInfo, SandboxInfo
from libnet.drivers.bridge import BridgeDriver, host_ifname
from libnet.testing.fake_kernel import FakeKernel, FakeRelays
from tests.unit.test_bridge_driver import ME, endpoint, net


def _driver(kernel: FakeKernel, delay: float) -> tuple[BridgeDriver, list[int]]:
    driver = BridgeDriver(instance=ME, kernel=kernel, relays=FakeRelays(), reap_delay=delay)
    passes: list[int] = []
    real = driver.reaper.delete_group

    def counted(group: int) -> None:
        passes.append(group)
        real(group)

    driver.reaper.delete_group = counted  # type: ignore[method-assign]
    return driver, passes


def _kernel() -> FakeKernel:
    kernel = FakeKernel()
    kernel.add_link(None, "eth0", None, up=True)
    return kernel


async def _joined(kernel: FakeKernel, driver: BridgeDriver, n: int) -> list[tuple[EndpointInfo, SandboxInfo]]:
    nw = net()
    await driver.create_network(nw)
    out = []
    for i in range(n):
        ep = endpoint(f"{i + 2}" * 64)
        sb = SandboxInfo(f"c{i}", kernel.add_namespace(f"sb{i}"), "eth0")
        await driver.create_endpoint(nw, ep)
        await driver.join(nw, ep, sb)
        out.append((ep, sb))
    return out


async def test_leaves_within_the_delay_share_one_pass() -> None:
    kernel = _kernel()
    driver, passes = _driver(kernel, 1.0)
    joined = await _joined(kernel, driver, 3)
    for ep, sb in joined:
        await driver.leave(net(), ep, sb)
    links = kernel.namespace(None).by_name()
    for ep, _ in joined:  # out of service at once: down, out of the bridge, in the dead group
        veth = links[host_ifname(ep)]
        assert not veth.up and veth.master is None and veth.group == ownership.dead_group(driver.owner)
    assert passes == []
    for _ in range(200):
        if not any(host_ifname(ep) in kernel.namespace(None).by_name() for ep, _ in joined):
            break
        await asyncio.sleep(0.02)
    assert not any(host_ifname(ep) in kernel.namespace(None).by_name() for ep, _ in joined)
    assert len(passes) == 1
    await driver.close()


async def test_a_join_right_after_a_leave_replaces_the_waiting_veth() -> None:
    kernel = _kernel()
    driver, passes = _driver(kernel, 30.0)
    ((ep, sb),) = await _joined(kernel, driver, 1)
    await driver.leave(net(), ep, sb)
    await driver.join(net(), ep, sb)  # same endpoint, same veth name: the unplugged one goes first
    veth = kernel.namespace(None).by_name()[host_ifname(ep)]
    assert veth.up and veth.master is not None
    assert kernel.namespace("sb0").by_name()["eth0"].up
    await driver.leave(net(), ep, sb)
    await driver.close()  # the waiting pass runs on close
    assert host_ifname(ep) not in kernel.namespace(None).by_name()
    assert len(passes) == 1


async def test_a_foreign_link_of_that_name_is_never_deleted() -> None:
    kernel = _kernel()
    driver, _ = _driver(kernel, 30.0)
    ((ep, sb),) = await _joined(kernel, driver, 1)
    await driver.leave(net(), ep, sb)
    await driver.close()
    kernel.add_link(None, host_ifname(ep), None, up=False)  # someone else's, down, in no bridge
    driver, _ = _driver(kernel, 30.0)
    try:
        await driver.join(net(), ep, sb)
    except Exception as exc:  # refused: the name is taken by what libnet did not make
        assert "exists already" in str(exc)
    else:
        raise AssertionError("joined over a foreign link")
    assert host_ifname(ep) in kernel.namespace(None).by_name()
    await driver.close()
