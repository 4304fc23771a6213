"""The agent's side of the CNI plugin (``libnet/cni/plugin.py``): one request per ADD or DEL.

The exec'd plugin parses the runtime's config and writes the CNI result; the
steps between -- find or create the network, find, replace or create the
container's sandbox, replay or refuse a second ADD, connect; on DEL
disconnect and drop the emptied sandbox -- run here, next to the controller,
so that an ADD or a DEL costs the plugin one round trip, not five.

``POST /v1/cni/add``: ``{container_id, netns, ifname, network, create?,
name?, ipv4?, ipv6?, dns?, dns_search?, dns_options?}`` -> ``{network,
endpoint}``.  ``create`` holds the fields of ``POST /v1/networks`` (without
``name``) used when ``network`` does not exist; without it an unknown network
is a 404 ``NoSuchNetwork``.  ADD again for the same container, network and
interface answers the same endpoint; another interface name is a 409
``InterfaceNameRefused`` (libnet numbers a container's interfaces eth0,
eth1, ...).  A sandbox of the same container id on another namespace is what
a missed DEL left (the container was restarted): it is replaced.

``POST /v1/cni/del``: ``{container_id, network, ifname}`` -> 204, also when
the container, network or endpoint is unknown (CNI's DEL is idempotent); a
sandbox made outside CNI (the API's, the library's, Docker's) is a 409 and
stays.

``POST /v1/cni/ipam/add`` (``libnet-ipam``, ``libnet/cni/ipam.py``):
``{container_id, netns, ifname, network, fallback_name, create?, name?,
ipv4?, ipv6?}`` -> ``{network, endpoint}``.  The pool is a ``null`` network (made
from ``create`` with the label ``libnet.way-out=true``: the main plugin,
such as the reference ``bridge``, gives the containers their way out, so
their DNS forwards); the container becomes a sandbox on the runtime's
namespace (libnet never removes that namespace, and the ``null`` driver
touches nothing in it) holding one endpoint on the pool, named ``name``
(``K8S_POD_NAME``) or ``fallback_name``, whose ``ifname`` is the runtime's:
the embedded DNS serves it at 127.0.0.11 with the names of the pool's other
containers.  ADD again for that interface answers the same endpoint; for
another interface of the container it is a 409 ``InterfaceNameRefused`` (one
interface per pool).  ``POST /v1/cni/ipam/del``: ``{container_id, network, legacy_name?}`` ->
204: the endpoint goes, the sandbox when emptied, and an unjoined endpoint
``legacy_name`` on the pool (what libnet-ipam made before it registered
sandboxes, ``cni-`` and 24 hex digits); unknown is success, a network that is
not a pool a 400.

The calls of one container (ADD, DEL, GC's removals) run one at a time, in arrival order;
other containers' calls run in parallel.

CNI 1.1: ``POST /v1/cni/status`` ``{network, creatable?}`` -> 204 when an
ADD can be served (the store answers, the network exists or ``creatable``),
404 ``NoSuchNetwork`` or 503 otherwise.  ``POST /v1/cni/gc`` ``{network,
valid: [{container_id, ifname}]}`` -> ``{removed: [...]}``: the network's
attachments that CNI ADDs made (sandboxes of origin ``cni``; nothing made
through the library, the API or Docker) and that ``valid`` does not list go
as with DEL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from agent.aioweb import web
from agent.api import NETWORK_CREATE, Spec, body_of, check_fields
from libnet.controller import Controller
from libnet.dns.binding import WAY_OUT_LABEL
from libnet.errors import BadRequest, Conflict, NoSuchNetwork, NoSuchSandbox, NotFound, PoolExhausted
from libnet.model import Endpoint, Network, Sandbox
from libnet.names import check_sandbox_id
from libnet.sandbox_files import check_dns

CNI_ADD: Spec = {
    "container_id": (str, True),
    "netns": (str, True),
    "ifname": (str, True),
    "network": (str, True),
    "create": (dict, False),
    "name": (str, False),
    "ipv4": (str, False),
    "ipv6": (str, False),
    "dns": (list, False),
    "dns_search": (list, False),
    "dns_options": (list, False),
}
CNI_DEL: Spec = {"container_id": (str, True), "network": (str, True), "ifname": (str, True)}
CNI_IPAM_ADD: Spec = {
    "container_id": (str, True),
    "netns": (str, True),
    "ifname": (str, True),
    "network": (str, True),
    "fallback_name": (str, True),
    "create": (dict, False),
    "name": (str, False),
    "ipv4": (str, False),
    "ipv6": (str, False),
}
CNI_IPAM_DEL: Spec = {"container_id": (str, True), "network": (str, True), "legacy_name": (str, False)}
CNI_STATUS: Spec = {"network": (str, True), "creatable": (bool, False)}
CNI_GC: Spec = {"network": (str, True), "valid": (list, True)}
_ATTACHMENT: Spec = {"container_id": (str, True), "ifname": (str, True)}
CNI_ORIGIN = "cni"  # Sandbox.origin of the containers CNI ADDs made: the only ones GC removes
POOL_DRIVER = "null"  # libnet-ipam's pools: addresses only, the runtime's main plugin programs the kernel
POOL_LABELS = {WAY_OUT_LABEL: "true"}  # the main plugin (bridge) gives the containers a way out
log = logging.getLogger("libnet.cni")
_CREATE: Spec = {k: v for k, v in NETWORK_CREATE.items() if k != "name"}
IFNAME_PREFIX = "eth"  # eth0, eth1, ...
LEGACY_NAME = re.compile(r"cni-[0-9a-f]{24}")  # libnet.cni.ipam.endpoint_name


class InterfaceNameRefused(Conflict):
    """The runtime's interface name is not the one libnet gives the container's next interface."""


async def _sandbox(ctl: Controller, cid: str) -> Sandbox | None:
    try:
        return await ctl.sandbox(cid)
    except NoSuchSandbox:
        return None


async def _endpoints(ctl: Controller, sb: Sandbox) -> list[Endpoint]:
    out = []
    for eid in sb.endpoints:
        with suppress(NotFound):
            out.append(await ctl.endpoint(eid))
    return out


#: network names being created by an ADD of this agent: the others wait for it (runtimes run plugins in parallel)
_creating: dict[str, asyncio.Lock] = {}
CREATED_ELSEWHERE_WAIT = 10.0  # seconds an ADD waits for a network another host's ADD is creating


async def _network(ctl: Controller, name: str, create: dict[str, Any] | None) -> Network:
    """The network ``name``; created from ``create`` if it does not exist (None: NoSuchNetwork)."""
    try:
        return await ctl.network(name)
    except NoSuchNetwork:
        if create is None:
            raise
    lock = _creating.setdefault(name, asyncio.Lock())
    try:
        async with lock:
            with suppress(NoSuchNetwork):
                return await ctl.network(name)  # made by the ADD this one waited for
            try:
                return await ctl.create_network(name, **create)
            except Conflict as exc:
                # its name or its pool taken: another host's ADD is creating it (the pool is taken before
                # the network is stored), or a network that exists holds the pool -- that conflict stands
                owner = exc.ids.get("owner")
                if owner:
                    with suppress(NoSuchNetwork):
                        await ctl.network(str(owner))
                        raise
                deadline = time.monotonic() + CREATED_ELSEWHERE_WAIT
                while time.monotonic() < deadline:
                    with suppress(NoSuchNetwork):
                        return await ctl.network(name)
                    await asyncio.sleep(0.1)
                raise exc from None
    finally:
        if not lock.locked():
            _creating.pop(name, None)


async def add(ctl: Controller, data: dict[str, Any]) -> dict[str, Any]:
    """ADD's work (see the module docstring); ``{network, endpoint}`` as stored."""
    name, cid, ifname = data["network"], data["container_id"], data["ifname"]
    create = data.get("create")
    if create is not None:
        create = check_fields(dict(create), _CREATE, "create.")
    # everything the request alone can be refused for, before anything changes (a network made,
    # a restarted container's old sandbox replaced)
    kept, stale = await _plan(ctl, data)
    others = await _endpoints(ctl, kept) if kept is not None else []
    used = {e.ifname for e in others}
    expected = next(f"{IFNAME_PREFIX}{i}" for i in range(len(used) + 1) if f"{IFNAME_PREFIX}{i}" not in used)
    if ifname not in used and ifname != expected:
        raise _not_next(cid, ifname, expected)
    nw = await _network(ctl, name, create)
    for ep in others:
        if ep.network_id == nw.id:
            if ep.ifname == ifname:
                return {"network": nw.to_data(), "endpoint": ep.to_data()}  # ADD again: the same answer
            raise InterfaceNameRefused(
                f"container {cid[:12]} is already on network {nw.name} as {ep.ifname}, not {ifname}",
                sandbox_id=cid,
                network_id=nw.id,
                ifname=ifname,
            )
    if ifname != expected:  # another network's interface name
        raise _not_next(cid, ifname, expected)
    _sb, created = await _container(ctl, data, kept, stale)
    try:
        args = {k: data[k] for k in ("ipv4", "ipv6") if data.get(k)}
        name = await _free_name(ctl, nw, data.get("name"), cid)
        ep = await _connect(ctl, nw, cid, name=name, **args)
    except BaseException:
        if created:
            await _drop_if_empty(ctl, cid)
        raise
    return {"network": nw.to_data(), "endpoint": ep.to_data()}


