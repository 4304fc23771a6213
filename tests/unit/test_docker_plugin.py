"""The Docker network and IPAM plugin endpoints with fakes: every call, the request
shapes dockerd 20.10 sends (shared/reference/runtimes.md), and the error paths."""

from __future__ import annotations

import json
import os
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent.docker_plugin import CONTENT_TYPE, PREFIX, kernel_handover, make_plugin_app, src_name
from ipam.ipam import StoreIpam
from libnet import Config, Controller
from libnet.store.memory import MemoryStore
from libnet.testing.fakes import FakeDriver, FakeNamespaces

ACCEPT = {"Accept": "application/vnd.docker.plugins.v1.2+json"}  # and no Content-Type, as dockerd
NID = "a" * 64
NID2 = "b" * 64
EID = "c" * 64
EID2 = "d" * 64
SBKEY = "/var/run/docker/netns/0123456789ab"


def _ctl(tmp_path, store, cluster, node="node-1"):
    return Controller(
        Config(state_dir=str(tmp_path / node), node_name=node),
        store=store,
        cluster_store=cluster,
        ipam=StoreIpam(store, cluster),
        drivers={"bridge": FakeDriver("bridge"), "overlay": FakeDriver("overlay", scope="global")},
        namespaces=FakeNamespaces(),
    )


async def _client(ctl, moved):
    async def handover(netns: str, ifname: str, new_name: str) -> None:
        moved.append((netns, ifname, new_name))

    await ctl.start()
    c = TestClient(TestServer(make_plugin_app(ctl, handover)))
    await c.start_server()
    c.ctl, c.moved = ctl, moved
    return c


@pytest.fixture
async def client(tmp_path):
    store = MemoryStore()
    c = await _client(_ctl(tmp_path, store, MemoryStore()), [])
    yield c
    await c.close()
    await c.ctl.close()


async def call(client, path: str, body=None, status: int = 200):
    data = b"" if body is None else json.dumps(body).encode()
    r = await client.post(path, data=data, headers=ACCEPT)
    assert r.headers["Content-Type"].startswith(CONTENT_TYPE)
    doc = json.loads(await r.text())
    assert r.status == status, doc
    return doc


def create_net(nid=NID, generic=None, v6=True, internal=False, aux=None):
    body = {
        "NetworkID": nid,
        "Options": {
            "com.docker.network.enable_ipv6": v6,
            "com.docker.network.generic": generic or {},
        },
        "IPv4Data": [
            {
                "AddressSpace": "LocalDefault",
                "Pool": "198.51.100.0/24",
                "Gateway": "198.51.100.1/24",
                "AuxAddresses": aux or {},
            }
        ],
        "IPv6Data": [{"AddressSpace": "LocalDefault", "Pool": "2001:db8:5::/64", "Gateway": "2001:db8:5::1/64"}]
        if v6
        else [],
    }
    if internal:
        body["Options"]["com.docker.network.internal"] = True
    return body


def create_ep(eid=EID, nid=NID, v4="198.51.100.7/24", v6="2001:db8:5::7/64", portmap=None):
    opts = {"com.docker.network.endpoint.exposedports": []}
    if portmap is not None:
        opts["com.docker.network.portmap"] = portmap
    return {
        "NetworkID": nid,
        "EndpointID": eid,
        "Interface": {"Address": v4, "AddressIPv6": v6, "MacAddress": ""},
        "Options": opts,
    }


async def test_activate_and_capabilities(client) -> None:
    assert await call(client, "/Plugin.Activate") == {"Implements": ["NetworkDriver", "IpamDriver"]}
    caps = await call(client, "/NetworkDriver.GetCapabilities", {})
    assert caps == {"Scope": "local", "ConnectivityScope": "local"}
    assert await call(client, "/IpamDriver.GetCapabilities", {}) == {
        "RequiresMACAddress": False,
        "RequiresRequestReplay": False,
    }
    spaces = await call(client, "/IpamDriver.GetDefaultAddressSpaces", {})
    assert spaces == {"LocalDefaultAddressSpace": "local", "GlobalDefaultAddressSpace": "global"}


async def test_run_sequence_dual_stack(client) -> None:
    """docker network create; docker run (CreateEndpoint, Join, Program..., OperInfo x2); stop; rm; network rm."""
    assert await call(client, "/NetworkDriver.CreateNetwork", create_net(generic={"mtu": "1400"})) == {}
    nw = (await client.ctl.networks())[0]
    assert nw.name == f"docker-{NID[:12]}" and nw.driver == "bridge"
    assert nw.ipv4_subnet == "198.51.100.0/24" and nw.ipv6_subnet == "2001:db8:5::/64"
    assert nw.options["mtu"] == 1400 and nw.labels == {"docker.network": NID}

    proxy_mac = create_ep()
    proxy_mac["Interface"]["MacAddress"] = "06:42:c6:33:64:07"  # a proxy leg's range (the host notracks it)
    err = await call(client, "/NetworkDriver.CreateEndpoint", proxy_mac, status=500)
    assert "libnet proxies'" in err["Err"] and await client.ctl.endpoints() == []
    ans = await call(client, "/NetworkDriver.CreateEndpoint", create_ep())
    ep = (await client.ctl.endpoints())[0]
    assert ep.ipv4 == "198.51.100.7/24" and ep.ipv6 == "2001:db8:5::7/64"
    assert ans == {"Interface": {"MacAddress": ep.mac}}

    join = await call(
        client, "/NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID, "SandboxKey": SBKEY, "Options": {}}
    )
    assert join["InterfaceName"] == {"SrcName": src_name(EID), "DstPrefix": "eth"}
    assert join["Gateway"] == "198.51.100.1" and join["GatewayIPv6"] == "2001:db8:5::1"
    assert "DisableGatewayService" not in join
    staged = await client.ctl.sandbox(EID)  # the staging sandbox, its interface handed over
    assert client.moved == [(staged.netns, "eth0", src_name(EID))]
    # no resolv.conf/hosts for it: the container reads Docker's
    assert not os.path.lexists(os.path.join(client.ctl.config.state_dir, "sandboxes", EID))
    assert (await client.ctl.endpoint(ep.id)).sandbox_id == EID

    opts = {"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": []}
    pec = {"NetworkID": NID, "EndpointID": EID, "Options": opts}
    assert await call(client, "/NetworkDriver.ProgramExternalConnectivity", pec) == {}
    info = await call(client, "/NetworkDriver.EndpointOperInfo", {"NetworkID": NID, "EndpointID": EID})
    assert info["Value"]["libnet.endpoint"] == ep.id

    ids = {"NetworkID": NID, "EndpointID": EID}
    assert await call(client, "/NetworkDriver.RevokeExternalConnectivity", ids) == {}
    assert await call(client, "/NetworkDriver.Leave", ids) == {}
    assert await client.ctl.sandboxes() == []
    assert await call(client, "/NetworkDriver.DeleteEndpoint", ids) == {}
    assert await client.ctl.endpoints() == []
    assert await call(client, "/NetworkDriver.DeleteNetwork", {"NetworkID": NID}) == {}
    assert await client.ctl.networks() == []
    assert await client.ctl.repo.store("local").list(PREFIX) == []
    # idempotent deletes
    assert await call(client, "/NetworkDriver.DeleteEndpoint", ids) == {}
    assert await call(client, "/NetworkDriver.DeleteNetwork", {"NetworkID": NID}) == {}
    assert await call(client, "/NetworkDriver.Leave", ids) == {}


