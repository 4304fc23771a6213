"""Subnets, gateways, ranges and aux addresses (issue 14, Deliver 3 and 4):
one validation module, every refusal says why and changes nothing; the host's
own addresses; the route-overlap override; --ip-range and --aux-address end
to end through the controller, the API and the CLI (fakes, no root)."""

from __future__ import annotations

import ipaddress
import json

import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

from agent import cli as cli_mod
from agent.api import AgentState, make_app
from agent.metrics import Metrics
from ipam.ipam import StoreIpam
from ipam.pools import HostAddress, IpamConfig
from libnet import Config, Controller
from libnet.errors import AddressInUse, InvalidOption, InvalidSubnet, PoolExhausted, PoolOverlap
from libnet.model import Network, decode, encode
from libnet.store.memory import MemoryStore
from libnet.testing.fakes import FakeDriver, FakeNamespaces
from libnet.validation import check_addressing, parse_aux_args

UPLINK = [HostAddress("203.0.113.7", "eth0"), HostAddress("2001:db8:ffff::7", "eth0")]
ROUTES = ["203.0.113.0/24", "2001:db8:ffff::/64", "198.51.100.0/25", "0.0.0.0/1", "128.0.0.0/1"]


def _controller(tmp_path, store, addrs=UPLINK, routes=ROUTES, like: Controller | None = None) -> Controller:
    """A controller with fakes; ``like``: the same host after a restart (same fake kernel)."""
    cfg = IpamConfig(host_routes=lambda: list(routes), host_addresses=lambda: list(addrs))
    return Controller(
        Config(state_dir=str(tmp_path), resolv_conf=str(tmp_path / "resolv.conf")),
        store=store,
        ipam=StoreIpam(store, config=cfg),
        drivers=like._drivers if like else {"bridge": FakeDriver("bridge")},
        namespaces=like._namespaces if like else FakeNamespaces(),
    )


@pytest.fixture
async def ctl(tmp_path):
    c = _controller(tmp_path, MemoryStore())
    await c.start()
    yield c
    await c.close()


async def _snapshot(c: Controller) -> list:
    return [(p.key, p.value) for p in await c._store.list("libnet/")]