def _not_next(cid: str, ifname: str, expected: str) -> InterfaceNameRefused:
    return InterfaceNameRefused(
        f"libnet names this container's next interface {expected}, not {ifname}",
        sandbox_id=cid,
        ifname=ifname,
        expected=expected,
    )


async def _plan(ctl: Controller, data: dict[str, Any]) -> tuple[Sandbox | None, Sandbox | None]:
    """``(kept, stale)``: the container's sandbox on the runtime's namespace ``data["netns"]`` (kept),
    or the one on another namespace that a new sandbox replaces (stale: what a missed DEL left, the
    container was restarted) -- a CNI ADD's, or one whose namespace is gone; a live sandbox made
    outside CNI is a ``Conflict``.  A new sandbox's id, DNS settings and namespace are checked here,
    before the stale one goes (``InvalidName``, ``InvalidOption``, ``NotANamespace``, ``Conflict``):
    a refused ADD leaves the container's sandbox as it was, and makes no network."""
    cid = data["container_id"]
    sb = await _sandbox(ctl, cid)
    if sb is not None and sb.netns == data["netns"]:
        return sb, None
    if sb is not None and sb.origin != CNI_ORIGIN and os.path.exists(sb.netns):
        # not a CNI container's leftover: a sandbox of the API's, the library's or Docker's
        raise Conflict(
            f"sandbox {cid[:12]} was made outside CNI (API, library or Docker) on {sb.netns}: "
            f"a CNI ADD does not replace it",
            sandbox_id=cid,
            netns=sb.netns,
        )
    # create_sandbox's checks of the new sandbox, here: before a network is made or the stale sandbox goes
    check_sandbox_id(cid)
    check_dns(data.get("dns"), data.get("dns_search"), data.get("dns_options"))
    try:
        await ctl.check_netns(data["netns"])
    except Conflict as exc:
        if sb is None or exc.ids.get("holder") != cid:  # held by the stale sandbox: freed by the replacement
            raise
    return None, sb


