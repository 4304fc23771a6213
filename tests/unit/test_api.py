"""The agent's HTTP API with fakes: every route, errors, bad input, and the OpenAPI document."""

from __future__ import annotations

import json
import os

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent import api, cni_api
from agent.api import AgentState, make_app
from agent.metrics import Metrics
from ipam.ipam import StoreIpam
from libnet import Config, Controller
from libnet.store.memory import MemoryStore
from libnet.testing.fakes import FakeDriver, FakeNamespaces

OPENAPI = os.path.join(os.path.dirname(api.__file__), "openapi.json")


@pytest.fixture
async def client(tmp_path):
    store = MemoryStore()
    ctl = Controller(
        Config(state_dir=str(tmp_path)),
        store=store,
        ipam=StoreIpam(store),
        drivers={"bridge": FakeDriver("bridge")},
        namespaces=FakeNamespaces(),
    )
    await ctl.start()
    app = make_app(AgentState(ctl, "node-1", Metrics(), advertise="203.0.113.11"))
    async with TestClient(TestServer(app)) as c:
        c.ctl = ctl
        yield c


async def _state(client) -> list:
    return (
        [(p.key, p.value) for p in await client.ctl._store.list("libnet/v1/networks/")]
        + [(p.key, p.value) for p in await client.ctl._store.list("libnet/v1/endpoints/")]
        + [(p.key, p.value) for p in await client.ctl._store.list("libnet/v1/sandboxes/")]
        + [(p.key, p.value) for p in await client.ctl._store.list("libnet/v1/proxies/")]
    )


async def test_every_route(client) -> None:
    assert (await (await client.get("/v1/version")).json())["api"] == "v1"
    health = await client.get("/v1/health")
    assert health.status == 200 and (await health.json())["node"] == "node-1"

    r = await client.post(
        "/v1/networks", json={"name": "web", "ipv4_subnet": "198.51.100.0/24", "labels": {"team": "a"}}
    )
    assert r.status == 201
    net = await r.json()
    assert net["ipv4_gateway"] == "198.51.100.1/24" and net["ipv6_subnet"]
    assert [n["name"] for n in await (await client.get("/v1/networks")).json()] == ["web"]

    sb = await (await client.post("/v1/sandboxes", json={"hostname": "app"})).json()
    assert (await client.get(f"/v1/sandboxes/{sb['id']}")).status == 200
    assert len(await (await client.get("/v1/sandboxes")).json()) == 1

    r = await client.post(
        "/v1/networks/web/connect", json={"sandbox": sb["id"], "ports": [{"host_port": 8080, "container_port": 80}]}
    )
    assert r.status == 201
    ep = await r.json()
    assert ep["ifname"] == "eth0" and ep["ipv4"] == "198.51.100.2/24"
    detail = await (await client.get("/v1/networks/web")).json()
    assert [e["id"] for e in detail["endpoints"]] == [ep["id"]]
    assert (await client.get(f"/v1/endpoints/{ep['id']}")).status == 200
    assert len(await (await client.get("/v1/endpoints?network=web")).json()) == 1

    r = await client.post(f"/v1/sandboxes/{sb['id']}/leave", json={"endpoint": ep["id"]})
    assert r.status == 200 and (await r.json())["sandbox_id"] is None
    r = await client.post(f"/v1/sandboxes/{sb['id']}/join", json={"endpoint": ep["id"]})
    assert (await r.json())["sandbox_id"] == sb["id"]
    assert (await client.post("/v1/networks/web/disconnect", json={"sandbox": sb["id"]})).status == 204

    r = await client.post("/v1/endpoints", json={"network": "web", "name": "spare"})
    assert r.status == 201
    spare = await r.json()
    assert (await client.delete(f"/v1/endpoints/{spare['id']}")).status == 204

    nodes = await (await client.get("/v1/nodes")).json()
    assert nodes == [{"name": "node-1", "address": "203.0.113.11", "port": 0, "tags": {}, "status": "alive"}]
    report = await (await client.post("/v1/reconcile")).json()
    assert report == {"removed": [], "missing": [], "repaired": [], "foreign": [], "kept": []}
    text = await (await client.get("/metrics")).text()
    for metric in (
        'libnet_networks{driver="bridge"} 1.0',
        "libnet_ipam_pool_size",
        "libnet_cluster_members",
        "libnet_api_request_seconds_bucket",
        "libnet_sandboxes 1.0",
    ):
        assert metric in text
    assert (await client.delete(f"/v1/sandboxes/{sb['id']}")).status == 204
    assert (await client.delete("/v1/networks/web")).status == 204


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "says"),
    [
        ("POST", "/v1/networks", b"{not json", 400, "malformed JSON"),
        ("POST", "/v1/networks", b"[1, 2]", 400, "JSON object"),
        ("POST", "/v1/networks", {"name": "x", "colour": "red"}, 400, "unknown field"),
        ("POST", "/v1/networks", {"name": 7}, 400, "must be a string"),
        ("POST", "/v1/networks", {"name": "x", "internal": "yes"}, 400, "must be true or false"),
        ("POST", "/v1/networks", {"name": "x", "options": []}, 400, "must be an object"),
        ("POST", "/v1/networks", {}, 400, "'name' is required"),
        ("POST", "/v1/networks", {"name": "not_a_label"}, 400, "DNS label"),
        ("POST", "/v1/networks", {"name": "web"}, 409, "already in use"),
        ("POST", "/v1/networks", {"name": "x", "driver": "macvlan"}, 400, "unknown driver"),
        ("POST", "/v1/networks", b"{" + b'"name": "' + b"x" * (2 << 20) + b'"}', 400, "exceeds"),
        ("POST", "/v1/endpoints", {"network": "web", "name": "e", "ports": "80"}, 400, "must be an array"),
        ("POST", "/v1/endpoints", {"network": "nope", "name": "e"}, 404, "no such network"),
        ("POST", "/v1/sandboxes", {"netns": 5}, 400, "must be a string"),
        ("POST", "/v1/networks/web/connect", {"sandbox": "nope"}, 404, "no such sandbox"),
        ("GET", "/v1/networks/nope", None, 404, "no such network"),
        ("GET", "/v1/endpoints?colour=red", None, 400, "unknown query"),
        ("DELETE", "/v1/sandboxes/nope", None, 404, "no such sandbox"),
        ("GET", "/v1/nothing-here", None, 404, "Not Found"),
        ("POST", "/v1/proxies", {"name": "p", "source": "web", "target": "nope", "services": ["db:1"]}, 404, "no such"),
        ("POST", "/v1/proxies", {"name": "p", "source": "web", "target": "web", "services": "db:1"}, 400, "array"),
        ("POST", "/v1/proxies", {"name": "p", "source": "web", "target": "web", "services": ["db:1"]}, 400, "two"),
        ("POST", "/v1/proxies", {"name": "p", "source": "web", "target": "web"}, 400, "'services' is required"),
        ("GET", "/v1/proxies/nope", None, 404, "no such proxy"),
        ("DELETE", "/v1/proxies/nope", None, 404, "no such proxy"),
        ("POST", "/v1/networks", b'{"name": "x", "options": {"mtu": Infinity}}', 400, "not a JSON number"),
        ("POST", "/v1/networks", b'{"name": "x", "options": {"mtu": NaN}}', 400, "not a JSON number"),
        ("POST", "/v1/networks", b'{"name": "x", "options": {"mtu": 1e400}}', 400, "out of range"),
        ("POST", "/v1/networks", b'{"name": "x", "labels": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "nested"),
        ("POST", "/v1/networks", b'{"name": "x", "labels": ' + b"[" * 20 + b"]" * 20 + b"}", 400, "nested"),
    ],
)
async def test_bad_requests_get_clear_errors_and_change_nothing(client, method, path, body, status, says) -> None:
    await client.post("/v1/networks", json={"name": "web"})
    before = await _state(client)
    data = body if isinstance(body, bytes) else (None if body is None else json.dumps(body).encode())
    r = await client.request(method, path, data=data, headers={"Content-Type": "application/json"})
    assert r.status == status
    err = (await r.json())["error"]
    assert says in err["message"], err
    assert {"kind", "message"} <= set(err)
    assert await _state(client) == before