REFUSALS = [
    # (create_network kwargs, error class, message fragment)
    ({"ipv4_subnet": "127.0.0.0/8"}, InvalidSubnet, "127.0.0.0/8 cannot carry containers: it is loopback"),
    ({"ipv4_subnet": "224.0.0.0/24"}, InvalidSubnet, "it is multicast"),
    ({"ipv4_subnet": "169.254.0.0/16"}, InvalidSubnet, "it is link-local"),
    ({"ipv4_subnet": "0.0.0.0/8"}, InvalidSubnet, "unspecified"),
    ({"ipv4_subnet": "240.0.0.0/8"}, InvalidSubnet, "reserved"),
    ({"ipv6_subnet": "fe80::/64"}, InvalidSubnet, "link-local"),
    ({"ipv6_subnet": "ff02::/64"}, InvalidSubnet, "multicast"),
    ({"ipv6_subnet": "::ffff:198.51.100.0/120"}, InvalidSubnet, "IPv4-mapped"),
    ({"ipv4_subnet": "198.51.100.1/24"}, InvalidSubnet, "host bits set"),
    ({"ipv4_subnet": "2001:db8:1::/64"}, InvalidSubnet, "not IPv4"),
    # gateways
    ({"ipv4_subnet": "198.51.100.128/25", "ipv4_gateway": "198.51.100.128"}, InvalidSubnet, "network address"),
    ({"ipv4_subnet": "198.51.100.128/25", "ipv4_gateway": "198.51.100.255"}, InvalidSubnet, "broadcast address"),
    ({"ipv4_subnet": "198.51.100.128/25", "ipv4_gateway": "198.51.100.1"}, InvalidSubnet, "outside subnet"),
    ({"ipv4_subnet": "198.51.100.128/25", "ipv4_gateway": "2001:db8::1"}, InvalidSubnet, "is IPv6 but subnet"),
    ({"ipv4_subnet": "198.51.100.128/25", "ipv4_gateway": "gw"}, InvalidSubnet, "not an IP address"),
    ({"ipv6_subnet": "2001:db8:1::/64", "ipv6_gateway": "2001:db8:1::"}, InvalidSubnet, "subnet-router anycast"),
    ({"ipv4_gateway": "198.51.100.129"}, InvalidOption, "a gateway needs its subnet"),
    ({"ipv6": False, "ipv6_subnet": "2001:db8:1::/64"}, InvalidOption, "ipv6 turned off"),
    # ranges
    ({"ipv4_subnet": "198.51.100.128/25", "ipv4_range": "198.51.100.0/26"}, InvalidSubnet, "outside subnet"),
    ({"ipv4_subnet": "198.51.100.128/25", "ipv4_range": "2001:db8::/64"}, InvalidSubnet, "is IPv6 but subnet"),
    ({"ipv4_subnet": "198.51.100.128/25", "ipv4_range": "198.51.100.129/26"}, InvalidSubnet, "host bits"),
    ({"ipv4_subnet": "198.51.100.128/25", "ipv4_range": "198.51.100.130/32"}, InvalidSubnet, "too small"),
    ({"ipv4_range": "198.51.100.128/26"}, InvalidOption, "an ip range needs its subnet"),
    # aux addresses
    ({"ipv4_subnet": "198.51.100.128/25", "aux_addresses": {"r": "198.51.100.1"}}, InvalidSubnet, "outside subnet"),
    ({"ipv4_subnet": "198.51.100.128/25", "aux_addresses": {"r": "198.51.100.129"}}, InvalidSubnet, "is the gateway"),
    (
        {
            "ipv4_subnet": "198.51.100.128/25",
            "ipv4_gateway": "198.51.100.254",
            "aux_addresses": {"r": "198.51.100.254"},
        },
        InvalidSubnet,
        "is the gateway",
    ),
    (
        {"ipv4_subnet": "198.51.100.128/25", "aux_addresses": {"a": "198.51.100.140", "b": "198.51.100.140"}},
        InvalidSubnet,
        "are both 198.51.100.140",
    ),
    ({"ipv4_subnet": "198.51.100.128/25", "aux_addresses": {"r": "198.51.100.255"}}, InvalidSubnet, "broadcast"),
    ({"ipv4_subnet": "198.51.100.128/25", "aux_addresses": {"r": "2001:db8::5"}}, InvalidSubnet, "no explicit IPv6"),
    ({"aux_addresses": {"r": "198.51.100.140"}}, InvalidOption, "need an explicit subnet"),
    ({"ipv4_subnet": "198.51.100.128/25", "aux_addresses": {"r": "nope"}}, InvalidSubnet, "not an IP address"),
    ({"ipv4_subnet": "198.51.100.128/25", "aux_addresses": {"a=b": "198.51.100.140"}}, InvalidSubnet, "name"),
    # the host's own address: refused naming it and its interface, override or not
    ({"ipv4_subnet": "203.0.113.0/24"}, PoolOverlap, r"contains 203\.0\.113\.7, an address of this host \(eth0\)"),
    (
        {"ipv4_subnet": "203.0.113.0/28", "allow_route_overlap": True},
        PoolOverlap,
        r"contains 203\.0\.113\.7, an address of this host \(eth0\)",
    ),
    ({"ipv6_subnet": "2001:db8:ffff::/64"}, PoolOverlap, r"contains 2001:db8:ffff::7, an address of this host"),
    # a host route: refused naming the route and the override
    ({"ipv4_subnet": "198.51.100.0/24"}, PoolOverlap, r"route to 198\.51\.100\.0/25.*allow_route_overlap"),
    ({"ipv4_subnet": "203.0.113.128/25"}, PoolOverlap, r"route to 203\.0\.113\.0/24.*--allow-route-overlap"),
    ({"ipv4_subnet": "198.51.101.0/24", "allow_route_overlap": "yes"}, InvalidOption, "true or false"),
]


@pytest.mark.parametrize(("kwargs", "error", "says"), REFUSALS)
async def test_refusals_say_why_and_change_nothing(ctl: Controller, kwargs, error, says) -> None:
    before = await _snapshot(ctl)
    with pytest.raises(error, match=says):
        await ctl.create_network("n", **kwargs)
    assert await _snapshot(ctl) == before
    assert await ctl.networks() == []


async def test_route_overlap_override(ctl: Controller) -> None:
    """Over a route (no host address in it) the override works; the VPN halves never count as a route."""
    nw = await ctl.create_network("over", ipv4_subnet="198.51.100.0/26", allow_route_overlap=True)
    assert nw.ipv4_subnet == "198.51.100.0/26"
    assert (await ctl.create_network("free", ipv4_subnet="198.51.101.0/24")).ipv4_subnet == "198.51.101.0/24"
    # pools still never overlap each other, override or not
    with pytest.raises(PoolOverlap, match=r"198\.51\.100\.0/25 overlaps network over.s subnet 198\.51\.100\.0/26"):
        await ctl.create_network("dup", ipv4_subnet="198.51.100.0/25", allow_route_overlap=True)