async def _container(
    ctl: Controller, data: dict[str, Any], kept: Sandbox | None, stale: Sandbox | None
) -> tuple[Sandbox, bool]:
    """The container's sandbox as :func:`_plan` found it: ``kept``, or made on the runtime's namespace
    (libnet's record only: the namespace stays the runtime's) once ``stale`` is gone.  Whether it
    was made here."""
    cid = data["container_id"]
    if kept is not None:
        return kept, False
    if stale is not None:
        with suppress(NoSuchSandbox):
            await ctl.delete_sandbox(cid)
    dns = {k: data[k] for k in ("dns", "dns_search", "dns_options") if data.get(k)}
    try:
        # the runtime writes the container's resolv.conf and hosts (from the CNI result): libnet's are not made
        return await ctl.create_sandbox(cid, netns=data["netns"], files=False, origin=CNI_ORIGIN, **dns), True
    except Conflict:
        sb = await _sandbox(ctl, cid)  # a concurrent ADD made it
        if sb is None:
            raise
        return sb, False


async def ipam_add(ctl: Controller, data: dict[str, Any]) -> dict[str, Any]:
    """libnet-ipam's ADD (see the module docstring): ``{network, endpoint}`` as stored."""
    create = data.get("create")
    if create is not None:
        create = check_fields(dict(create), _CREATE, "create.")
        create = {**create, "driver": POOL_DRIVER, "labels": {**(create.get("labels") or {}), **POOL_LABELS}}
    kept, stale = await _plan(ctl, data)  # before anything changes
    nw = await _network(ctl, data["network"], create)
    if nw.driver != POOL_DRIVER:
        raise BadRequest(
            f"network {nw.name} is a {nw.driver} network: libnet-ipam's pools are {POOL_DRIVER} networks "
            "(a libnet bridge or overlay network is the libnet plugin's)",
            network_id=nw.id,
        )
    for ep in await _endpoints(ctl, kept) if kept is not None else []:
        if ep.network_id == nw.id:
            if ep.ifname == data["ifname"]:
                return {"network": nw.to_data(), "endpoint": ep.to_data()}  # ADD again: the same answer
            raise InterfaceNameRefused(
                f"container {data['container_id'][:12]} already holds addresses of pool {nw.name} for "
                f"{ep.ifname}, not {data['ifname']} (one interface per pool)",
                sandbox_id=data["container_id"],
                network_id=nw.id,
                ifname=data["ifname"],
            )
    sb, created = await _container(ctl, data, kept, stale)
    try:
        args = {k: data[k] for k in ("ipv4", "ipv6") if data.get(k)}
        name = await _free_name(ctl, nw, data.get("name"), sb.id) or data["fallback_name"]
        ep = await _connect(ctl, nw, sb.id, name=name, ifname=data["ifname"], **args)
    except BaseException:
        if created:
            await _drop_if_empty(ctl, sb.id)
        raise
    return {"network": nw.to_data(), "endpoint": ep.to_data()}


