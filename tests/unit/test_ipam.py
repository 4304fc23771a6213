"""IPAM on the memory store: pools, defaults, allocation order, errors."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipam.api import GATEWAY_TYPE, REQUEST_ADDRESS_TYPE, Ipam
from ipam.ipam import StoreIpam
from ipam.pools import IpamConfig, PoolSpec
from libnet.errors import (
    AddressInUse,
    AddressNotAllocated,
    InvalidOption,
    InvalidSubnet,
    LibnetError,
    NoSuchPool,
    PoolExhausted,
    PoolOverlap,
)
from libnet.store.memory import MemoryStore


def new(config: IpamConfig | None = None) -> StoreIpam:
    return StoreIpam(MemoryStore(), config=config)


async def test_is_an_ipam_with_docker_spaces() -> None:
    ipam = new()
    assert isinstance(ipam, Ipam)
    assert ipam.default_address_spaces() == ("local", "global")


async def test_default_pools_local_global_and_v6() -> None:
    ipam = new()
    assert (await ipam.request_pool("local")).subnet == "172.17.0.0/16"
    second = await ipam.request_pool("local")
    assert (second.id, second.subnet, second.gateway) == ("local/172.18.0.0/16", "172.18.0.0/16", "172.18.0.1/16")
    for _ in range(13):
        await ipam.request_pool("local")
    assert (await ipam.request_pool("local")).subnet == "192.168.0.0/20"
    assert (await ipam.request_pool("local")).subnet == "192.168.16.0/20"
    assert [(await ipam.request_pool("global")).subnet for _ in range(2)] == ["10.0.0.0/24", "10.0.1.0/24"]

    v6a = ipaddress.ip_network((await ipam.request_pool("local", v6=True)).subnet)
    v6b = ipaddress.ip_network((await ipam.request_pool("local", v6=True)).subnet)
    assert v6a.prefixlen == v6b.prefixlen == 64
    ula = v6a.supernet(new_prefix=48)
    assert str(ula).startswith("fd") and v6b.subnet_of(ula) and v6a != v6b
    # the ULA is kept in the store: a new IPAM on the same store uses the same /48
    again = StoreIpam(ipam._stores["local"])
    assert ipaddress.ip_network((await again.request_pool("local", v6=True)).subnet).subnet_of(ula)


async def test_global_networks_take_their_own_v6_defaults() -> None:
    """An overlay and the gateway bridge its containers join got the same default /64 when IPv6
    pools were configured (one list for both spaces, each space blind to the other's store)."""
    own = new(IpamConfig(v6_pools=[PoolSpec("2001:db8:1::/48", 64)], global_v6=[PoolSpec("2001:db8:2::/48", 64)]))
    assert (await own.request_pool("local", v6=True)).subnet == "2001:db8:1::/64"
    assert (await own.request_pool("global", v6=True)).subnet == "2001:db8:2::/64"
    shared = new(IpamConfig(v6_pools=[PoolSpec("2001:db8:1::/48", 64)]))  # no global_v6: v6_pools serves both
    assert (await shared.request_pool("global", v6=True)).subnet == "2001:db8:1::/64"
    tiny = new(IpamConfig(global_v6=[PoolSpec("2001:db8:2::/124", 124)]))
    await tiny.request_pool("global", v6=True)
    with pytest.raises(PoolExhausted, match=r"IpamConfig\.global_v6, agent option global_pools"):
        await tiny.request_pool("global", v6=True)


async def test_local_defaults_skip_host_routes() -> None:
    ipam = new(IpamConfig(host_routes=lambda: ["0.0.0.0/0", "172.17.5.0/24", "10.0.0.0/24"]))
    assert (await ipam.request_pool("local")).subnet == "172.18.0.0/16"
    assert (await ipam.request_pool("global")).subnet == "10.0.0.0/24"  # host routes are a local matter


async def test_full_tunnel_vpn_halves_are_no_claim_on_default_pools() -> None:
    """Issue 14, fault 4: 0.0.0.0/1 + 128.0.0.0/1 (and ::/1 + 8000::/1) are a
    default route in disguise; a real /8 route still counts."""
    vpn = ["0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1", "172.16.0.0/12"]
    ipam = new(IpamConfig(host_routes=lambda: vpn[:4]))
    assert (await ipam.request_pool("local")).subnet == "172.17.0.0/16"
    assert (await ipam.request_pool("local", v6=True)).subnet.startswith("fd")
    ipam = new(IpamConfig(host_routes=lambda: vpn))
    assert (await ipam.request_pool("local")).subnet.startswith("192.168.")


async def test_exhausted_default_pools_say_how_to_add_more() -> None:
    ipam = new(IpamConfig(local_v4=[PoolSpec("198.51.100.0/24", 25)]))
    await ipam.request_pool("local")
    await ipam.request_pool("local")
    with pytest.raises(PoolExhausted) as err:
        await ipam.request_pool("local")
    assert "configure more default pools" in str(err.value)
    assert err.value.ids["pools"] == "198.51.100.0/24/25"


async def test_explicit_pool_overlap_names_the_holder() -> None:
    ipam = new()
    await ipam.request_pool("local", "198.51.100.0/24", options={"owner": "net-a"})
    with pytest.raises(PoolOverlap) as err:
        await ipam.request_pool("local", "198.51.100.128/25")
    assert err.value.ids["overlaps"] == "local/198.51.100.0/24" and err.value.ids["owner"] == "net-a"
    with pytest.raises(PoolOverlap):
        await ipam.request_pool("local", "198.51.0.0/16")
    # another space is another world
    assert (await ipam.request_pool("global", "198.51.100.0/24")).id == "global/198.51.100.0/24"
    # a default pool never lands on an explicit one
    await ipam.request_pool("local", "172.17.0.0/16")
    assert (await ipam.request_pool("local")).subnet == "172.18.0.0/16"


async def test_serial_allocation_does_not_reuse_at_once() -> None:
    ipam = new()
    pool = await ipam.request_pool("local", "198.51.100.0/24")
    assert pool.gateway == "198.51.100.1/24"
    a = [await ipam.request_address(pool.id) for _ in range(3)]
    assert a == ["198.51.100.2/24", "198.51.100.3/24", "198.51.100.4/24"]
    await ipam.release_address(pool.id, "198.51.100.2/24")
    assert await ipam.request_address(pool.id) == "198.51.100.5/24"


async def test_gateway_aux_specific_and_sub_pool() -> None:
    ipam = new()
    pool = await ipam.request_pool(
        "local",
        "198.51.100.0/24",
        "198.51.100.64/26",
        options={"gateway": "198.51.100.254", "aux_addresses": {"router": "198.51.100.65"}},
    )
    assert pool.gateway == "198.51.100.254/24"
    assert await ipam.request_address(pool.id, options={REQUEST_ADDRESS_TYPE: GATEWAY_TYPE}) == pool.gateway
    assert await ipam.request_address(pool.id, "198.51.100.254", {REQUEST_ADDRESS_TYPE: GATEWAY_TYPE}) == pool.gateway
    first = await ipam.request_address(pool.id, options={"owner": "ep1"})
    assert first == "198.51.100.66/24"  # inside the sub-pool, after the reserved aux address
    assert await ipam.request_address(pool.id, "198.51.100.10") == "198.51.100.10/24"  # specific: anywhere in pool
    with pytest.raises(AddressInUse):
        await ipam.request_address(pool.id, "198.51.100.10")
    with pytest.raises(AddressInUse):
        await ipam.request_address(pool.id, "198.51.100.65")  # aux is reserved
    owners = {a.address: a.owner for a in await ipam.audit(pool.id)}
    assert owners == {
        "198.51.100.254/24": "gateway",
        "198.51.100.65/24": "aux:router",
        "198.51.100.66/24": "ep1",
        "198.51.100.10/24": "",
    }


async def test_pool_exhaustion_names_the_pool() -> None:
    ipam = new()
    pool = await ipam.request_pool("local", "198.51.100.0/29")  # .1 gateway, .2-.6 free
    got = [await ipam.request_address(pool.id) for _ in range(5)]
    assert len(set(got)) == 5
    with pytest.raises(PoolExhausted) as err:
        await ipam.request_address(pool.id)
    assert err.value.ids["pool_id"] == pool.id


async def test_release_pool_and_restart() -> None:
    store = MemoryStore()
    ipam = StoreIpam(store)
    pool = await ipam.request_pool("local", "198.51.100.0/24")
    a = await ipam.request_address(pool.id, options={"owner": "ep1"})
    # a restarted IPAM knows what is taken from the store alone
    restarted = StoreIpam(store)
    b = await restarted.request_address(pool.id)
    assert b != a
    await restarted.release_pool(pool.id)
    assert await restarted.audit() == []
    with pytest.raises(NoSuchPool):
        await restarted.release_pool(pool.id)
    with pytest.raises(NoSuchPool):
        await StoreIpam(store).request_address(pool.id)
    # the subnet is free again, and starts clean
    again = await ipam.request_pool("local", "198.51.100.0/24")
    assert await ipam.request_address(again.id) == "198.51.100.2/24"


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda i, p: i.request_pool("local", "198.51.100.0/33"), InvalidSubnet),
        (lambda i, p: i.request_pool("local", "not-a-cidr"), InvalidSubnet),
        (lambda i, p: i.request_pool("local", "198.51.101.1/24"), InvalidSubnet),
        (lambda i, p: i.request_pool("local", "198.51.101.0"), InvalidSubnet),
        (lambda i, p: i.request_pool("local", "198.51.101.0/24", v6=True), InvalidSubnet),
        (lambda i, p: i.request_pool("local", "2001:db8::/64"), InvalidSubnet),
        (lambda i, p: i.request_pool("local", "198.51.101.0/31"), InvalidSubnet),
        (lambda i, p: i.request_pool("local", "198.51.101.1/32"), InvalidSubnet),
        (lambda i, p: i.request_pool("local", "2001:db8::/127", v6=True), InvalidSubnet),
        (lambda i, p: i.request_pool("local", "2001:db8::1/128", v6=True), InvalidSubnet),
        (lambda i, p: i.request_pool("local", "198.51.101.0/24", "198.51.102.0/25"), InvalidSubnet),
        (lambda i, p: i.request_pool("local", None, "198.51.102.0/25"), InvalidSubnet),
        (lambda i, p: i.request_pool("local", "198.51.101.0/24", options={"gateway": "198.51.102.1"}), InvalidSubnet),
        (lambda i, p: i.request_pool("local", "198.51.101.0/24", options={"gateway": "198.51.101.255"}), InvalidSubnet),
        (lambda i, p: i.request_pool("local", options={"gateway": "198.51.101.1"}), InvalidOption),
        (lambda i, p: i.request_pool("elsewhere"), InvalidOption),
        (lambda i, p: i.request_address(p.id, "198.51.100.200"), InvalidSubnet),
        (lambda i, p: i.request_address(p.id, "2001:db8::1"), InvalidSubnet),
        (lambda i, p: i.request_address(p.id, "banana"), InvalidSubnet),
        (lambda i, p: i.request_address(p.id, "198.51.100.0"), InvalidSubnet),  # network address
        (lambda i, p: i.request_address(p.id, options={"owner": 7}), InvalidOption),
        (lambda i, p: i.release_address(p.id, "198.51.100.9"), AddressNotAllocated),
        (lambda i, p: i.release_address(p.id, "198.51.100.200"), InvalidSubnet),
        (lambda i, p: i.request_address("local/203.0.113.0/24"), NoSuchPool),
        (lambda i, p: i.request_address("garbage"), NoSuchPool),
        (lambda i, p: i.release_pool("global/198.51.100.0/25"), NoSuchPool),
    ],
)
async def test_bad_input_gets_a_typed_error_and_changes_nothing(call, error) -> None:
    ipam = new()
    pool = await ipam.request_pool("local", "198.51.100.0/25")
    await ipam.request_address(pool.id, options={"owner": "ep"})
    store = ipam._stores["local"]
    before = await store.list("libnet/")
    with pytest.raises(error):
        await call(ipam, pool)
    after = [p for p in await store.list("libnet/") if not p.key.endswith("/ula48")]
    assert after == [p for p in before if not p.key.endswith("/ula48")]
    assert issubclass(error, LibnetError)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["any", "specific", "release"]), st.integers(0, 13)), max_size=60))
