"""The agent's HTTP API (aiohttp), JSON in and out, on a unix socket.

Errors are ``{"error": {"kind", "type", "message", ...ids}}`` with 400 for bad
input (malformed JSON, unknown fields, wrong types, bodies over 1 MiB), 404
for unknown objects, 409 for conflicts, 503 when a dependency is
unavailable, 500 otherwise.  A rejected request changes nothing.  The routes
are documented in ``agent/openapi.json`` (a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from collections.abc import Awaitable, Callable
from typing import Any

import libnet
from agent.aioweb import HttpProcessingError, RequestPayloadError, web
from agent.metrics import Metrics
from agent.topology import build as build_topology
from libnet.controller import Controller
from libnet.errors import BadRequest, Conflict, KernelError, LibnetError, NoSuchEndpoint, NotFound, Unavailable
from libnet.model import Endpoint

log = logging.getLogger("libnet.agent.api")
MAX_BODY = 1 << 20

Spec = dict[str, tuple[type | tuple[type, ...], bool]]  # field -> (types, required)
_TYPE_NAMES = {str: "a string", bool: "true or false", dict: "an object", list: "an array", int: "an integer"}
STATE: web.AppKey[AgentState] = web.AppKey("state")

NETWORK_CREATE: Spec = {
    "name": (str, True),
    "driver": (str, False),
    "ipv4_subnet": (str, False),
    "ipv4_gateway": (str, False),
    "ipv6": (bool, False),
    "ipv6_subnet": (str, False),
    "ipv6_gateway": (str, False),
    "internal": (bool, False),
    "options": (dict, False),
    "labels": (dict, False),
    "ipv4_range": (str, False),
    "ipv6_range": (str, False),
    "aux_addresses": (dict, False),
    "allow_route_overlap": (bool, False),
}
_ENDPOINT_FIELDS: Spec = {
    "ipv4": (str, False),
    "ipv6": (str, False),
    "aliases": (list, False),
    "services": (list, False),
    "ports": (list, False),
}
ENDPOINT_CREATE: Spec = {"network": (str, True), "name": (str, True), **_ENDPOINT_FIELDS}
CONNECT: Spec = {"sandbox": (str, True), "name": (str, False), **_ENDPOINT_FIELDS}
DISCONNECT: Spec = {"sandbox": (str, True)}
SANDBOX_CREATE: Spec = {
    "id": (str, False),
    "netns": (str, False),
    "hostname": (str, False),
    "dns": (list, False),
    "dns_search": (list, False),
    "dns_options": (list, False),
}
JOIN: Spec = {"endpoint": (str, True)}
PROXY_CREATE: Spec = {
    "name": (str, True),
    "source": (str, True),
    "target": (str, True),
    "services": (list, True),
    "listen_port": (int, False),
}


@dataclasses.dataclass
class AgentState:
    """What the handlers need."""

    controller: Controller
    node_name: str
    metrics: Metrics
    membership: Any = None  # a libnet.cluster.membership.Membership in cluster mode
    advertise: str | None = None
    started: float = dataclasses.field(default_factory=time.time)
    cluster_store: Any = None  # a libnet.store.mirror.MirroredStore in cluster mode (degraded mode)
    serf: Any = None  # the supervised libnet.cluster.agent.SerfAgent
    drain: Callable[[], Awaitable[None]] | None = None  # leave the cluster and stop (libnet node drain)


def _status(exc: LibnetError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, BadRequest):
        return 400
    if isinstance(exc, Unavailable):
        return 503
    return 500


def error_response(status: int, kind: str, message: str, **ids: Any) -> web.Response:
    body = {"error": {"kind": kind, "message": message, **ids}}
    return web.json_response(body, status=status, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)


def _plain(obj: Any) -> Any:
    if hasattr(obj, "to_data"):
        return obj.to_data()  # stored objects: a shallow dict, no deep copy
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return obj


def overlay_hook(ctl: Controller, name: str) -> Any:
    """The overlay driver's method ``name`` (encryption), or None without one."""
    try:
        driver = ctl.driver("overlay")
    except LibnetError:
        return None
    hook = getattr(driver, name, None)
    return hook if callable(hook) else None