async def test_proxy_routes(client) -> None:
    for name, subnet in (("web", "198.51.100.0/25"), ("back", "198.51.100.128/25")):
        assert (await client.post("/v1/networks", json={"name": name, "ipv4_subnet": subnet})).status == 201
    body = {"name": "dbp", "source": "web", "target": "back", "services": ["db:5432/udp"], "listen_port": 53}
    r = await client.post("/v1/proxies", json=body)
    assert r.status == 201, await r.text()
    px = await r.json()
    assert px["services"] == [{"alias": "db", "port": 5432, "protocol": "udp", "listen": 53}]
    assert [p["name"] for p in await (await client.get("/v1/proxies")).json()] == ["dbp"]
    detail = await (await client.get("/v1/proxies/dbp")).json()
    assert detail["front"]["ipv4"].startswith("198.51.100.") and detail["backends"] == {"db": []}
    assert (await client.post("/v1/proxies", json=body)).status == 409
    assert (await client.delete("/v1/proxies/dbp")).status == 204
    assert await (await client.get("/v1/proxies")).json() == []


def test_openapi_document_matches_the_routes() -> None:
    with open(OPENAPI) as f:
        doc = json.load(f)
    app = make_app(AgentState(None, "n", Metrics()))  # type: ignore[arg-type]
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops if m != "parameters"}
    assert routes == documented
    specs = {
        ("post", "/v1/networks"): api.NETWORK_CREATE,
        ("post", "/v1/endpoints"): api.ENDPOINT_CREATE,
        ("post", "/v1/sandboxes"): api.SANDBOX_CREATE,
        ("post", "/v1/networks/{ref}/connect"): api.CONNECT,
        ("post", "/v1/networks/{ref}/disconnect"): api.DISCONNECT,
        ("post", "/v1/sandboxes/{ref}/join"): api.JOIN,
        ("post", "/v1/proxies"): api.PROXY_CREATE,
        ("post", "/v1/cni/add"): cni_api.CNI_ADD,
        ("post", "/v1/cni/del"): cni_api.CNI_DEL,
        ("post", "/v1/cni/ipam/add"): cni_api.CNI_IPAM_ADD,
        ("post", "/v1/cni/ipam/del"): cni_api.CNI_IPAM_DEL,
        ("post", "/v1/cni/status"): cni_api.CNI_STATUS,
        ("post", "/v1/cni/gc"): cni_api.CNI_GC,
    }
    for (method, path), spec in specs.items():
        schema = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
        assert set(schema["properties"]) == set(spec)
        assert set(schema.get("required", [])) == {k for k, (_, req) in spec.items() if req}
        assert schema["additionalProperties"] is False