async def _connect(ctl: Controller, nw: Network, cid: str, **kw: Any) -> Endpoint:
    """``ctl.connect``; when the pool is exhausted, the network's CNI containers whose namespace is
    gone (missed DELs: ``podman rm`` while the agent was down) are removed as their DELs would have,
    and the connect is tried once more.  A named one is freed by the ADD asking for its name
    (:func:`_free_name`); this frees the unnamed ones (podman's default names, ``eager_turing``, are
    not DNS labels), whose addresses nothing else would give back."""
    try:
        return await ctl.connect(nw.id, cid, **kw)
    except PoolExhausted:
        if not await _remove_gone(ctl, nw, cid):
            raise
    return await ctl.connect(nw.id, cid, **kw)


async def _remove_gone(ctl: Controller, nw: Network, cid: str) -> int:
    """Remove the CNI containers (not ``cid``) on ``nw`` whose namespace is gone; how many."""
    removed = 0
    for sb in await ctl.sandboxes():
        if sb.id == cid or sb.origin != CNI_ORIGIN or os.path.exists(sb.netns):
            continue
        if not any(ep.network_id == nw.id for ep in await _endpoints(ctl, sb)):
            continue
        log.warning(
            "CNI: %s's pool is full: container %s's namespace %s is gone (missed DELs): it goes",
            nw.name,
            sb.id[:12],
            sb.netns,
        )
        with suppress(NoSuchSandbox):
            await ctl.delete_sandbox(sb.id)
            removed += 1
    return removed


async def _free_name(ctl: Controller, nw: Network, name: str | None, cid: str) -> str | None:
    """``name`` (``K8S_POD_NAME``) for the container's endpoint on ``nw`` if it can have it, else None
    (libnet's default name: the container starts, unnamed).  Held by the endpoint of a CNI container
    whose namespace is gone, it is what missed DELs left (``podman rm`` while the agent was down,
    then ``podman run --name`` again): that container is removed as its DELs would have (all its
    attachments, on every network), and the name is free.  Held by a live container (two
    Kubernetes namespaces' pods of one name), it stays that container's."""
    if not name:
        return None
    try:
        holder = await ctl.endpoint(name, nw.id)
    except NotFound:
        return name
    sb = await _sandbox(ctl, holder.sandbox_id) if holder.sandbox_id else None
    if sb is None or sb.id == cid or sb.origin != CNI_ORIGIN or os.path.exists(sb.netns):
        log.warning("CNI: %s's name %s on %s is taken by %s: left unnamed", cid[:12], name, nw.name, holder.id[:12])
        return None
    log.warning(
        "CNI: container %s's namespace %s is gone (a missed DEL): it goes, with its %s on %s",
        sb.id[:12],
        sb.netns,
        name,
        nw.name,
    )
    # the whole container: every DEL of it was missed, its other networks' attachments (podman's
    # network connect) included, and nothing else would free those
    with suppress(NoSuchSandbox):
        await ctl.delete_sandbox(sb.id)
    return name


