"""Inputs that look valid but cannot work are refused, never truncated or
half-applied (issue 14, faults 5 and 7)."""

from __future__ import annotations

import pytest

from ipam.ipam import StoreIpam
from libnet import Config, Controller
from libnet.driverapi import Capabilities
from libnet.drivers.bridge import BridgeDriver
from libnet.drivers.overlay.driver import OverlayDriver
from libnet.errors import Conflict, InvalidOption
from libnet.store.memory import MemoryStore
from libnet.testing.fakes import FakeDriver, FakeNamespaces


@pytest.mark.parametrize("mtu", [1400.9, "1400.9", float("inf"), "1e3", True, "", None, [1400], 1279, 65536, "0x578"])
def test_mtu_must_be_a_whole_number_in_range(mtu) -> None:
    for driver in (BridgeDriver(instance="0123456789ab"), OverlayDriver(instance="0123456789ab")):
        with pytest.raises(InvalidOption, match="whole number"):
            driver.parse_network_options({"mtu": mtu})


@pytest.mark.parametrize("mtu", [1400, "1400", " 9000 "])
def test_mtu_as_number_or_digits(mtu) -> None:
    assert BridgeDriver(instance="0123456789ab").parse_network_options({"mtu": mtu})["mtu"] == int(mtu)


@pytest.fixture
async def ctl(tmp_path):
    store = MemoryStore()
    c = Controller(
        Config(state_dir=str(tmp_path), resolv_conf=str(tmp_path / "resolv.conf")),
        store=store,
        ipam=StoreIpam(store),
        drivers={"bridge": FakeDriver("bridge"), "overlay": FakeDriver("overlay", scope="global")},
        namespaces=FakeNamespaces(),
    )
    await c.start()
    yield c
    await c.close()


async def test_a_sandbox_is_on_a_network_once(ctl: Controller) -> None:
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/25")
    sb = await ctl.create_sandbox()
    await ctl.connect("front", sb.id, name="a")
    before = [(p.key, p.value) for p in await ctl._store.list("libnet/")]
    with pytest.raises(Conflict, match="already on network front"):
        await ctl.connect("front", sb.id, name="b")
    assert [(p.key, p.value) for p in await ctl._store.list("libnet/")] == before


class OwnAddressing(FakeDriver):
    """Like the overlay: global scope, its own address domain (pools may overlap other networks')."""

    def capabilities(self) -> Capabilities:
        return Capabilities(scope="global", own_addressing=True)


@pytest.mark.parametrize("first", ["bridge", "overlay"])
async def test_a_sandbox_never_joins_two_overlapping_networks(tmp_path, first: str) -> None:
    """Bridge + overlay or overlay + overlay with the same subnet: the second join is a Conflict."""
    store = MemoryStore()
    ctl = Controller(
        Config(state_dir=str(tmp_path)),
        store=store,
        ipam=StoreIpam(store),
        drivers={"bridge": FakeDriver("bridge"), "overlay": OwnAddressing("overlay")},
        namespaces=FakeNamespaces(),
    )
    await ctl.start()
    await ctl.create_network("one", first, ipv4_subnet="198.51.100.0/24")
    await ctl.create_network("two", "overlay", ipv4_subnet="198.51.100.0/24")
    await ctl.create_network("three", "overlay", ipv4_subnet="198.51.101.0/24")
    sb = await ctl.create_sandbox()
    await ctl.connect("one", sb.id)
    with pytest.raises(Conflict, match="overlaps network one"):
        await ctl.connect("two", sb.id)
    assert len((await ctl.sandbox(sb.id)).endpoints) == 1
    assert await ctl.endpoints("two") == []
    await ctl.connect("three", sb.id)  # no overlap: fine
    await ctl.close()


async def test_a_host_port_has_one_holder(ctl: Controller) -> None:
    """Issue 14, fault 1: a published host port is a Conflict naming its holder,
    also twice in one request; released with the endpoint; 0 picks a free one."""
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/25")
    a = await ctl.connect(
        "front", (await ctl.create_sandbox()).id, name="a", ports=[{"host_port": 8080, "container_port": 80}]
    )
    b_sb = await ctl.create_sandbox()
    before = [(p.key, p.value) for p in await ctl._store.list("libnet/")]
    with pytest.raises(
        Conflict, match=f"already published by endpoint a on network front \\(sandbox {a.sandbox_id[:12]}\\)"
    ):
        await ctl.connect("front", b_sb.id, name="b", ports=[{"host_port": 8080, "container_port": 81}])
    with pytest.raises(Conflict):  # a specific address collides with "every address"
        await ctl.connect(
            "front", b_sb.id, name="b", ports=[{"host_port": 8080, "container_port": 81, "host_ip": "198.51.100.1"}]
        )
    with pytest.raises(InvalidOption, match="published twice"):
        await ctl.connect(
            "front",
            b_sb.id,
            name="b",
            ports=[{"host_port": 9090, "container_port": 80}, {"host_port": 9090, "container_port": 81}],
        )
    assert [(p.key, p.value) for p in await ctl._store.list("libnet/")] == before
    udp = await ctl.connect(
        "front", b_sb.id, name="b", ports=[{"host_port": 8080, "container_port": 80, "protocol": "udp"}]
    )
    auto = await ctl.connect("front", (await ctl.create_sandbox()).id, name="c", ports=[{"container_port": 80}])
    assert 49153 <= auto.ports[0]["host_port"] <= 65535
    await ctl.disconnect("front", a.sandbox_id)
    again = await ctl.connect("front", a.sandbox_id, name="a2", ports=[{"host_port": 8080, "container_port": 80}])
    assert again.ports[0]["host_port"] == 8080 and udp.ports[0]["protocol"] == "udp"