async def test_property_no_duplicates_and_nothing_lost(ops) -> None:
    ipam = new()
    pool = await ipam.request_pool("local", "198.51.100.0/28")  # 14 usable, .1 is the gateway
    held: set[str] = set()
    for op, i in ops:
        addr = f"198.51.100.{i + 2}/28"
        if op == "any":
            try:
                got = await ipam.request_address(pool.id)
            except PoolExhausted:
                assert len(held) == 13
                continue
            assert got not in held
            held.add(got)
        elif op == "specific" and i + 2 <= 14:
            if addr in held:
                with pytest.raises(AddressInUse):
                    await ipam.request_address(pool.id, addr)
            else:
                assert await ipam.request_address(pool.id, addr) == addr
                held.add(addr)
        elif op == "release" and held:
            victim = sorted(held)[i % len(held)]
            await ipam.release_address(pool.id, victim)
            held.discard(victim)
    assert {a.address for a in await ipam.audit(pool.id)} == held | {"198.51.100.1/28"}
    for a in list(held):
        await ipam.release_address(pool.id, a)
    # nothing lost: every usable address can be had again, exactly once
    again = [await ipam.request_address(pool.id) for _ in range(13)]
    assert len(set(again)) == 13
    with pytest.raises(PoolExhausted):
        await ipam.request_address(pool.id)