async def _drop_if_empty(ctl: Controller, cid: str) -> None:
    sb = await _sandbox(ctl, cid)
    if sb is not None and not sb.endpoints:
        with suppress(NoSuchSandbox):
            await ctl.delete_sandbox(cid)


async def delete(ctl: Controller, data: dict[str, Any]) -> None:
    """DEL's work: the container's endpoint on the network goes, then its sandbox if emptied.  A
    sandbox no CNI ADD made is a ``Conflict`` (see :func:`_refuse_outside_cni`), nothing removed."""
    cid = data["container_id"]
    sb = await _sandbox(ctl, cid)
    if sb is None:
        return
    _refuse_outside_cni(sb)
    try:
        nw = await ctl.network(data["network"])
    except NoSuchNetwork:
        nw = None
    eps = await _endpoints(ctl, sb)
    ifnames = (data["ifname"], None) if data.get("ifname") else None  # libnet-ipam: libnet named no interface
    ours = [e for e in eps if nw is not None and e.network_id == nw.id and (ifnames is None or e.ifname in ifnames)]
    if ours and len(eps) == len(ours) == len(sb.endpoints):
        with suppress(NoSuchSandbox):
            await ctl.delete_sandbox(cid)  # the container's only interface: the sandbox goes with it
        return
    if ours and nw is not None:
        with suppress(NotFound):
            await ctl.disconnect(nw.id, cid)
    await _drop_if_empty(ctl, cid)


def _refuse_outside_cni(sb: Sandbox) -> None:
    """``Conflict`` for a sandbox no CNI ADD made: one on a namespace libnet made (the API's, the
    library's, a Docker Join's staging sandbox: a CNI ADD takes the runtime's namespace) or of
    another origin.  (A sandbox of no origin on a namespace of someone else's may be what a CNI ADD
    made before sandboxes carried their origin: DEL still removes those.)"""
    if sb.owned or sb.origin not in ("", CNI_ORIGIN):
        raise Conflict(
            f"sandbox {sb.id[:12]} was made outside CNI (API, library or Docker): a CNI DEL does not remove it",
            sandbox_id=sb.id,
            origin=sb.origin or None,
        )


async def ipam_delete(ctl: Controller, data: dict[str, Any]) -> None:
    """libnet-ipam's DEL (see the module docstring), checked before anything goes: the network, if it
    exists, is a pool (a ``null`` network; ``BadRequest`` otherwise, as for ADD), ``legacy_name`` is
    a name the libnet-ipam of before made (``cni-`` and 24 hex digits, :func:`libnet.cni.ipam.endpoint_name`)."""
    legacy = data.get("legacy_name")
    if legacy and LEGACY_NAME.fullmatch(legacy) is None:
        raise BadRequest(
            f"legacy_name {legacy[:80]!r} is not a name libnet-ipam made (cni- and 24 hex digits)",
            legacy_name=legacy[:80],
        )
    with suppress(NoSuchNetwork):
        nw = await ctl.network(data["network"])
        if nw.driver != POOL_DRIVER:
            raise BadRequest(
                f"network {nw.name} is a {nw.driver} network: libnet-ipam's pools are {POOL_DRIVER} networks",
                network_id=nw.id,
            )
    await delete(ctl, {**data, "ifname": None})
    if legacy:
        await _delete_legacy(ctl, data["network"], legacy)


async def status(ctl: Controller, data: dict[str, Any]) -> None:
    """CNI STATUS: whether an ADD on ``network`` can be served now.  The store answers (else
    ``Unavailable``) and the network exists, or ``creatable`` (the config says how to make it;
    else ``NoSuchNetwork``)."""
    await ctl.repo.local.revision()
    try:
        await ctl.network(data["network"])
    except NoSuchNetwork:
        if not data.get("creatable"):
            raise