def test_api_latency_is_one_series_per_method_route_and_code() -> None:
    """The labelled histograms are kept per (method, route, code) (issue 22: a tenth of a
    cached GET was ``labels()``); each request still lands in its own series."""
    from prometheus_client import generate_latest

    from agent.metrics import Metrics

    m = Metrics()
    for code, seconds in ((200, 0.001), (200, 0.2), (404, 0.003)):
        m.observe("GET", "/v1/networks/{ref}", code, seconds)
    m.observe("POST", "/v1/networks/{ref}", 200, 0.001)
    text = generate_latest(m.registry).decode()
    series = 'libnet_api_request_seconds_count{{code="{}",method="{}",route="/v1/networks/{{ref}}"}} {}'
    for code, method, count in (("200", "GET", "2.0"), ("404", "GET", "1.0"), ("200", "POST", "1.0")):
        assert series.format(code, method, count) in text
    assert (
        'libnet_api_request_seconds_bucket{code="200",le="0.001",method="GET",route="/v1/networks/{ref}"} 1.0' in text
    )


async def test_network_list_follows_writes_of_another_agent_on_the_shared_store(tmp_path) -> None:
    """``GET /v1/networks`` is served from the last answer while the store revisions are
    unchanged: a network another agent (its own connection to the same SQLite file)
    creates or removes shows at once (issue 22)."""
    from libnet.store import open_store

    ctls = []
    for name in ("a", "b"):
        store = open_store(f"sqlite://{tmp_path}/shared.db")
        ctl = Controller(
            Config(state_dir=str(tmp_path / name), node_name=name),
            store=store,
            ipam=StoreIpam(store),
            drivers={"bridge": FakeDriver("bridge")},
            namespaces=FakeNamespaces(),
        )
        await ctl.start()
        ctls.append(ctl)
    app = make_app(AgentState(ctls[0], "a", Metrics(), advertise="203.0.113.11"))
    async with TestClient(TestServer(app)) as c:

        async def names() -> list[str]:
            return sorted(n["name"] for n in await (await c.get("/v1/networks")).json())

        await ctls[0].create_network("web", ipv4_subnet="198.51.100.0/26", ipv6=False)
        assert await names() == ["web"] and await names() == ["web"]  # the second from the kept answer
        await ctls[1].create_network("db", ipv4_subnet="198.51.100.64/26", ipv6=False)
        assert await names() == ["db", "web"]
        await ctls[1].delete_network("db")
        assert await names() == ["web"]
    for ctl in ctls:
        await ctl.close()


async def test_a_client_gone_mid_body_is_no_internal_error(client, tmp_path, caplog) -> None:
    """Fuzzer: a client that sent part of a body and closed its connection was logged as an 'internal
    error' at ERROR with a traceback (ConnectionResetError) and counted as a 500 -- a stalled client
    could fill the log with them.  Now it is said in one line at INFO, counted as a 400.  Served on a
    unix socket as the agent serves it (the test server's TCP transport does not show it)."""
    import asyncio
    import logging

    from agent.aioweb import web

    state = AgentState(client.ctl, "node-1", Metrics())
    runner = web.AppRunner(make_app(state), access_log=None)
    await runner.setup()
    path = str(tmp_path / "api.sock")
    await web.UnixSite(runner, path).start()
    try:
        with caplog.at_level(logging.INFO, logger="libnet.agent.api"):
            _reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"POST /v1/networks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            writer.write(b"Content-Length: 1000\r\n\r\n{")
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.close()
            for _ in range(100):
                await asyncio.sleep(0.02)
                if any(r.name == "libnet.agent.api" for r in caplog.records):
                    break
        said = [r for r in caplog.records if r.name == "libnet.agent.api"]
        assert said and all(r.levelno < logging.WARNING and not r.exc_info for r in said), [
            r.getMessage() for r in said
        ]
        assert "closed the connection" in said[0].getMessage()
        body, _type = await state.metrics.render(client.ctl, [])
        assert b'status="500"' not in body
    finally:
        await runner.cleanup()