async def test_default_pools_skip_host_addresses(tmp_path) -> None:
    """A /32 host address without a covering route still keeps a default pool away."""
    c = _controller(tmp_path, MemoryStore(), addrs=[HostAddress("172.17.0.9", "dummy0")], routes=[])
    await c.start()
    nw = await c.create_network("d", ipv6=False)
    assert nw.ipv4_subnet == "172.18.0.0/16"


async def test_libnet_bridge_addresses(tmp_path) -> None:
    """A network's own bridge address never blocks its own pool (restore/adopt); another
    network's bridge (a kept bridge of a network the store lost) blocks reuse, override or not."""
    store = MemoryStore()
    addrs = [HostAddress("198.51.102.1", "lnb-lost", owner="f" * 64)]
    c = _controller(tmp_path, store, addrs=addrs, routes=[])
    await c.start()
    with pytest.raises(PoolOverlap, match=r"198\.51\.102\.1, an address of this host \(lnb-lost\)"):
        await c.create_network("reuse", ipv4_subnet="198.51.102.0/24", allow_route_overlap=True)
    pool = await c.ipam.request_pool("local", "198.51.102.0/24", options={"owner": "f" * 64})
    assert pool.subnet == "198.51.102.0/24"


def test_check_addressing_is_the_one_place() -> None:
    v4, v6 = check_addressing(
        ipv6=True,
        ipv4_subnet="198.51.100.0/24",
        ipv4_gateway="198.51.100.254/24",
        ipv4_range="198.51.100.128/25",
        ipv6_subnet="2001:db8:1::/64",
        aux_addresses={"router": "198.51.100.10", "dns6": "2001:db8:1::53"},
    )
    assert (v4.subnet, v4.gateway, v4.ip_range, v4.aux) == (
        "198.51.100.0/24",
        "198.51.100.254",
        "198.51.100.128/25",
        {"router": "198.51.100.10"},
    )
    assert v6.aux == {"dns6": "2001:db8:1::53"} and v6.ip_range is None
    assert parse_aux_args(["a=198.51.100.1", "b=2001:db8::1"]) == {"a": "198.51.100.1", "b": "2001:db8::1"}
    for bad, says in ((["a"], "NAME=IP"), (["=1.2.3.4"], "NAME=IP"), (["a=1", "a=2"], "given twice")):
        with pytest.raises(InvalidOption, match=says):
            parse_aux_args(bad)


async def test_ip_range_and_aux_addresses_end_to_end(ctl: Controller) -> None:
    nw = await ctl.create_network(
        "r",
        ipv4_subnet="198.51.101.0/24",
        ipv4_range="198.51.101.128/29",
        ipv6_subnet="2001:db8:2::/64",
        ipv6_range="2001:db8:2::100/125",
        aux_addresses={"router": "198.51.101.130", "far": "198.51.101.10", "dns6": "2001:db8:2::102"},
    )
    assert (nw.ipv4_range, nw.ipv6_range) == ("198.51.101.128/29", "2001:db8:2::100/125")
    assert nw.aux_addresses == {"router": "198.51.101.130", "far": "198.51.101.10", "dns6": "2001:db8:2::102"}
    stored = await ctl.network("r")
    assert (stored.ipv4_range, stored.aux_addresses) == (nw.ipv4_range, nw.aux_addresses)
    # an explicit address outside the range but inside the subnet is allowed (as Docker does)
    explicit = await ctl.create_endpoint("r", "explicit", ipv4="198.51.101.20")
    assert explicit.ipv4 == "198.51.101.20/24"
    with pytest.raises(AddressInUse):
        await ctl.create_endpoint("r", "aux", ipv4="198.51.101.10")  # an aux address is reserved
    got4, got6 = [], []
    for i in range(4):  # range .129-.134 without .130 (aux): 5 addresses
        ep = await ctl.create_endpoint("r", f"e{i}")
        got4.append(ep.ipv4.split("/")[0])
        got6.append(ep.ipv6.split("/")[0])
    assert got4 == ["198.51.101.129", "198.51.101.131", "198.51.101.132", "198.51.101.133"]
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network("2001:db8:2::100/125") for a in got6)
    assert "2001:db8:2::102" not in got6
    await ctl.create_endpoint("r", "e4", ipv6=None)
    with pytest.raises(PoolExhausted):
        await ctl.create_endpoint("r", "e5")


async def test_old_records_without_the_fields_still_load() -> None:
    data = {"id": "a" * 64, "name": "old", "driver": "bridge", "scope": "local", "ipv4_subnet": "198.51.100.0/24"}
    nw = Network.from_data(decode(encode("network", data), "network"))
    assert (nw.ipv4_range, nw.ipv6_range, nw.aux_addresses) == (None, None, {})