async def gc(ctl: Controller, data: dict[str, Any]) -> list[dict[str, str]]:
    """CNI GC: remove the attachments to ``network`` that CNI ADDs made (sandboxes of origin
    ``cni``) and that are not in ``valid`` (``[{container_id, ifname}]``); the sandboxes emptied go
    too (never the runtime's namespace: libnet did not make it).  Attachments still being made
    (``connecting``) stay.  An unknown network has nothing to collect.  The removed ones, as
    ``[{container_id, ifname}]``."""
    valid = set()
    for item in data["valid"]:
        item = check_fields(dict(item) if isinstance(item, dict) else {}, _ATTACHMENT, "valid[].")
        valid.add((item["container_id"], item["ifname"]))
    try:
        nw = await ctl.network(data["network"])
    except NoSuchNetwork:
        return []
    removed = []
    for sb in await ctl.sandboxes():
        if sb.origin != CNI_ORIGIN:
            continue
        for ep in await _endpoints(ctl, sb):
            if ep.network_id != nw.id or ep.connecting or (sb.id, ep.ifname) in valid:
                continue
            async with one_at_a_time(sb.id):
                await delete(ctl, {"container_id": sb.id, "network": nw.id, "ifname": ep.ifname or ""})
            removed.append({"container_id": sb.id, "ifname": ep.ifname or ""})
    return removed


async def _delete_legacy(ctl: Controller, network: str, name: str) -> None:
    """An endpoint the libnet-ipam of before names (no sandbox: addresses only, named ``cni-`` + a
    hash of container id and interface) made for this container: released like the new ones."""
    try:
        ep = await ctl.endpoint(name, network)
    except NotFound:
        return
    if ep.sandbox_id is None:
        with suppress(NotFound):
            await ctl.delete_endpoint(ep.id)


#: per container id: its lock and how many calls hold or wait for it (the entry goes with the last)
_containers: dict[str, tuple[asyncio.Lock, list[int]]] = {}


@asynccontextmanager
async def one_at_a_time(cid: str) -> AsyncIterator[None]:
    """Serialise the CNI calls of one container: a runtime retrying, or two callers, may run ADDs
    and DELs of one container at once, and each must see the other's work whole (an ADD racing
    another found no endpoint, connected too and failed with the name in use).  Other containers'
    calls run in parallel."""
    lock, users = _containers.setdefault(cid, (asyncio.Lock(), [0]))
    users[0] += 1
    try:
        async with lock:
            yield
    finally:
        users[0] -= 1
        if not users[0]:
            _containers.pop(cid, None)


def add_routes(app: web.Application, ctl: Controller) -> None:
    """``POST /v1/cni/add`` and ``POST /v1/cni/del`` on ``app`` (the agent's API)."""

    async def cni_add(request: web.Request) -> web.Response:
        data = await body_of(request, CNI_ADD)
        async with one_at_a_time(data["container_id"]):
            return web.json_response(await add(ctl, data))

    async def cni_del(request: web.Request) -> web.Response:
        data = await body_of(request, CNI_DEL)
        async with one_at_a_time(data["container_id"]):
            await delete(ctl, data)
        return web.Response(status=204)

    async def cni_ipam_add(request: web.Request) -> web.Response:
        data = await body_of(request, CNI_IPAM_ADD)
        async with one_at_a_time(data["container_id"]):
            return web.json_response(await ipam_add(ctl, data))

    async def cni_ipam_del(request: web.Request) -> web.Response:
        data = await body_of(request, CNI_IPAM_DEL)
        async with one_at_a_time(data["container_id"]):
            await ipam_delete(ctl, data)
        return web.Response(status=204)

    async def cni_status(request: web.Request) -> web.Response:
        await status(ctl, await body_of(request, CNI_STATUS))
        return web.Response(status=204)

    async def cni_gc(request: web.Request) -> web.Response:
        return web.json_response({"removed": await gc(ctl, await body_of(request, CNI_GC))})

    app.router.add_post("/v1/cni/status", cni_status)
    app.router.add_post("/v1/cni/gc", cni_gc)
    app.router.add_post("/v1/cni/add", cni_add)
    app.router.add_post("/v1/cni/del", cni_del)
    app.router.add_post("/v1/cni/ipam/add", cni_ipam_add)
    app.router.add_post("/v1/cni/ipam/del", cni_ipam_del)