async def test_a_given_mac_is_the_endpoints(client) -> None:
    """``docker run --mac-address``: the libnet endpoint (its veth, the join's announcements) has Docker's MAC,
    not the one of its IPv4 address, which Docker would replace (the network's others told the wrong one)."""
    await call(client, "/NetworkDriver.CreateNetwork", create_net())
    given = create_ep()
    given["Interface"]["MacAddress"] = "02:11:00:00:00:02"
    assert await call(client, "/NetworkDriver.CreateEndpoint", given) == {"Interface": {}}
    (ep,) = await client.ctl.endpoints()
    assert ep.mac == "02:11:00:00:00:02"
    info = await call(client, "/NetworkDriver.EndpointOperInfo", {"NetworkID": NID, "EndpointID": EID})
    assert info["Value"]["mac"] == "02:11:00:00:00:02"
    multicast = create_ep(eid=EID2, v4="198.51.100.8/24", v6="2001:db8:5::8/64")
    multicast["Interface"]["MacAddress"] = "03:11:00:00:00:02"
    err = await call(client, "/NetworkDriver.CreateEndpoint", multicast, status=500)
    assert "not a unicast MAC address" in err["Err"] and len(await client.ctl.endpoints()) == 1


async def test_addresses_left_to_libnet_ipv4_only_and_ports(client) -> None:
    await call(client, "/NetworkDriver.CreateNetwork", create_net(v6=False))
    nw = (await client.ctl.networks())[0]
    assert nw.ipv6_subnet is None
    portmap = [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}]
    ans = await call(client, "/NetworkDriver.CreateEndpoint", create_ep(v4="", v6="", portmap=portmap))
    ep = (await client.ctl.endpoints())[0]
    assert ans["Interface"]["Address"] == ep.ipv4 and "AddressIPv6" not in ans["Interface"]
    assert ep.ports == []  # checked, not published: that is ProgramExternalConnectivity's
    join = await call(client, "/NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID, "SandboxKey": SBKEY})
    assert "GatewayIPv6" not in join and join["Gateway"] == "198.51.100.1"
    prog = {"NetworkID": NID, "EndpointID": EID, "Options": {"com.docker.network.portmap": portmap}}
    assert await call(client, "/NetworkDriver.ProgramExternalConnectivity", prog) == {}
    (ep,) = await client.ctl.endpoints()
    assert ep.ports == [{"host_port": 8080, "container_port": 80, "protocol": "tcp", "host_ip": None}]


async def test_ports_are_published_once_by_the_gateway_endpoint(client) -> None:
    """A container publishing -p 8080:80 is connected to a second libnet network (breaker: the second
    CreateEndpoint published the ports again and was refused); the way out moves to the second network and
    back; a replay changes nothing; the ports are free once the container stops."""
    portmap = [
        {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
        {"Proto": 17, "IP": "", "Port": 53, "HostIP": "", "HostPort": 0, "HostPortEnd": 0},
    ]
    opts = {"com.docker.network.portmap": portmap}
    one = create_net(v6=False)
    one["IPv4Data"][0].update(Pool="198.51.100.0/25", Gateway="198.51.100.1/25")
    await call(client, "/NetworkDriver.CreateNetwork", one)
    two = create_net(nid=NID2, v6=False)
    two["IPv4Data"][0].update(Pool="198.51.100.128/25", Gateway="198.51.100.129/25")
    await call(client, "/NetworkDriver.CreateNetwork", two)
    one_ids = {"NetworkID": NID, "EndpointID": EID}
    two_ids = {"NetworkID": NID2, "EndpointID": EID2}
    await call(client, "/NetworkDriver.CreateEndpoint", create_ep(v4="", v6="", portmap=portmap))
    await call(client, "/NetworkDriver.Join", {**one_ids, "SandboxKey": SBKEY})
    await call(client, "/NetworkDriver.ProgramExternalConnectivity", {**one_ids, "Options": opts})
    await call(client, "/NetworkDriver.CreateEndpoint", create_ep(eid=EID2, nid=NID2, v4="", v6="", portmap=portmap))
    await call(client, "/NetworkDriver.Join", {**two_ids, "SandboxKey": SBKEY})

    async def ports() -> dict[str, list[tuple[int, int, str]]]:
        return {
            e.network_id: [(p["host_port"], p["container_port"], p["protocol"]) for p in e.ports]
            for e in await client.ctl.endpoints()
        }

    first = await ports()
    nets = {n.labels["docker.network"]: n.id for n in await client.ctl.networks()}
    (auto,) = [h for h, c, _ in first[nets[NID]] if c == 53]
    assert first == {nets[NID]: [(8080, 80, "tcp"), (auto, 53, "udp")], nets[NID2]: []}
    # a replay keeps the picked port
    await call(client, "/NetworkDriver.ProgramExternalConnectivity", {**one_ids, "Options": opts})
    assert await ports() == first
    # the way out moves: Revoke on the old gateway endpoint, then Program on the new one
    await call(client, "/NetworkDriver.RevokeExternalConnectivity", one_ids)
    await call(client, "/NetworkDriver.ProgramExternalConnectivity", {**two_ids, "Options": opts})
    moved = await ports()
    assert moved[nets[NID]] == [] and next((h, c) for h, c, _ in moved[nets[NID2]]) == (8080, 80)
    # another endpoint cannot take 8080 while the container holds it, and the message names the holder
    sb = await client.ctl.create_sandbox()
    with pytest.raises(Exception, match=rf"8080/tcp is already published by endpoint d-{EID2[:12]} on network"):
        await client.ctl.connect(
            nets and (await client.ctl.networks())[0].id, sb.id, ports=[{"host_port": 8080, "container_port": 1}]
        )
    # stop: Revoke, Leave, DeleteEndpoint on both
    await call(client, "/NetworkDriver.RevokeExternalConnectivity", two_ids)
    for ids in (one_ids, two_ids):
        await call(client, "/NetworkDriver.Leave", ids)
        await call(client, "/NetworkDriver.DeleteEndpoint", ids)
    ep = await client.ctl.connect(nets[NID], sb.id, ports=[{"host_port": 8080, "container_port": 1}])
    assert ep.ports[0]["host_port"] == 8080


async def test_an_empty_retried_body_says_what_happened(client) -> None:
    """dockerd re-sends a call that timed out with an empty body (a frozen agent); the answer says so instead
    of 'NetworkID must be Docker's id'."""
    for call_ in ("CreateNetwork", "CreateEndpoint", "Join", "DeleteNetwork"):
        err = await call(client, f"/NetworkDriver.{call_}", None, status=500)
        assert "empty body" in err["Err"] and "retries a call after a timeout" in err["Err"], err
    err = await call(client, "/IpamDriver.RequestPool", None, status=500)
    assert "empty body" in err["Error"]
    assert (await call(client, "/NetworkDriver.GetCapabilities", None))["Scope"] == "local"


async def test_internal_network_gets_no_gateway(client) -> None:
    await call(client, "/NetworkDriver.CreateNetwork", create_net(internal=True, aux={"printer": "198.51.100.5/24"}))
    nw = (await client.ctl.networks())[0]
    assert nw.internal and nw.aux_addresses == {"printer": "198.51.100.5"}
    await call(client, "/NetworkDriver.CreateEndpoint", create_ep())
    join = await call(client, "/NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID, "SandboxKey": SBKEY})
    assert "Gateway" not in join and "GatewayIPv6" not in join and join["DisableGatewayService"] is True


async def test_overlay_by_name_attaches_on_the_second_host(tmp_path) -> None:
    cluster = MemoryStore()
    c1 = await _client(_ctl(tmp_path, MemoryStore(), cluster, "node-1"), [])
    c2 = await _client(_ctl(tmp_path, MemoryStore(), cluster, "node-2"), [])
    try:
        gen = {"libnet.driver": "overlay", "libnet.name": "ov"}
        await call(c1, "/NetworkDriver.CreateNetwork", create_net(generic=gen))
        await call(c2, "/NetworkDriver.CreateNetwork", create_net(nid=NID2, generic=gen))
        (n1,) = await c1.ctl.networks()
        (n2,) = await c2.ctl.networks()
        assert n1.id == n2.id and n1.driver == "overlay" and n1.name == "ov"
        join = {"NetworkID": NID, "EndpointID": EID, "SandboxKey": SBKEY}
        await call(c1, "/NetworkDriver.CreateEndpoint", create_ep())
        ans = await call(c1, "/NetworkDriver.Join", join)
        assert "Gateway" not in ans and "DisableGatewayService" not in ans  # docker_gwbridge gives the way out
        # another subnet for the same name is refused with the reason
        bad = create_net(nid="e" * 64, generic=gen)
        bad["IPv4Data"][0]["Pool"] = "198.51.100.128/25"
        err = await call(c2, "/NetworkDriver.CreateNetwork", bad, status=500)
        assert "same --subnet" in err["Err"]
        # host 2 lets go while host 1 still has a container on it: the overlay stays
        assert await call(c2, "/NetworkDriver.DeleteNetwork", {"NetworkID": NID2}) == {}
        assert [n.id for n in await c1.ctl.networks()] == [n1.id]
        err = await call(c1, "/NetworkDriver.CreateEndpoint", create_ep(nid=NID2), status=500)
        assert "not a libnet network known" in err["Err"]
    finally:
        for c in (c1, c2):
            await c.close()
            await c.ctl.close()


async def test_state_survives_an_agent_restart(tmp_path) -> None:
    store, cluster = MemoryStore(), MemoryStore()
    c = await _client(_ctl(tmp_path, store, cluster), [])
    await call(c, "/NetworkDriver.CreateNetwork", create_net())
    await call(c, "/NetworkDriver.CreateEndpoint", create_ep())
    await c.close()
    await c.ctl.close()
    c = await _client(_ctl(tmp_path, store, cluster), [])  # dockerd does not replay CreateNetwork
    try:
        join = await call(c, "/NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID, "SandboxKey": SBKEY})
        assert join["Gateway"] == "198.51.100.1"
    finally:
        await c.close()
        await c.ctl.close()


async def test_errors_are_err_with_libnet_messages(client) -> None:
    err = await call(client, "/NetworkDriver.CreateEndpoint", create_ep(), status=500)
    assert "not a libnet network known to this agent" in err["Err"]
    err = await call(client, "/NetworkDriver.CreateNetwork", create_net(generic={"libnet.driver": "macvlan"}), 500)
    assert "libnet.driver" in err["Err"]
    err = await call(client, "/NetworkDriver.CreateNetwork", create_net(generic={"bogus": "1"}), status=500)
    assert "bogus" in err["Err"] and await client.ctl.networks() == []
    two = create_net()
    two["IPv4Data"].append(dict(two["IPv4Data"][0], Pool="198.51.100.128/25"))
    assert "one IPv4 subnet" in (await call(client, "/NetworkDriver.CreateNetwork", two, status=500))["Err"]
    ours = create_net()
    ours["IPv4Data"][0]["AddressSpace"] = "local"
    assert "default IPAM" in (await call(client, "/NetworkDriver.CreateNetwork", ours, status=500))["Err"]
    err = await call(client, "/NetworkDriver.CreateNetwork", {"NetworkID": "../x"}, status=500)
    assert "NetworkID" in err["Err"]
    r = await client.post("/NetworkDriver.CreateNetwork", data=b"{nope", headers=ACCEPT)
    assert r.status == 400 and "malformed JSON" in json.loads(await r.text())["Err"]

    await call(client, "/NetworkDriver.CreateNetwork", create_net())
    assert await call(client, "/NetworkDriver.CreateNetwork", create_net()) == {}  # a replay changes nothing
    await call(client, "/NetworkDriver.CreateEndpoint", create_ep())
    await client.ctl.create_endpoint((await client.ctl.networks())[0].id, "mine", ipv4="198.51.100.8")
    err = await call(client, "/NetworkDriver.CreateEndpoint", create_ep(eid=EID2, v4="198.51.100.8/24", v6=""), 500)
    assert "198.51.100.8" in err["Err"] and "already allocated" in err["Err"]  # not Docker's: never taken over
    err = await call(client, "/NetworkDriver.CreateEndpoint", create_ep(eid=EID2, v4="203.0.113.9/24"), status=500)
    assert "203.0.113.9" in err["Err"]
    err = await call(client, "/NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID2}, status=500)
    assert "not a libnet endpoint known" in err["Err"]
    err = await call(client, "/NetworkDriver.DeleteNetwork", {"NetworkID": NID}, status=500)
    assert "still has endpoints" in err["Err"]
    both = create_net(nid=NID2, generic={"mtu": "1400", "com.docker.network.driver.mtu": "1300"})
    assert "disagree" in (await call(client, "/NetworkDriver.CreateNetwork", both, status=500))["Err"]
    inner = create_net(nid=NID2, generic={"internal": "true"})  # Docker would show it as not internal
    assert "--internal" in (await call(client, "/NetworkDriver.CreateNetwork", inner, status=500))["Err"]
    bad_port = create_ep(eid=EID2, v4="", v6="", portmap=[{"Proto": 132, "Port": 80, "HostPort": 80}])
    assert "protocol" in (await call(client, "/NetworkDriver.CreateEndpoint", bad_port, status=500))["Err"]
    assert len(await client.ctl.endpoints()) == 2  # refusals left nothing behind


async def test_fields_of_the_wrong_type_are_refused_clearly(client) -> None:
    """Breaker: ``"Options": "x"`` (or a string Interface, generic options) answered aiohttp's bare
    "500 Server got itself in trouble" (an AttributeError), not an ``Err`` naming the field."""
    for body, field in (
        ({"NetworkID": NID2, "Options": "x"}, "Options"),
        ({"NetworkID": NID2, "Options": {"com.docker.network.generic": ["x"]}}, "generic"),
    ):
        r = await client.post("/NetworkDriver.CreateNetwork", data=json.dumps(body).encode(), headers=ACCEPT)
        assert r.headers["Content-Type"].startswith(CONTENT_TYPE), await r.text()
        assert field in json.loads(await r.text())["Err"]
    await call(client, "/NetworkDriver.CreateNetwork", create_net())
    for key in ("Interface", "Options"):
        body = {**create_ep(), key: "x"}
        r = await client.post("/NetworkDriver.CreateEndpoint", data=json.dumps(body).encode(), headers=ACCEPT)
        assert r.headers["Content-Type"].startswith(CONTENT_TYPE), await r.text()
        assert key in json.loads(await r.text())["Err"]
    assert await client.ctl.endpoints() == [] and len(await client.ctl.networks()) == 1


async def test_addresses_and_port_bindings_of_the_wrong_type_are_refused_clearly(client) -> None:
    """Fuzzer: a non-string Gateway, Address or aux address answered aiohttp's bare "500 Internal Server
    Error" (an AttributeError in the plugin); AuxAddresses not an object, port bindings of the wrong
    shape answered Python's own words ("'str' object is not a mapping", "invalid literal for int()",
    "unhashable type").  Now an ``Err`` naming the field, and nothing changed."""

    async def refused(path: str, body: dict, field: str) -> None:
        r = await client.post(path, data=json.dumps(body).encode(), headers=ACCEPT)
        text = await r.text()
        assert r.status >= 400 and r.headers["Content-Type"].startswith(CONTENT_TYPE), text
        err = json.loads(text)["Err"]
        assert field in err, err
        for python in ("' object", "int()", "unhashable", "literal", "NoneType"):
            assert python not in err, err

    def net(v4: dict | None = None, v6: dict | None = None) -> dict:
        body = create_net(nid=NID2)
        body["IPv4Data"][0].update(v4 or {})
        body["IPv6Data"][0].update(v6 or {})
        return body

    for body, field in (
        (net({"Gateway": 5}), "Gateway"),
        (net(v6={"Gateway": True}), "Gateway"),
        (net({"Pool": ["198.51.100.0/24"]}), "Pool"),
        (net({"AuxAddresses": "r=198.51.100.9"}), "AuxAddresses"),
        (net({"AuxAddresses": {"r": 7}}), "AuxAddresses"),
    ):
        await refused("/NetworkDriver.CreateNetwork", body, field)
    assert await client.ctl.networks() == []

    await call(client, "/NetworkDriver.CreateNetwork", create_net())
    for change, field in (
        ({"Address": 5}, "Address"),
        ({"AddressIPv6": ["2001:db8:5::9/64"]}, "AddressIPv6"),
        ({"MacAddress": 1}, "MacAddress"),
    ):
        body = create_ep(eid=EID2)
        body["Interface"].update(change)
        await refused("/NetworkDriver.CreateEndpoint", body, field)
    for portmap, field in (
        (5, "portmap"),
        ([{"Proto": [6], "Port": 80, "HostPort": 8080}], "Proto"),
        ([{"Proto": 6, "Port": "http", "HostPort": 8080}], "Port"),
        ([{"Proto": 6, "Port": 80, "HostPort": [8080]}], "HostPort"),
        ([{"Proto": 6, "Port": 80, "HostPort": 70000}], "HostPort"),
        ([{"Proto": 6, "Port": 80, "HostPort": 8080, "HostPortEnd": {}}], "HostPortEnd"),
        ([{"Proto": 6, "Port": 80, "HostPort": 8080, "HostIP": 5}], "HostIP"),
    ):
        await refused("/NetworkDriver.CreateEndpoint", create_ep(eid=EID2, v4="", v6="", portmap=portmap), field)
    assert await client.ctl.endpoints() == []

    await call(client, "/NetworkDriver.CreateEndpoint", create_ep())
    pec = {"NetworkID": NID, "EndpointID": EID, "Options": {"com.docker.network.portmap": [{"Proto": {}}]}}
    await refused("/NetworkDriver.ProgramExternalConnectivity", pec, "Proto")
    assert (await client.ctl.endpoints())[0].ports == []


async def test_an_address_docker_gives_again_replaces_the_endpoint_it_forgot(client) -> None:
    """A killed dockerd forgets its endpoints without Leave/DeleteEndpoint and gives their addresses again."""
    await call(client, "/NetworkDriver.CreateNetwork", create_net())
    await call(client, "/NetworkDriver.CreateEndpoint", create_ep())
    await call(client, "/NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID, "SandboxKey": SBKEY})
    await call(client, "/NetworkDriver.CreateEndpoint", create_ep(eid=EID2))  # same addresses, new endpoint
    (ep,) = await client.ctl.endpoints()
    assert ep.name == f"d-{EID2[:12]}" and ep.ipv4 == "198.51.100.7/24"
    assert await client.ctl.sandboxes() == []  # the forgotten endpoint's staging sandbox went with it
    err = await call(client, "/NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID}, status=500)
    assert "not a libnet endpoint known" in err["Err"]


async def test_failed_join_then_delete_endpoint(tmp_path) -> None:
    async def broken(netns: str, ifname: str, new_name: str) -> None:
        from libnet.errors import KernelError

        raise KernelError("move link to namespace: no such device", ifname=ifname)

    ctl = _ctl(tmp_path, MemoryStore(), MemoryStore())
    await ctl.start()
    async with TestClient(TestServer(make_plugin_app(ctl, broken))) as c:
        await call(c, "/NetworkDriver.CreateNetwork", create_net())
        await call(c, "/NetworkDriver.CreateEndpoint", create_ep())
        ids = {"NetworkID": NID, "EndpointID": EID, "SandboxKey": SBKEY}
        err = await call(c, "/NetworkDriver.Join", ids, status=500)
        assert "no such device" in err["Err"]
        assert await ctl.sandboxes() == [] and (await ctl.endpoints())[0].sandbox_id is None
        assert await call(c, "/NetworkDriver.DeleteEndpoint", ids) == {}  # what dockerd sends next
        assert await ctl.endpoints() == []
    await ctl.close()


async def test_a_sandbox_the_plugin_did_not_make_is_never_removed(client) -> None:
    """Breaker: a libnet sandbox (libnet's own API) with the id of a Docker endpoint -- or one that id is a
    prefix of -- was removed by that endpoint's Leave or DeleteEndpoint: the failed Join ("a sandbox with that
    id exists") left no staging sandbox in the mapping, and the plugin then took the one of that id."""
    ctl = client.ctl
    await ctl.create_sandbox(EID, hostname="users")
    await ctl.create_sandbox("e" * 80, hostname="longer")
    await call(client, "/NetworkDriver.CreateNetwork", create_net())
    await call(client, "/NetworkDriver.CreateEndpoint", create_ep())
    ids = {"NetworkID": NID, "EndpointID": EID, "SandboxKey": SBKEY}
    err = await call(client, "/NetworkDriver.Join", ids, status=500)
    assert "did not make" in err["Err"] and "left alone" in err["Err"]
    assert await call(client, "/NetworkDriver.Leave", ids) == {}
    assert await call(client, "/NetworkDriver.DeleteEndpoint", ids) == {}
    short = {"NetworkID": NID, "EndpointID": "eeee"}  # not Docker's shape, but an id the plugin takes
    await call(client, "/NetworkDriver.CreateEndpoint", {**short, "Interface": {}})
    assert await call(client, "/NetworkDriver.DeleteEndpoint", short) == {}
    assert sorted(s.hostname or "" for s in await ctl.sandboxes()) == ["longer", "users"]
    assert client.moved == []


async def test_a_staging_sandbox_a_killed_join_did_not_record_is_removed(client) -> None:
    """A kill between the Join's staging sandbox and its mapping: the next DeleteEndpoint still removes it."""
    ctl = client.ctl
    await call(client, "/NetworkDriver.CreateNetwork", create_net())
    await call(client, "/NetworkDriver.CreateEndpoint", create_ep())
    await ctl.create_sandbox(EID, origin="docker")  # as Join makes it; the mapping never learnt it
    ids = {"NetworkID": NID, "EndpointID": EID}
    assert await call(client, "/NetworkDriver.DeleteEndpoint", ids) == {}
    assert await ctl.sandboxes() == [] and await ctl.endpoints() == []


async def test_handover_names_this_namespace_here_and_checks_the_interface_arrived(monkeypatch) -> None:
    """The hand-over's target is a descriptor of the event loop thread's namespace, opened before the hop to
    the worker (a /proc/<pid>/ns/net path opened there named wherever the main thread was at that moment:
    another sandbox, while the event loop made sockets in it); and an interface that did not arrive here fails
    the Join with a message, instead of Docker's "Link not found" later."""
    from libnet.errors import KernelError
    from libnet.kernel import netlink

    here = os.stat("/proc/thread-self/ns/net")
    moves = []

    class FakeNetlink:
        def __init__(self, ns):
            self.ns = ns

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def set_down(self, link):
            pass

        def move_to_ns(self, link, ns, new_name=None):
            st = os.fstat(ns) if isinstance(ns, int) else None  # a descriptor, open while the move runs
            moves.append((self.ns, link, (st.st_dev, st.st_ino) if st else ns, new_name))

    monkeypatch.setattr(netlink, "Netlink", FakeNetlink)
    with pytest.raises(KernelError, match="not in the agent's namespace as lndnothere12"):
        await kernel_handover("/run/netns/staging", "eth0", "lndnothere12")  # moved nowhere by the fake
    assert moves == [("/run/netns/staging", "eth0", (here.st_dev, here.st_ino), "lndnothere12")]


async def test_a_handover_cancelled_before_its_move_started_closes_its_namespace_descriptor(monkeypatch) -> None:
    """A Join cancelled (dockerd gave up) while its move still waits for a worker thread: the move never
    runs, and the descriptor of this namespace is closed by the caller, not leaked (one per event)."""
    import asyncio
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from libnet.kernel import netlink
    from libnet.kernel import netns as kernel_netns

    opened: list[int] = []

    def open_own() -> int:
        fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        opened.append(fd)
        return fd

    class NoNetlink:
        def __init__(self, ns):
            raise AssertionError("the move ran after its caller was cancelled")

    monkeypatch.setattr(kernel_netns, "open_own", open_own)
    monkeypatch.setattr(netlink, "Netlink", NoNetlink)
    loop = asyncio.get_running_loop()
    busy, release = threading.Event(), threading.Event()
    with ThreadPoolExecutor(max_workers=1) as one:
        loop.set_default_executor(one)
        blocker = loop.run_in_executor(None, lambda: (busy.set(), release.wait(10)))
        assert busy.wait(10)
        task = asyncio.create_task(kernel_handover("/run/netns/staging", "eth0", "lndcancelled1"))
        await asyncio.sleep(0.05)  # queued behind the blocker
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        await blocker
    assert len(opened) == 1
    with pytest.raises(OSError):
        os.fstat(opened[0])  # closed


async def test_ipam_sequence(client) -> None:
    """--ipam-driver libnet with --subnet, --ip-range, --gateway, --aux-address; a container; network rm."""
    pool = await call(
        client,
        "/IpamDriver.RequestPool",
        {"AddressSpace": "local", "Pool": "198.51.100.0/24", "SubPool": "198.51.100.128/25", "Options": {}},
    )
    assert pool["Pool"] == "198.51.100.0/24" and pool["PoolID"]
    pid = pool["PoolID"]
    gw = {"PoolID": pid, "Address": "198.51.100.254", "Options": {"RequestAddressType": "com.docker.network.gateway"}}
    assert (await call(client, "/IpamDriver.RequestAddress", gw))["Address"] == "198.51.100.254/24"
    aux = await call(client, "/IpamDriver.RequestAddress", {"PoolID": pid, "Address": "198.51.100.5", "Options": {}})
    assert aux["Address"] == "198.51.100.5/24"
    ctr = await call(client, "/IpamDriver.RequestAddress", {"PoolID": pid, "Address": "", "Options": {}})
    assert ctr["Address"].startswith("198.51.100.") and int(ctr["Address"].split(".")[3].split("/")[0]) >= 128
    err = await call(client, "/IpamDriver.RequestAddress", {"PoolID": pid, "Address": "198.51.100.5"}, status=500)
    assert "198.51.100.5" in err["Err"] and err["Error"] == err["Err"]
    v6 = await call(client, "/IpamDriver.RequestPool", {"AddressSpace": "local", "Pool": "", "V6": True})
    assert ":" in v6["Pool"]
    assert (await call(client, "/IpamDriver.RequestAddress", {"PoolID": v6["PoolID"]}))["Address"].count(":") >= 2
    # the periodic reconcile does not take Docker's pools and addresses away
    await client.ctl.reconcile()
    err = await call(client, "/IpamDriver.RequestAddress", {"PoolID": pid, "Address": "198.51.100.5"}, status=500)
    assert "already allocated" in err["Err"]

    ip = ctr["Address"].split("/")[0]
    assert await call(client, "/IpamDriver.ReleaseAddress", {"PoolID": pid, "Address": ip}) == {}
    assert await call(client, "/IpamDriver.ReleaseAddress", {"PoolID": pid, "Address": ip}) == {}
    assert await call(client, "/IpamDriver.ReleaseAddress", {"PoolID": pid, "Address": "198.51.100.254"}) == {}
    assert await call(client, "/IpamDriver.ReleasePool", {"PoolID": pid}) == {}
    assert await call(client, "/IpamDriver.ReleasePool", {"PoolID": pid}) == {}
    assert await call(client, "/IpamDriver.ReleasePool", {"PoolID": v6["PoolID"]}) == {}
    assert await client.ctl.ipam.pool_owners() == []


async def test_ipam_errors(client) -> None:
    await call(client, "/IpamDriver.RequestPool", {"AddressSpace": "local", "Pool": "198.51.100.0/24"})
    err = await call(client, "/IpamDriver.RequestPool", {"AddressSpace": "local", "Pool": "198.51.100.0/25"}, 500)
    assert "overlap" in err["Err"].lower() and err["Error"] == err["Err"]
    err = await call(client, "/IpamDriver.RequestPool", {"AddressSpace": "Nope", "Pool": ""}, status=500)
    assert "address spaces" in err["Err"]
    err = await call(client, "/IpamDriver.RequestPool", {"Pool": "", "Options": {"color": "red"}}, status=500)
    assert "--ipam-opt color" in err["Err"]
    err = await call(client, "/IpamDriver.RequestPool", {"Pool": "not-a-subnet"}, status=500)
    assert "not-a-subnet" in err["Err"]
    err = await call(client, "/IpamDriver.RequestAddress", {"PoolID": "local/203.0.113.0/24"}, status=500)
    assert err["Err"]
    assert (await call(client, "/IpamDriver.RequestAddress", {}, status=500))["Err"] == "PoolID is required"
    assert (await call(client, "/IpamDriver.ReleasePool", {}, status=500))["Err"] == "PoolID is required"


async def test_ipam_calls_leave_the_pools_of_libnet_networks_alone(client) -> None:
    """Fuzzer: ReleaseAddress, RequestAddress and ReleasePool took any pool id, so a libnet network's
    own pool (its id is its subnet: ``local/198.51.100.0/26``) lost its gateway and endpoints'
    addresses (handed out again), got addresses taken, and was released while the network stood
    (its subnet free for another network).  Only pools held for Docker are Docker's to use."""
    ctl = client.ctl
    nw = await ctl.create_network("mine", ipv4_subnet="198.51.100.0/26", ipv6=False)
    await ctl.create_sandbox("s")
    ep = await ctl.connect("mine", "s")
    store = ctl.repo.store("local")
    before = [(p.key, p.value) for p in await store.list("")]
    for path, body in (
        ("/IpamDriver.ReleaseAddress", {"PoolID": nw.ipv4_pool, "Address": ep.ipv4}),
        ("/IpamDriver.ReleaseAddress", {"PoolID": nw.ipv4_pool, "Address": nw.ipv4_gateway}),
        ("/IpamDriver.RequestAddress", {"PoolID": nw.ipv4_pool}),
        ("/IpamDriver.RequestAddress", {"PoolID": nw.ipv4_pool, "Address": "198.51.100.9"}),
        ("/IpamDriver.ReleasePool", {"PoolID": nw.ipv4_pool}),
    ):
        err = await call(client, path, body, status=500)
        assert "not held for Docker" in err["Err"], (path, err)
        assert [(p.key, p.value) for p in await store.list("")] == before, path
    # Docker's own pools work as before; gone ones are released quietly
    pool = await call(client, "/IpamDriver.RequestPool", {"AddressSpace": "local", "Pool": "198.51.100.128/26"})
    addr = await call(client, "/IpamDriver.RequestAddress", {"PoolID": pool["PoolID"]})
    release = {"PoolID": pool["PoolID"], "Address": addr["Address"]}
    assert await call(client, "/IpamDriver.ReleaseAddress", release) == {}
    assert await call(client, "/IpamDriver.ReleasePool", {"PoolID": pool["PoolID"]}) == {}
    assert await call(client, "/IpamDriver.ReleasePool", {"PoolID": pool["PoolID"]}) == {}
    assert await call(client, "/IpamDriver.ReleaseAddress", release) == {}


async def test_swarm_and_discovery_calls(client) -> None:
    assert await call(client, "/NetworkDriver.DiscoverNew", {"DiscoveryType": 1, "DiscoveryData": {}}) == {}
    assert await call(client, "/NetworkDriver.DiscoverDelete", {"DiscoveryType": 1, "DiscoveryData": {}}) == {}
    assert await call(client, "/NetworkDriver.AllocateNetwork", {"NetworkID": NID, "Options": {}}) == {"Options": {}}
    assert await call(client, "/NetworkDriver.FreeNetwork", {"NetworkID": NID}) == {}


async def test_agent_serves_the_plugin_socket(tmp_path) -> None:
    """The agent's second socket: served, and left alone when another live process serves it."""
    import aiohttp

    from agent import config as agent_config
    from agent.daemon import _serve_docker_plugin

    assert agent_config.AgentConfig().docker_plugin_socket == "/run/docker/plugins/libnet.sock"
    assert agent_config.load(["--docker-plugin-socket", ""], {}).docker_plugin_socket == ""
    ctl = _ctl(tmp_path, MemoryStore(), MemoryStore())
    await ctl.start()
    path = str(tmp_path / "plugins" / "libnet.sock")
    runner = await _serve_docker_plugin(ctl, path)
    try:
        assert runner is not None and os.stat(path).st_mode & 0o777 == 0o660
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) as session,
            session.post("http://docker/Plugin.Activate", headers=ACCEPT) as r,
        ):
            assert r.status == 200
            assert (await r.json(content_type=None))["Implements"] == ["NetworkDriver", "IpamDriver"]
        assert await _serve_docker_plugin(ctl, path) is None  # in use: not taken over
    finally:
        if runner is not None:
            await runner.cleanup()
        await ctl.close()


@pytest.fixture
async def fake_dockerd(tmp_path):
    """dockerd's API as the plugin reads it: a network and the containers on it."""
    from aiohttp import web

    state = {"containers": []}

    async def network(request):
        if request.match_info["id"] != NID:
            return web.json_response({"message": "no such network"}, status=404)
        return web.json_response({"Id": NID, "Name": "ov"})

    async def containers(request):
        assert json.loads(request.query["filters"]) == {"network": ["ov"]} and request.query["all"] == "1"
        return web.json_response(state["containers"])

    app = web.Application()
    app.router.add_get("/networks/{id}", network)
    app.router.add_get("/containers/json", containers)
    runner = web.AppRunner(app)
    await runner.setup()
    path = str(tmp_path / "docker.sock")
    await web.UnixSite(runner, path).start()
    yield path, state
    await runner.cleanup()


def _ctr(name, state="created", endpoint="", ip=None):
    ipam = {"IPv4Address": ip} if ip else None
    return {
        "Names": [f"/{name}"],
        "State": state,
        "NetworkSettings": {"Networks": {"ov": {"EndpointID": endpoint, "IPAMConfig": ipam, "Aliases": None}}},
    }


async def test_container_names_from_dockerd(fake_dockerd) -> None:
    from agent.docker_names import DockerNames

    path, state = fake_dockerd
    names = DockerNames(path)
    assert await names.identify(NID, "198.51.100.7") is None  # nobody starting
    state["containers"] = [_ctr("web"), _ctr("old", "running", "e" * 64)]
    assert await names.identify(NID, "198.51.100.7") == ("web", [])
    state["containers"].append(_ctr("db", ip="198.51.100.9"))
    assert await names.identify(NID, "198.51.100.7") == ("web", [])  # db's --ip is another address
    state["containers"].append(_ctr("cache"))
    assert await names.identify(NID, "198.51.100.7") is None  # two starting at once: unsure
    assert await names.identify(NID, "198.51.100.9") == ("db", [])  # its --ip tells
    assert await names.identify("f" * 64, None) is None
    assert await DockerNames(None).identify(NID, None) is None
    assert await DockerNames(path + ".gone").identify(NID, None) is None
    # breaker: after dockerd was killed, a stopped container still names its old endpoint; it is starting again
    state["containers"] = [_ctr("o2", "exited", "e" * 64), _ctr("up", "running", "f" * 64)]
    assert await names.identify(NID, "198.51.100.7") == ("o2", [])


async def test_overlay_endpoints_take_the_container_name(tmp_path, fake_dockerd) -> None:
    path, state = fake_dockerd
    ctl = _ctl(tmp_path, MemoryStore(), MemoryStore())
    await ctl.start()

    async def handover(netns: str, ifname: str, new_name: str) -> None:
        return None

    async with TestClient(TestServer(make_plugin_app(ctl, handover, docker_host=path))) as c:
        await call(c, "/NetworkDriver.CreateNetwork", create_net(generic={"libnet.driver": "overlay"}))
        state["containers"] = [_ctr("web")]
        await call(c, "/NetworkDriver.CreateEndpoint", create_ep())
        assert [e.name for e in await ctl.endpoints()] == ["web"]
        # the same name again (another host's container): Docker's own DNS only, libnet's id name
        await call(c, "/NetworkDriver.CreateEndpoint", create_ep(eid=EID2, v4="198.51.100.8/24", v6=""))
        assert sorted(e.name for e in await ctl.endpoints()) == ["d-" + EID2[:12], "web"]
    await ctl.close()


@pytest.fixture
async def dockerd_api(tmp_path):
    """dockerd's network API as the sync reads it: ``state["networks"]`` {id: [endpoint ids]};
    ``state["down"]``: every call fails (dockerd restarting)."""
    from aiohttp import web

    state: dict = {"networks": {}, "down": False, "id": "DAEMON:ONE"}

    async def info(request):
        if state["down"]:
            return web.json_response({"message": "restarting"}, status=500)
        return web.json_response({"ID": state["id"]})

    async def networks(request):
        if state["down"]:
            return web.json_response({"message": "restarting"}, status=500)
        return web.json_response([{"Id": n, "Name": n[:4]} for n in state["networks"]])

    async def network(request):
        nid = request.match_info["id"]
        if state["down"] or nid not in state["networks"]:
            return web.json_response({"message": "no such network"}, status=404)
        eps = state["networks"][nid]
        return web.json_response({"Id": nid, "Containers": {f"ctr{i}": {"EndpointID": e} for i, e in enumerate(eps)}})

    app = web.Application()
    app.router.add_get("/networks", networks)
    app.router.add_get("/networks/{id}", network)
    app.router.add_get("/info", info)
    runner = web.AppRunner(app)
    await runner.setup()
    path = str(tmp_path / "dockerd.sock")
    await web.UnixSite(runner, path).start()
    yield path, state
    await runner.cleanup()


async def test_what_dockerd_forgot_while_the_agent_was_down_is_removed(tmp_path, dockerd_api) -> None:
    """Breaker: with the agent down, `docker rm -f` and `docker network rm` reached no plugin; libnet kept the
    network, pool, endpoint, ports and staging sandbox for ever (reconcile even repaired them), so the subnet
    and the host port stayed blocked.  The sync removes exactly what dockerd no longer has, and nothing while
    dockerd does not answer or while a mapping is younger than the grace period."""
    from agent.docker_plugin import SYNC

    path, state = dockerd_api
    ctl = _ctl(tmp_path, MemoryStore(), MemoryStore())
    await ctl.start()
    now = [time.time()]
    app = make_plugin_app(ctl, lambda *a: _nothing(), docker_host=path)
    sync = app[SYNC]
    sync.clock = lambda: now[0]
    sync.grace = 30.0
    portmap = [{"Proto": 6, "Port": 80, "HostPort": 8080}]
    async with TestClient(TestServer(app)) as c:
        mine = await ctl.create_network("mine", ipv4_subnet="198.51.100.192/26", ipv6=False)  # libnet's own
        await call(c, "/NetworkDriver.CreateNetwork", create_net(v6=False) | {"IPv4Data": [_pool("198.51.100.0/26")]})
        await call(
            c,
            "/NetworkDriver.CreateNetwork",
            create_net(nid=NID2, v6=False) | {"IPv4Data": [_pool("198.51.100.64/26")]},
        )
        for eid, nid in ((EID, NID), (EID2, NID2)):
            await call(c, "/NetworkDriver.CreateEndpoint", create_ep(eid=eid, nid=nid, v4="", v6=""))
            ids = {"NetworkID": nid, "EndpointID": eid}
            await call(c, "/NetworkDriver.Join", {**ids, "SandboxKey": SBKEY})
            await call(
                c,
                "/NetworkDriver.ProgramExternalConnectivity",
                {**ids, "Options": {"com.docker.network.portmap": portmap if eid == EID else []}},
            )
        now[0] += 60
        # a dockerd that never listed the plugin's networks (--docker-host pointing at another one) concludes
        # nothing; once this dockerd lists them, its id is recorded and another id concludes nothing either
        assert (await sync.once()).skipped and len(await ctl.endpoints()) == 2
        # dockerd knows both networks and both endpoints: nothing goes
        state["networks"] = {NID: [EID], NID2: [EID2]}
        assert (await sync.once()).endpoints == []
        state["id"], saved = "DAEMON:TWO", state["networks"]
        state["networks"] = {}
        assert "another dockerd" in (await sync.once()).skipped and len(await ctl.endpoints()) == 2
        state["id"], state["networks"] = "DAEMON:ONE", saved
        # while the agent was down: container on NID removed, network NID2 removed with its container
        state["networks"] = {NID: []}
        state["down"] = True
        assert (await sync.once()).skipped  # no answer, no conclusion
        assert len(await ctl.endpoints()) == 2
        state["down"] = False
        # missing once may be a removal under way (dockerd drops its record before DeleteEndpoint): kept
        report = await sync.once()
        assert report.endpoints == [] and report.networks == [] and len(await ctl.endpoints()) == 2
        report = await sync.once()  # missing twice in a row: forgotten
        assert sorted(report.endpoints) == sorted([EID, EID2]) and report.networks == [NID2]
        assert [n.name for n in await ctl.networks()] == sorted([f"docker-{NID[:12]}", "mine"])
        assert await ctl.endpoints() == [] and await ctl.sandboxes() == []
        # the subnet and the host port are free again
        again = await ctl.create_network("again", ipv4_subnet="198.51.100.64/26", ipv6=False)
        sb = await ctl.create_sandbox()
        assert (await ctl.connect(again.id, sb.id, ports=[{"host_port": 8080, "container_port": 80}])).ports
        # young mappings are left alone: dockerd records an endpoint only after the plugin answered
        now[0] = time.time()
        await call(c, "/NetworkDriver.CreateEndpoint", create_ep(v4="", v6=""))
        assert (await sync.once()).endpoints == [] and len(await ctl.endpoints()) == 2
        # an endpoint removed by hand (libnet endpoint rm --force): its staging sandbox and mapping go
        await call(c, "/NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID, "SandboxKey": SBKEY})
        (ep,) = [e for e in await ctl.endpoints() if e.network_id != again.id]
        await ctl.delete_endpoint(ep.id, force=True)
        assert EID in [s.id for s in await ctl.sandboxes()]  # the staging sandbox stayed behind
        assert (await sync.once()).unstaged == [EID]
        assert [s.id for s in await ctl.sandboxes()] == [sb.id]
        assert mine.id in [n.id for n in await ctl.networks()]  # never Docker's: never touched
    await ctl.close()


async def _nothing() -> None:
    return None


def _pool(cidr: str) -> dict:
    first = cidr.rsplit(".", 1)[0] + "." + str(int(cidr.rsplit(".", 1)[1].split("/")[0]) + 1)
    return {
        "AddressSpace": "LocalDefault",
        "Pool": cidr,
        "Gateway": f"{first}/{cidr.split('/')[1]}",
        "AuxAddresses": {},
    }