async def _encryption(ctl: Controller) -> dict[str, Any] | None:
    """The overlay driver's WireGuard tunnel: backend and why, interface, peers (None: no overlays here)."""
    status = overlay_hook(ctl, "encryption_status")
    return await status() if status is not None else None


def _json(obj: Any, status: int = 200) -> web.Response:
    obj = [_plain(o) for o in obj] if isinstance(obj, list) else _plain(obj)
    return web.json_response(obj, status=status, dumps=_dumps)


MAX_DEPTH = 16  # no request of this API nests deeper than 3


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:32]} is out of range")
    return value


def _depth(value: Any, level: int = 1) -> int:
    """How deeply ``value`` nests (stops counting past MAX_DEPTH)."""
    if level > MAX_DEPTH or not isinstance(value, dict | list):
        return level
    items = value.values() if isinstance(value, dict) else value
    return max((_depth(v, level + 1) for v in items), default=level)


async def body_of(request: web.Request, spec: Spec) -> dict[str, Any]:
    """The JSON body, checked against ``spec`` (BadRequest on any mismatch)."""
    raw = await request.read()
    try:
        # JSON is UTF-8 (RFC 8259 section 8.1): json.loads would also guess UTF-16/32 from bytes
        text = raw.decode("utf-8") if raw else "{}"
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(f"the JSON body is nested deeper than {MAX_DEPTH} levels") from None
    if _depth(data) > MAX_DEPTH:
        raise BadRequest(f"the JSON body is nested deeper than {MAX_DEPTH} levels")
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return check_fields(data, spec)


def check_fields(data: dict[str, Any], spec: Spec, prefix: str = "") -> dict[str, Any]:
    """``data`` checked against ``spec`` (BadRequest on unknown fields, missing required ones,
    wrong types; fields given as null are dropped); ``prefix`` names a nested object's fields."""
    unknown = sorted(set(data) - set(spec))
    if unknown:
        fields = [prefix + u for u in unknown]
        raise BadRequest(f"unknown field(s): {', '.join(fields)}; known: {', '.join(spec)}", fields=fields)
    for name, (types, required) in spec.items():
        if name not in data or data[name] is None:
            if required:
                raise BadRequest(f"field {prefix + name!r} is required", field=prefix + name)
            data.pop(name, None)
            continue
        value = data[name]
        allowed = types if isinstance(types, tuple) else (types,)
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            names = " or ".join(_TYPE_NAMES[t] for t in allowed)
            raise BadRequest(f"field {prefix + name!r} must be {names}", field=prefix + name)
    return data