async def test_isolated_pools_may_overlap_each_other_but_not_shared_ones() -> None:
    ipam = new()
    a = await ipam.request_pool("global", "198.51.100.0/24", options={"owner": "a" * 64, "isolated": True})
    b = await ipam.request_pool("global", "198.51.100.0/24", options={"owner": "b" * 64, "isolated": True})
    assert a.id != b.id and a.subnet == b.subnet
    assert await ipam.request_address(a.id) == await ipam.request_address(b.id) == "198.51.100.2/24"
    with pytest.raises(PoolOverlap):
        await ipam.request_pool("global", "198.51.100.0/25")  # a shared pool may not overlap them
    shared = await ipam.request_pool("global", "198.51.101.0/24")
    with pytest.raises(PoolOverlap):
        await ipam.request_pool("global", "198.51.101.0/24", options={"owner": "c" * 64, "isolated": True})
    with pytest.raises(InvalidOption):
        await ipam.request_pool("global", "198.51.102.0/24", options={"isolated": True})
    await ipam.release_pool(a.id)
    assert [x.address for x in await ipam.audit(b.id)] == ["198.51.100.1/24", "198.51.100.2/24"]
    assert shared.id == "global/198.51.101.0/24"


@pytest.mark.parametrize(
    ("subnet", "says"),
    [
        ("127.0.0.0/8", "loopback"),
        ("224.0.0.0/24", "multicast"),
        ("169.254.0.0/16", "link-local"),
        ("fe80::/64", "link-local"),
        ("::ffff:198.51.100.0/120", "IPv4-mapped"),
        ("ff02::/64", "multicast"),
        ("0.0.0.0/8", "unspecified"),
        ("::/64", "unspecified"),
        ("240.0.0.0/8", "reserved"),
    ],
)
async def test_subnets_that_cannot_carry_containers_are_refused(subnet: str, says: str) -> None:
    """Issue 14, fault 3: refused with the reason, as a bad request, nothing written."""
    ipam = new()
    with pytest.raises(InvalidSubnet, match=says):
        await ipam.request_pool("local", subnet, v6=":" in subnet)
    assert await ipam.pools("local") == []


async def test_explicit_subnets_over_a_host_route_are_refused() -> None:
    """Issue 14, fault 3/4: a subnet the host already routes (its uplink, a VPN, the kept bridge
    of a network the store lost) is refused naming the route; adopt/restore may insist."""
    ipam = new(IpamConfig(host_routes=lambda: ["203.0.113.0/24", "198.51.100.64/26", "0.0.0.0/1"]))
    with pytest.raises(PoolOverlap, match=r"198\.51\.100\.64/26"):
        await ipam.request_pool("local", "198.51.100.0/24")
    with pytest.raises(PoolOverlap, match=r"203\.0\.113\.0/24"):
        await ipam.request_pool("local", "203.0.113.128/25")
    assert (await ipam.request_pool("local", "198.51.100.0/26")).subnet == "198.51.100.0/26"
    pool = await ipam.request_pool("local", "198.51.100.64/26", options={"over_host_routes": True})
    assert pool.subnet == "198.51.100.64/26"
    assert (await ipam.request_pool("global", "203.0.113.0/24")).subnet == "203.0.113.0/24"  # not local