async def test_lost_pool_is_restored_with_its_range_and_aux(tmp_path) -> None:
    store = MemoryStore()
    c = _controller(tmp_path, store, addrs=[], routes=[])
    await c.start()
    await c.create_network(
        "r", ipv4_subnet="198.51.101.0/24", ipv4_range="198.51.101.128/26", aux_addresses={"x": "198.51.101.129"}
    )
    for pair in await store.list("libnet/v1/ipam/local/"):
        if not pair.key.endswith("ula48"):
            await store.delete(pair.key)
    again = _controller(tmp_path, store, addrs=[], routes=[], like=c)
    await again.start()
    report = await again.reconcile()
    assert any("restored" in r for r in report.repaired), report
    assert not report.missing, report
    ep = await again.create_endpoint("r", "e")
    assert ep.ipv4 == "198.51.101.130/24"  # from the range, past the aux address
    assert not (await again.reconcile()).repaired


@pytest.fixture
async def client(tmp_path):
    c = _controller(tmp_path, MemoryStore())
    await c.start()
    async with TestClient(TestServer(make_app(AgentState(c, "node-1", Metrics())))) as tc:
        tc.ctl = c
        yield tc


async def test_api_fields_and_refusals(client) -> None:
    r = await client.post(
        "/v1/networks",
        json={
            "name": "a",
            "ipv4_subnet": "198.51.101.0/24",
            "ipv4_range": "198.51.101.128/25",
            "aux_addresses": {"router": "198.51.101.10"},
            "ipv6": False,
        },
    )
    assert r.status == 201, await r.text()
    body = await r.json()
    assert body["ipv4_range"] == "198.51.101.128/25" and body["aux_addresses"] == {"router": "198.51.101.10"}
    detail = await (await client.get("/v1/networks/a")).json()
    assert detail["ipv4_range"] == "198.51.101.128/25"
    for req, status, kind, says in (
        ({"name": "b", "ipv4_subnet": "127.0.0.0/8"}, 400, "InvalidSubnet", "loopback"),
        ({"name": "b", "ipv6_subnet": "ff02::/64"}, 400, "InvalidSubnet", "multicast"),
        ({"name": "b", "ipv4_subnet": "203.0.113.0/24"}, 409, "PoolOverlap", "203.0.113.7"),
        ({"name": "b", "ipv4_subnet": "198.51.100.0/24"}, 409, "PoolOverlap", "allow_route_overlap"),
        ({"name": "b", "ipv4_subnet": "198.51.102.0/24", "aux_addresses": []}, 400, "BadRequest", "aux_addresses"),
        ({"name": "b", "ipv4_subnet": "198.51.102.0/24", "allow_route_overlap": 1}, 400, "BadRequest", "true or"),
    ):
        before = await _snapshot(client.ctl)
        r = await client.post("/v1/networks", json=req)
        err = (await r.json())["error"]
        assert (r.status, err["type"]) == (status, kind), err
        assert says in err["message"]
        assert await _snapshot(client.ctl) == before
    r = await client.post(
        "/v1/networks", json={"name": "c", "ipv4_subnet": "198.51.100.0/26", "allow_route_overlap": True}
    )
    assert r.status == 201, await r.text()


def test_cli_flags(monkeypatch) -> None:
    sent = []

    class Fake:
        def __init__(self, path, timeout=60) -> None:
            pass

        def request(self, method, url, body=None):
            sent.append((method, url, body))
            return {"id": "x" * 64}

    monkeypatch.setattr(cli_mod, "Client", Fake)
    args = ["network", "create", "n", "--subnet", "198.51.100.0/24", "--ip-range", "198.51.100.128/25"]
    args += ["--subnet6", "2001:db8:1::/64", "--ip-range6", "2001:db8:1::/80"]
    args += ["--aux-address", "router=198.51.100.10", "--aux-address", "dns6=2001:db8:1::53", "--allow-route-overlap"]
    result = CliRunner().invoke(cli_mod.cli, args)
    assert result.exit_code == 0, result.output
    body = sent[0][2]
    assert body["ipv4_range"] == "198.51.100.128/25" and body["ipv6_range"] == "2001:db8:1::/80"
    assert body["aux_addresses"] == {"router": "198.51.100.10", "dns6": "2001:db8:1::53"}
    assert body["allow_route_overlap"] is True
    sent.clear()
    result = CliRunner().invoke(cli_mod.cli, ["network", "create", "n", "--subnet", "198.51.100.0/24"])
    assert "allow_route_overlap" not in sent[0][2] and "aux_addresses" not in sent[0][2]
    result = CliRunner().invoke(cli_mod.cli, ["network", "create", "n", "--aux-address", "router"])
    assert result.exit_code == 2 and "NAME=IP" in result.output
    assert json.dumps(body)  # the body is plain JSON