@web.middleware
async def errors_and_metrics(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    state = request.app[STATE]
    t = time.perf_counter()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unknown"
    try:
        response = await handler(request)
    except LibnetError as exc:
        response = error_response(
            _status(exc),
            exc.kind,
            exc.message,
            type=type(exc).__name__,
            **({"errno": exc.errno} if isinstance(exc, KernelError) else {}),
            **exc.ids,
        )
    except web.HTTPRequestEntityTooLarge:
        response = error_response(400, "bad_request", f"request body exceeds {MAX_BODY} bytes")
    except (HttpProcessingError, RequestPayloadError) as exc:  # e.g. a body its Content-Encoding cannot decode
        cause = exc.message if isinstance(exc, HttpProcessingError) else str(exc).replace("\n", " ")
        response = error_response(400, "bad_request", f"unreadable request body: {cause}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(exc.status, "http", exc.reason)
    except Exception as exc:
        gone = request.transport is None or request.transport.is_closing()
        if isinstance(exc, ConnectionResetError) and gone:  # the client went before its body came: nothing done
            log.info(
                "%s %s: the client closed the connection before its request body came", request.method, request.path
            )
            response = error_response(
                400, "bad_request", "the client closed the connection before its request body came"
            )
        else:  # an unexpected failure: report it, keep serving
            log.exception("internal error on %s %s", request.method, request.path)
            response = error_response(500, "internal", f"internal error: {exc}")
    state.metrics.observe(request.method, route, response.status, time.perf_counter() - t)
    return response


def make_app(state: AgentState) -> web.Application:
    """The application with every route."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[errors_and_metrics])
    app[STATE] = state
    ctl = state.controller
    r = app.router

    async def health(request: web.Request) -> web.Response:
        store_ok = True
        try:
            await ctl.repo.local.revision()
        except LibnetError:
            store_ok = False
        members = await _nodes(state)
        cluster = state.cluster_store
        since = getattr(cluster, "degraded_since", None)
        degraded = {}
        if cluster is not None:
            degraded = {
                "cluster_store": "unavailable" if since else "ok",
                **(
                    {
                        "degraded_since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)),
                        "degraded_for_s": round(time.time() - since, 1),
                        "degraded_reason": cluster.last_error[:300],
                    }
                    if since
                    else {}
                ),
            }
        if state.serf is not None:
            degraded["serf_pid"] = state.serf.pid
            degraded["serf"] = state.serf.how
        return _json(
            {
                "status": "ok" if store_ok and not since else "degraded",
                "store": "ok" if store_ok else "unavailable",
                **degraded,
                "node": state.node_name,
                "version": libnet.__version__,
                "uptime_s": round(time.time() - state.started, 1),
                "cluster": state.membership is not None,
                "members_alive": sum(m["status"] == "alive" for m in members),
                "networks": len(await ctl.networks()),
                "sandboxes": len(await ctl.sandboxes()),
                "encryption": await _encryption(ctl),
            },
            200 if store_ok else 503,
        )

    async def version(request: web.Request) -> web.Response:
        return _json(
            {"version": libnet.__version__, "api": "v1", "node": state.node_name, "python": platform.python_version()}
        )

    listing: dict[str, Any] = {"revisions": None, "body": b""}

    async def networks(request: web.Request) -> web.Response:
        # the hottest read: served from the last answer while no store has changed
        revisions = await ctl.repo.revisions()
        if listing["revisions"] != revisions:
            body = _dumps([n.to_data() for n in await ctl.networks()]).encode()
            listing.update(revisions=revisions, body=body)
        return web.Response(body=listing["body"], content_type="application/json")

    async def network_create(request: web.Request) -> web.Response:
        data = await body_of(request, NETWORK_CREATE)
        return _json(await ctl.create_network(data.pop("name"), **data), 201)

    async def network_get(request: web.Request) -> web.Response:
        nw = await ctl.network(request.match_info["ref"])
        eps = await ctl.endpoints(nw.id)
        return _json({**nw.to_data(), "endpoints": [e.to_data() for e in eps]})

    async def network_delete(request: web.Request) -> web.Response:
        await ctl.delete_network(request.match_info["ref"])
        return web.Response(status=204)

    async def connect(request: web.Request) -> web.Response:
        data = await body_of(request, CONNECT)
        sandbox = data.pop("sandbox")
        return _json(await ctl.connect(request.match_info["ref"], sandbox, **data), 201)

    async def disconnect(request: web.Request) -> web.Response:
        data = await body_of(request, DISCONNECT)
        await ctl.disconnect(request.match_info["ref"], data["sandbox"])
        return web.Response(status=204)

    async def endpoints(request: web.Request) -> web.Response:
        unknown = set(request.query) - {"network"}
        if unknown:
            raise BadRequest(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
        return _json(await ctl.endpoints(request.query.get("network")))

    async def endpoint_create(request: web.Request) -> web.Response:
        data = await body_of(request, ENDPOINT_CREATE)
        network, name = data.pop("network"), data.pop("name")
        return _json(await ctl.create_endpoint(network, name, **data), 201)

    async def endpoint_ref(request: web.Request, allowed: frozenset[str] = frozenset({"network"})) -> Endpoint:
        """The endpoint ``{ref}`` names: an id, a unique id prefix, or a name (within
        ``?network=``, or unique among all endpoints)."""
        unknown = set(request.query) - allowed
        if unknown:
            raise BadRequest(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
        ref, network = request.match_info["ref"], request.query.get("network")
        try:
            return await ctl.endpoint(ref, network)
        except NoSuchEndpoint:
            if network is not None:
                raise
        named = [e for e in await ctl.endpoints() if e.name == ref]
        if len(named) > 1:
            raise Conflict(
                f"{len(named)} endpoints are named {ref!r}; give its id, or its network (?network=)",
                endpoint=ref,
                endpoints=[e.id for e in named],
            )
        if not named:
            raise NoSuchEndpoint("no such endpoint", endpoint=ref)
        return named[0]

    async def endpoint_get(request: web.Request) -> web.Response:
        return _json(await endpoint_ref(request))

    async def endpoint_delete(request: web.Request) -> web.Response:
        ep = await endpoint_ref(request, frozenset({"network", "force"}))
        force = request.query.get("force", "0")
        if force not in ("0", "1", "true", "false"):
            raise BadRequest("force must be 1 or 0", force=force)
        await ctl.delete_endpoint(ep.id, force=force in ("1", "true"))  # force: unplugged from its sandbox first
        return web.Response(status=204)

    async def sandboxes(request: web.Request) -> web.Response:
        return _json(await ctl.sandboxes())

    async def sandbox_create(request: web.Request) -> web.Response:
        data = await body_of(request, SANDBOX_CREATE)
        return _json(await ctl.create_sandbox(data.pop("id", None), **data), 201)

    async def sandbox_get(request: web.Request) -> web.Response:
        return _json(await ctl.sandbox(request.match_info["ref"]))

    async def sandbox_delete(request: web.Request) -> web.Response:
        await ctl.delete_sandbox(request.match_info["ref"])
        return web.Response(status=204)

    async def join(request: web.Request) -> web.Response:
        data = await body_of(request, JOIN)
        return _json(await ctl.join(data["endpoint"], request.match_info["ref"]))

    async def leave(request: web.Request) -> web.Response:
        data = await body_of(request, JOIN)
        return _json(await ctl.leave(data["endpoint"], request.match_info["ref"]))

    async def proxies(request: web.Request) -> web.Response:
        return _json(await ctl.proxies())

    async def proxy_create(request: web.Request) -> web.Response:
        data = await body_of(request, PROXY_CREATE)
        px = await ctl.create_proxy(
            data.pop("name"), data.pop("source"), data.pop("target"), data.pop("services"), **data
        )
        return _json(px, 201)

    async def proxy_get(request: web.Request) -> web.Response:
        return _json(await ctl.inspect_proxy(request.match_info["ref"]))

    async def proxy_delete(request: web.Request) -> web.Response:
        await ctl.delete_proxy(request.match_info["ref"])
        return web.Response(status=204)

    async def nodes(request: web.Request) -> web.Response:
        return _json(await _nodes(state))

    async def drain(request: web.Request) -> web.Response:
        if state.drain is None:
            raise BadRequest("this agent cannot drain")
        await state.drain()
        return _json({"node": state.node_name, "drained": True})

    async def node_remove(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if state.membership is not None:
            member = next((n for n in await _nodes(state) if n["name"].lower() == name.lower()), None)
            status = member["status"] if member is not None else ""
            name = member["name"] if member is not None else name
            if status in ("alive", "leaving"):
                raise Conflict(
                    f"node {name} is {status}: only a host that is gone can be removed (libnet node drain on it "
                    "takes a live host out)",
                    node=name,
                )
            watchers = ctl.drivers.cluster_aware()
            if status == "failed" and watchers and not any(d.host_gone(name) for d in watchers):
                raise Conflict(
                    f"node {name} failed, but not for longer than the grace period: it may be restarting "
                    "(its containers keep running); try again once its peers were removed",
                    node=name,
                )
            if status == "failed" and hasattr(state.membership, "client"):
                await state.membership.client.force_leave(name)  # failed -> left: its peers go everywhere
        removed = await ctl.remove_node(name)
        if (forget := overlay_hook(ctl, "forget_node")) is not None:
            await forget(name)  # its WireGuard key goes everywhere
        return _json({"node": name, "endpoints_removed": removed})

    async def topology(request: web.Request) -> web.Response:
        members, networks = await _nodes(state), await ctl.networks()
        endpoints, sandboxes = await ctl.endpoints(), await ctl.sandboxes()
        return _json(build_topology(ctl, state.node_name, members, networks, endpoints, sandboxes))

    async def node_revoke(request: web.Request) -> web.Response:
        """POST revokes the host's WireGuard key, DELETE takes the revocation back."""
        name, revoking = request.match_info["name"], request.method == "POST"
        hook = overlay_hook(ctl, "revoke_node" if revoking else "unrevoke_node")
        if hook is None:
            raise BadRequest("this agent has no overlay driver: there is no WireGuard key to revoke", node=name)
        await hook(name)
        return _json({"node": name, "revoked": revoking})

    async def rotate_keys(request: web.Request) -> web.Response:
        rotate = overlay_hook(ctl, "rotate_keys")
        if rotate is None:
            raise BadRequest("this agent has no overlay driver: there is no WireGuard key to rotate")
        return _json(await rotate())

    async def reconcile(request: web.Request) -> web.Response:
        report = await ctl.reconcile()
        state.metrics.repairs(report)
        return _json(report)

    async def metrics(request: web.Request) -> web.Response:
        body, content_type = await state.metrics.render(ctl, await _nodes(state))
        return web.Response(body=body, headers={"Content-Type": content_type})

    r.add_get("/v1/health", health)
    r.add_get("/v1/version", version)
    r.add_get("/v1/networks", networks)
    r.add_post("/v1/networks", network_create)
    r.add_get("/v1/networks/{ref}", network_get)
    r.add_delete("/v1/networks/{ref}", network_delete)
    r.add_post("/v1/networks/{ref}/connect", connect)
    r.add_post("/v1/networks/{ref}/disconnect", disconnect)
    r.add_get("/v1/endpoints", endpoints)
    r.add_post("/v1/endpoints", endpoint_create)
    r.add_get("/v1/endpoints/{ref}", endpoint_get)
    r.add_delete("/v1/endpoints/{ref}", endpoint_delete)
    r.add_get("/v1/sandboxes", sandboxes)
    r.add_post("/v1/sandboxes", sandbox_create)
    r.add_get("/v1/sandboxes/{ref}", sandbox_get)
    r.add_delete("/v1/sandboxes/{ref}", sandbox_delete)
    r.add_post("/v1/sandboxes/{ref}/join", join)
    r.add_post("/v1/sandboxes/{ref}/leave", leave)
    r.add_get("/v1/proxies", proxies)
    r.add_post("/v1/proxies", proxy_create)
    r.add_get("/v1/proxies/{ref}", proxy_get)
    r.add_delete("/v1/proxies/{ref}", proxy_delete)
    r.add_get("/v1/nodes", nodes)
    r.add_post("/v1/node/drain", drain)
    r.add_delete("/v1/nodes/{name}", node_remove)
    r.add_get("/v1/topology", topology)
    r.add_post("/v1/nodes/{name}/revoke", node_revoke)
    r.add_delete("/v1/nodes/{name}/revoke", node_revoke)
    r.add_post("/v1/encryption/rotate", rotate_keys)
    r.add_post("/v1/reconcile", reconcile)
    r.add_get("/metrics", metrics)
    from agent.cni_api import add_routes  # the CNI plugin's ADD and DEL, one request each

    add_routes(app, ctl)
    return app


async def _nodes(state: AgentState) -> list[dict[str, Any]]:
    if state.membership is None:
        return [{"name": state.node_name, "address": state.advertise or "", "port": 0, "tags": {}, "status": "alive"}]
    try:
        return [dataclasses.asdict(n) for n in await state.membership.members()]
    except LibnetError as exc:
        raise Unavailable(f"cluster membership unavailable: {exc}") from exc
