"""The agent's CNI routes (agent/cni_api.py) with fakes: a refused ADD changes nothing."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent.api import AgentState, make_app
from agent.metrics import Metrics
from ipam.ipam import StoreIpam
from libnet import Config, Controller
from libnet.store.memory import MemoryStore
from libnet.testing.fakes import FakeDriver, FakeNamespaces

CID = "c0" * 32
OLD, NEW = "/run/netns/c0", "/run/netns/c1"


@pytest.fixture
async def client(tmp_path):
    store, namespaces = MemoryStore(), FakeNamespaces()
    namespaces.paths.update({OLD, NEW})
    ctl = Controller(
        Config(state_dir=str(tmp_path)),
        store=store,
        ipam=StoreIpam(store),
        drivers={"bridge": FakeDriver("bridge"), "null": FakeDriver("null")},
        namespaces=namespaces,
    )
    await ctl.start()
    async with TestClient(TestServer(make_app(AgentState(ctl, "node-1", Metrics())))) as c:
        c.ctl = ctl
        yield c
    await ctl.close()


async def _store(client) -> list:
    return sorted((p.key, p.value) for p in await client.ctl.repo.store("local").list(""))


def _add(netns: str = OLD, **more) -> dict:
    return {
        "container_id": CID,
        "netns": netns,
        "ifname": "eth0",
        "network": "pods",
        "create": {"ipv4_subnet": "198.51.100.0/24"},
        **more,
    }


async def test_a_refused_add_leaves_the_containers_sandbox_as_it_was(client) -> None:
    """Fuzzer: an ADD of a container on another namespace (a restart after a missed DEL) removed the
    container's sandbox -- its endpoint, addresses, and in a real agent the live container's interface
    -- before the new namespace or the interface name was checked; the ADD was refused (400 netns,
    409 interface name) and the container had lost its network."""
    r = await client.post("/v1/cni/add", json=_add(name="pod0"))
    assert r.status == 200, await r.text()
    before = await _store(client)
    for body, status in (
        (_add(""), 400),
        (_add("netns/c1"), 400),
        (_add("/run/netns/gone"), 400),
        (_add("/proc/self/ns/net"), 400),
        (_add(NEW, ifname="eth1"), 409),
        (_add(NEW, dns=["not an address"]), 400),
        (_add(NEW, dns_search=["a b"]), 400),
    ):
        r = await client.post("/v1/cni/add", json=body)
        assert r.status == status, (body, await r.text())
        assert await _store(client) == before, body
    r = await client.post("/v1/cni/ipam/add", json={**_add(""), "network": "pool", "fallback_name": "x"})
    assert r.status == 400 and await _store(client) == before
    # a good one still replaces the sandbox a missed DEL left
    r = await client.post("/v1/cni/add", json=_add(NEW, name="pod0"))
    assert r.status == 200, await r.text()
    assert (await client.ctl.sandbox(CID)).netns == NEW
    assert [e.name for e in await client.ctl.endpoints()] == ["pod0"]


async def test_a_refused_add_makes_no_network(client) -> None:
    """Fuzzer: an ADD with ``create`` for a network that did not exist made the network (its pool, in a
    real agent its bridge) before the container id, namespace or interface name was checked."""
    for body in (
        {**_add(), "container_id": ""},
        {**_add(), "container_id": "../x"},
        _add("relative"),
        _add("/run/netns/gone"),
        _add(ifname="eth1"),
        _add(dns_options=["bogus"]),
    ):
        r = await client.post("/v1/cni/add", json=body)
        assert 400 <= r.status < 500, (body, await r.text())
        assert await client.ctl.networks() == [], body
        if body.get("ifname") == "eth1" or "dns_options" in body:
            continue  # libnet-ipam takes the runtime's interface name, and no DNS settings
        r = await client.post("/v1/cni/ipam/add", json={**body, "network": "pool", "fallback_name": "x"})
        assert 400 <= r.status < 500, (body, await r.text())
        assert await client.ctl.networks() == [], body


async def test_cni_dels_leave_what_cni_did_not_make(client) -> None:
    """Fuzzer: ``POST /v1/cni/del`` (and ``/v1/cni/ipam/del``) with the id of a sandbox made through the
    API removed that sandbox and its endpoints (a proxy's backend with them), and ipam/del's
    ``legacy_name`` removed any unjoined endpoint of that name on any network.  Now a CNI DEL of a
    sandbox on a namespace libnet made is a 409, ipam/del on a network that is not a pool or with a
    name libnet-ipam never made a 400, and nothing goes."""
    from libnet.cni.ipam import endpoint_name

    ctl = client.ctl
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/25", ipv6=False)
    await ctl.create_sandbox("web")
    await ctl.connect("front", "web", name="web")
    await ctl.create_endpoint("front", "spare")
    pool_add = {**_add(), "network": "pool", "fallback_name": "x", "create": {"ipv4_subnet": "198.51.100.128/25"}}
    r = await client.post("/v1/cni/ipam/add", json=pool_add)
    assert r.status == 200, await r.text()
    pool = (await r.json())["network"]["id"]
    legacy = await ctl.create_endpoint(pool, endpoint_name(CID, "net1"))  # what an older libnet-ipam made
    before = await _store(client)
    for path, body, status in (
        ("/v1/cni/del", {"container_id": "web", "network": "front", "ifname": "eth0"}, 409),
        ("/v1/cni/ipam/del", {"container_id": "web", "network": "front"}, 400),
        ("/v1/cni/ipam/del", {"container_id": "x", "network": "front", "legacy_name": "spare"}, 400),
        ("/v1/cni/ipam/del", {"container_id": "x", "network": "pool", "legacy_name": "spare"}, 400),
        ("/v1/cni/ipam/del", {"container_id": "web", "network": "pool"}, 409),
    ):
        r = await client.post(path, json=body)
        assert r.status == status, (body, await r.text())
        assert await _store(client) == before, body
    # what CNI made still goes
    r = await client.post("/v1/cni/ipam/del", json={"container_id": CID, "network": "pool", "legacy_name": legacy.name})
    assert r.status == 204, await r.text()
    assert sorted(e.name for e in await ctl.endpoints()) == ["spare", "web"]
    assert [s.id for s in await ctl.sandboxes()] == ["web"]
