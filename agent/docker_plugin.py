"""Docker's remote network driver and IPAM driver protocols, served by the agent.

dockerd (20.10) finds the plugin by its socket, ``/run/docker/plugins/libnet.sock``
by default (``--docker-plugin-socket``), and drives it with HTTP POSTs
(``shared/reference/docker-plugins.md``).  Every call maps onto the controller
and IPAM; this module keeps only the mapping from Docker's ids to libnet's,
and keeps it in libnet's local store (``libnet/v1/docker/``): dockerd does not
replay ``CreateNetwork`` after its restart, and the agent may restart under a
running dockerd.

Driver name ``libnet`` (one name, both drivers of libnet):

- ``docker network create -d libnet`` makes a libnet **bridge** network with
  the subnets Docker's IPAM chose (``--subnet``, ``--gateway``, ``--ipv6``,
  ``--aux-address``, ``--internal``);
- ``-o libnet.driver=overlay -o libnet.name=NAME`` makes (or, on another
  host, attaches to) the libnet **overlay** ``NAME``.  Docker does not tell a
  plugin the network's name, so the libnet name is that option (default for
  bridges: ``docker-<id12>``).  The plugin reports local scope to Docker
  (dockerd 20.10 refuses global scope without swarm); libnet's own cluster
  makes the overlay multi-host: the same ``libnet.name`` (and ``--subnet``)
  on each host's Docker is the same overlay, same subnet, same VNI.
- ``-o mtu=N`` (or ``com.docker.network.driver.mtu``) and the other options
  of the libnet driver are passed on; libnet checks them.

Join: during ``docker run`` the container's namespace does not exist yet, so
the endpoint is joined by the controller to a *staging* sandbox (a namespace
of libnet's own, id = Docker's endpoint id), and its interface is then handed
over to this namespace (down, renamed ``SrcName``) for Docker to move in and
address.  Gateway rule: a non-internal bridge network returns its gateways
(the default route is libnet's); an overlay returns none, so Docker attaches
the container to its ``docker_gwbridge`` for the way out, as Docker's own
overlay does; an internal network returns none and Docker adds no way out.

IPAM (``--ipam-driver libnet``): pools and addresses come from libnet's IPAM
(spaces ``local``/``global``), held for Docker (no owner libnet's reconcile
would free them for).  The libnet network driver keeps its own addresses, so
it is used with Docker's default IPAM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

from agent import docker_sync
from agent.aioweb import web
from agent.docker_ipam import DockerIpam
from agent.docker_names import DockerNames
from libnet.controller import Controller
from libnet.dns.server import DnsServer
from libnet.drivers.bridge_model import HANDOVER_PREFIX
from libnet.errors import (
    AddressInUse,
    BadRequest,
    Conflict,
    InvalidName,
    InvalidOption,
    KernelError,
    LibnetError,
    NameInUse,
    NotFound,
)
from libnet.model import PROXY_MAC_PREFIX, Endpoint, Network, is_proxy_mac
from libnet.validation import check_int

log = logging.getLogger("libnet.agent.docker")

DEFAULT_SOCKET = "/run/docker/plugins/libnet.sock"
CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"
PREFIX = "libnet/v1/docker/"
GENERIC = "com.docker.network.generic"
ENABLE_IPV6 = "com.docker.network.enable_ipv6"
INTERNAL = "com.docker.network.internal"
PORTMAP = "com.docker.network.portmap"
MTU = "com.docker.network.driver.mtu"
OPT_DRIVER = "libnet.driver"
OPT_NAME = "libnet.name"
DRIVERS = ("bridge", "overlay")
#: Docker's own IPAM's address spaces (libnet's are "local"/"global")
DOCKER_SPACES = ("LocalDefault", "GlobalDefault", "")
PROTOCOLS = {6: "tcp", 17: "udp"}
#: the origin of the staging sandboxes a Join makes (``Sandbox.origin``): only those are the plugin's to remove
STAGING_ORIGIN = "docker"

#: hands a joined interface over: (staging netns path, ifname there, new name) -> moved into this namespace
Handover = Callable[[str, str, str], Awaitable[None]]


async def kernel_handover(netns: str, ifname: str, new_name: str) -> None:
    """Take ``ifname`` out of the staging namespace into this process's network
    namespace (dockerd's), down and renamed ``new_name``: Docker moves it on.

    This namespace is named here, on the event loop's thread, by a descriptor
    (:func:`libnet.kernel.netns.open_own`): ``/proc/<pid>/ns/net`` opened on the
    worker thread named the namespace the main thread was in at that moment, and
    the main thread (the event loop's) is inside another sandbox for a moment
    whenever it makes sockets there (another join's) -- the interface then landed
    there and Docker's ``docker run`` failed "Link not found".  So the move is
    checked too: an interface that is not here fails the Join, saying why."""
    from libnet.kernel import netns as kernel_netns
    from libnet.kernel.netlink import Netlink

    home = kernel_netns.open_own()
    owner = threading.Lock()  # who closes ``home``: the move once it started, else a cancelled caller

    def move() -> None:
        if not owner.acquire(blocking=False):
            return  # the caller was cancelled before this started, and closed it
        try:
            with Netlink(netns) as nl:
                nl.set_down(ifname)
                nl.move_to_ns(ifname, home, new_name=new_name)
        finally:
            os.close(home)  # here, not in the caller: a cancelled caller must not close it under the move

    try:
        await asyncio.to_thread(move)
    except BaseException:
        if owner.acquire(blocking=False):  # the move never started (and now never will)
            os.close(home)
        raise
    try:
        socket.if_nametoindex(new_name)  # an ioctl on this thread's socket: in this namespace
    except OSError:
        raise KernelError(
            f"interface {ifname} of staging namespace {netns} was moved out but is not in the agent's "
            f"namespace as {new_name}: Docker would not find it",
            ifname=new_name,
            netns=netns,
        ) from None


def src_name(endpoint_id: str) -> str:
    """The name of the interface a Join hands to Docker (15 characters at most)."""
    return HANDOVER_PREFIX + endpoint_id[: 14 - len(HANDOVER_PREFIX)]


def _ip(cidr: str | None) -> str | None:
    return cidr.split("/", 1)[0] if cidr else None


class PluginError(Exception):
    """A refusal of the plugin itself (not from libnet), answered like a LibnetError."""


class DockerPlugin:
    """The NetworkDriver calls, mapped onto the controller."""

    def __init__(
        self, controller: Controller, handover: Handover = kernel_handover, names: DockerNames | None = None
    ) -> None:
        self.ctl = controller
        self.handover = handover
        self.names = names or DockerNames(None)
        self.dns_servers: dict[str, DnsServer] = {}  # overlay network id -> libnet's DNS on its gateway
        self.lock = asyncio.Lock()  # Docker's calls for one network are ordered; the mapping is read-modify-write

    # --- the id mapping (in libnet's local store) -------------------------------

    @property
    def store(self) -> Any:
        return self.ctl.repo.store("local")

    async def _get(self, kind: str, docker_id: str) -> dict[str, Any] | None:
        try:
            pair = await self.store.get(f"{PREFIX}{kind}/{docker_id}")
        except NotFound:
            return None
        return json.loads(pair.value)

    async def _put(self, kind: str, docker_id: str, value: dict[str, Any]) -> None:
        await self.store.put(f"{PREFIX}{kind}/{docker_id}", json.dumps(value).encode())

    async def _drop(self, kind: str, docker_id: str) -> None:
        with suppress(NotFound):
            await self.store.delete(f"{PREFIX}{kind}/{docker_id}")

    async def _network(self, nid: str) -> Network:
        m = await self._get("networks", _id(nid, "NetworkID"))
        if m is None:
            raise NotFound(f"network {nid[:12]} is not a libnet network known to this agent", docker_network=nid)
        try:
            return await self.ctl.network(m["network"])
        except NotFound:
            raise NotFound(
                f"the libnet network of Docker network {nid[:12]} is gone (removed with `libnet network rm`?): "
                "remove the Docker network (`docker network rm`) and create it again",
                docker_network=nid,
                network_id=m["network"],
            ) from None

    async def _endpoint(self, eid: str) -> tuple[dict[str, Any], Endpoint]:
        m = await self._get("endpoints", _id(eid, "EndpointID"))
        if m is None:
            raise NotFound(f"endpoint {eid[:12]} is not a libnet endpoint known to this agent", docker_endpoint=eid)
        return m, await self.ctl.endpoint(m["endpoint"])

    # --- NetworkDriver ------------------------------------------------------------

    async def get_capabilities(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"Scope": "local", "ConnectivityScope": "local"}

    async def create_network(self, req: dict[str, Any]) -> dict[str, Any]:
        nid = _id(req.get("NetworkID"), "NetworkID")
        opts = _obj(req.get("Options"), "Options")
        generic = dict(_obj(opts.get(GENERIC), f"Options.{GENERIC}"))
        driver = str(generic.pop(OPT_DRIVER, "bridge"))
        if driver not in DRIVERS:
            raise InvalidOption(f"-o {OPT_DRIVER} must be one of {', '.join(DRIVERS)}, not {driver!r}", option=driver)
        name = str(generic.pop(OPT_NAME, "") or f"docker-{nid[:12]}")
        if MTU in generic:
            if "mtu" in generic and str(generic["mtu"]) != str(generic[MTU]):
                raise InvalidOption(
                    f"-o mtu={generic['mtu']} and -o {MTU}={generic[MTU]} disagree: give one", option="mtu"
                )
            generic["mtu"] = generic.pop(MTU)
        if "mtu" in generic:
            try:
                generic["mtu"] = int(generic["mtu"])
            except (TypeError, ValueError):
                raise InvalidOption(f"mtu must be a number, not {generic['mtu']!r}", option="mtu") from None
        if "internal" in generic:  # Docker would show the network as not internal
            raise InvalidOption("use `docker network create --internal`, not -o internal", option="internal")
        internal = _flag(opts.get(INTERNAL))
        v4, v6 = _family(req.get("IPv4Data"), "IPv4"), _family(req.get("IPv6Data"), "IPv6")
        ipv6 = bool(v6) or _flag(opts.get(ENABLE_IPV6))
        async with self.lock:
            if await self._get("networks", nid) is not None:
                return {}  # a replay: it exists
            nw = await self._existing_overlay(name, driver, v4, v6)
            created = nw is None
            if nw is None:
                aux = {**(v4 or {}).get("AuxAddresses", {}), **(v6 or {}).get("AuxAddresses", {})}
                nw = await self.ctl.create_network(
                    name,
                    driver,
                    ipv4_subnet=v4.get("Pool") if v4 else None,
                    ipv4_gateway=_ip(v4.get("Gateway")) if v4 else None,
                    ipv6=ipv6,
                    ipv6_subnet=v6.get("Pool") if v6 else None,
                    ipv6_gateway=_ip(v6.get("Gateway")) if v6 else None,
                    internal=internal,
                    options=generic,
                    labels={"docker.network": nid},
                    aux_addresses={k: str(_ip(v)) for k, v in aux.items()},
                )
            await self._put("networks", nid, {"network": nw.id, "created": created, "at": time.time()})
        log.info("docker network %s -> libnet %s network %s (%s)", nid[:12], driver, nw.name, nw.id[:12])
        return {}

    async def _existing_overlay(
        self, name: str, driver: str, v4: dict[str, Any] | None, v6: dict[str, Any] | None
    ) -> Network | None:
        """The overlay ``name`` another host made, if any (then this host attaches to it)."""
        if driver != "overlay":
            return None
        try:
            nw = await self.ctl.network(name)
        except NotFound:
            return None
        if nw.driver != "overlay":
            raise Conflict(f"libnet network {name} exists and is a {nw.driver} network", network_id=nw.id)
        for want, have, fam in ((v4, nw.ipv4_subnet, "IPv4"), (v6, nw.ipv6_subnet, "IPv6")):
            if want and want.get("Pool") != have:
                raise Conflict(
                    f"libnet overlay {name} has {fam} subnet {have}, not {want.get('Pool')}: "
                    f"give the same --subnet on every host",
                    network_id=nw.id,
                )
        return nw

    async def delete_network(self, req: dict[str, Any]) -> dict[str, Any]:
        nid = _id(req.get("NetworkID"), "NetworkID")
        async with self.lock:
            m = await self._get("networks", nid)
            if m is None:
                return {}  # gone already
            await self.forget_network(nid, m)
        return {}

    async def forget_network(self, nid: str, m: dict[str, Any]) -> None:
        """Delete the libnet network behind Docker network ``nid`` (mapping ``m``) and the mapping; an
        overlay other hosts still use stays for them.  Caller holds :attr:`lock`."""
        try:
            await self.ctl.delete_network(m["network"])
        except NotFound:
            pass
        except Conflict:
            nw = await self.ctl.network(m["network"])
            if nw.driver != "overlay" or await self._local_endpoints(nw.id):
                raise
            # endpoints of other hosts: the overlay stays for them; this host lets go
            log.info("docker network %s: libnet overlay %s kept for other hosts", nid[:12], nw.name)
        await self._drop("networks", nid)

    async def _local_endpoints(self, network_id: str) -> list[Endpoint]:
        node = self.ctl.config.node_name
        return [e for e in await self.ctl.endpoints(network_id) if e.node == node]

    async def create_endpoint(self, req: dict[str, Any]) -> dict[str, Any]:
        nid, eid = _id(req.get("NetworkID"), "NetworkID"), _id(req.get("EndpointID"), "EndpointID")
        iface = _obj(req.get("Interface"), "Interface")
        opts = _obj(req.get("Options"), "Options")
        nw = await self._network(nid)
        if await self._get("endpoints", eid) is not None:
            raise Conflict(f"endpoint {eid[:12]} exists", docker_endpoint=eid)
        mac = _str(iface.get("MacAddress"), "Interface.MacAddress")
        if mac and nw.driver == "overlay":
            raise InvalidOption("libnet overlay endpoints take their MAC address from their IPv4 address", mac=mac)
        if mac and is_proxy_mac(mac):  # the host's bridges tell frames to a proxy by it
            raise InvalidOption(f"MAC addresses starting {PROXY_MAC_PREFIX} are libnet proxies'", mac=mac)
        # Docker's MAC (--mac-address) is the interface's from the start, and the one libnet reports
        args = {
            "ipv4": _ip(_str(iface.get("Address"), "Interface.Address")),
            "ipv6": _ip(_str(iface.get("AddressIPv6"), "Interface.AddressIPv6")),
            "mac": mac or None,
        }
        # checked here so a bad -p fails the start; published by ProgramExternalConnectivity, which Docker
        # sends only for the endpoint that gives the container its way out (one network, not each)
        _ports(opts.get(PORTMAP))
        name, aliases = f"d-{eid[:12]}", []
        ident = await self.names.identify(nid, args["ipv4"]) if nw.driver == "overlay" else None
        if ident is not None:
            name, aliases = ident[0], [a for a in ident[1] if a != ident[0]]
        for attempt in range(3):  # an IPv4 and an IPv6 address of forgotten endpoints, then for real
            try:
                try:
                    ep = await self.ctl.create_endpoint(nw.id, name, aliases=aliases, **args)
                except (NameInUse, InvalidName) as exc:  # e.g. that name on another host: Docker's DNS only
                    if ident is None:
                        raise
                    log.info("docker endpoint %s: libnet name %s not taken: %s", eid[:12], name, exc)
                    name, aliases, ident = f"d-{eid[:12]}", [], None
                    ep = await self.ctl.create_endpoint(nw.id, name, **args)
                break
            except AddressInUse as exc:
                taken = _ip(str(exc.ids.get("address") or "")) or ""
                if (
                    attempt == 2
                    or not taken
                    or taken not in args.values()
                    or not await self._drop_stale(nid, eid, taken)
                ):
                    raise
        try:
            await self._put(
                "endpoints", eid, {"endpoint": ep.id, "network": nw.id, "docker_network": nid, "at": time.time()}
            )
        except BaseException:
            await self.ctl.delete_endpoint(ep.id)
            raise
        answer: dict[str, Any] = {}
        if not mac:
            answer["MacAddress"] = ep.mac
        if not iface.get("Address") and ep.ipv4:
            answer["Address"] = ep.ipv4
        if not iface.get("AddressIPv6") and ep.ipv6:
            answer["AddressIPv6"] = ep.ipv6
        return {"Interface": answer}

    async def _drop_stale(self, nid: str, eid: str, address: str) -> bool:
        """Docker's IPAM gave an address a Docker endpoint of this host still holds in libnet: Docker
        forgot that endpoint without a Leave/DeleteEndpoint (dockerd was killed).  Docker's IPAM is the
        authority for these networks' addresses, so the stale endpoint goes.  Another host's endpoint
        (an overlay) or one the plugin did not make is never touched.  Whether one went."""
        async with self.lock:  # not while agent.docker_sync removes the same endpoint
            return await self._drop_stale_locked(nid, eid, address)

    async def _drop_stale_locked(self, nid: str, eid: str, address: str) -> bool:
        node, dropped = self.ctl.config.node_name, False
        for pair in await self.store.list(f"{PREFIX}endpoints/"):
            other = pair.key.rsplit("/", 1)[-1]
            m = json.loads(pair.value)
            if other == eid or m.get("docker_network") != nid:
                continue
            try:
                ep = await self.ctl.endpoint(m["endpoint"])
            except NotFound:
                continue
            held = {"ipv4": _ip(ep.ipv4), "ipv6": _ip(ep.ipv6)}
            if ep.node != node or address not in held.values():
                continue
            log.warning(
                "docker endpoint %s: address %s is Docker's again; removing libnet endpoint %s of docker "
                "endpoint %s, which Docker forgot (a killed dockerd)",
                eid[:12],
                address,
                ep.id[:12],
                other[:12],
            )
            await self._unstage(other, m)
            with suppress(NotFound):
                await self.ctl.delete_endpoint(ep.id, force=True)
            await self._drop("endpoints", other)
            dropped = True
        return dropped

    async def endpoint_oper_info(self, req: dict[str, Any]) -> dict[str, Any]:
        _m, ep = await self._endpoint(req.get("EndpointID"))
        return {"Value": {"libnet.endpoint": ep.id, "libnet.network": ep.network_id, "mac": ep.mac}}

    async def delete_endpoint(self, req: dict[str, Any]) -> dict[str, Any]:
        eid = _id(req.get("EndpointID"), "EndpointID")
        m = await self._get("endpoints", eid)
        if m is None:
            return {}
        await self.forget_endpoint(eid, m)
        return {}

    async def forget_endpoint(self, eid: str, m: dict[str, Any]) -> None:
        """Delete the libnet endpoint behind Docker endpoint ``eid`` (mapping ``m``), its staging sandbox
        and the mapping; each part already gone is fine."""
        await self._stop_dns_if_last(m)
        await self._unstage(eid, m)
        with suppress(NotFound):
            await self.ctl.delete_endpoint(m["endpoint"], force=True)
        await self._drop("endpoints", eid)

    async def daemon(self) -> str | None:
        """The id of the dockerd that uses this plugin, as :mod:`agent.docker_sync` recorded it."""
        m = await self._get("daemon", "id")
        return str(m["id"]) if m else None

    async def set_daemon(self, daemon_id: str) -> None:
        await self._put("daemon", "id", {"id": daemon_id, "at": time.time()})

    async def mappings(self, kind: str) -> dict[str, dict[str, Any]]:
        """Docker id -> mapping, of ``kind`` ``networks`` or ``endpoints``."""
        return {p.key.rsplit("/", 1)[-1]: json.loads(p.value) for p in await self.store.list(f"{PREFIX}{kind}/")}

    async def join(self, req: dict[str, Any]) -> dict[str, Any]:
        eid = _id(req.get("EndpointID"), "EndpointID")
        m, ep = await self._endpoint(eid)
        nw = await self.ctl.network(ep.network_id)
        if ep.sandbox_id:
            raise Conflict(f"endpoint {eid[:12]} is joined already", docker_endpoint=eid)
        src = src_name(eid)
        # staging: the container's namespace may not exist yet (docker run); Docker moves the interface in.
        # No resolv.conf/hosts files: the container's are Docker's, a staging sandbox's would never be read
        try:
            sb = await self.ctl.create_sandbox(eid, files=False, origin=STAGING_ORIGIN)
        except Conflict:
            if not await self.ctl.repo.has_sandbox(eid):
                raise
            raise Conflict(
                f"a libnet sandbox with the id of Docker endpoint {eid[:12]} exists that the Docker plugin did not "
                "make: it is left alone; remove it (`libnet sandbox rm`) or connect the container again",
                docker_endpoint=eid,
            ) from None
        try:
            joined = await self.ctl.join(ep.id, sb.id)
            await self.handover(sb.netns, joined.ifname or "eth0", src)
        except BaseException:
            await self._unstage(eid, {**m, "sandbox": sb.id})
            raise
        await self._put("endpoints", eid, {**m, "sandbox": sb.id})
        if nw.driver == "overlay":
            await self._serve_dns(nw)
        answer: dict[str, Any] = {"InterfaceName": {"SrcName": src, "DstPrefix": "eth"}, "StaticRoutes": []}
        if nw.driver == "bridge" and not nw.internal:  # the gateway rule (module docstring)
            if nw.ipv4_gateway and joined.ipv4:
                answer["Gateway"] = _ip(nw.ipv4_gateway)
            if nw.ipv6_gateway and joined.ipv6:
                answer["GatewayIPv6"] = _ip(nw.ipv6_gateway)
        if nw.internal:
            answer["DisableGatewayService"] = True
        return answer

    async def leave(self, req: dict[str, Any]) -> dict[str, Any]:
        eid = _id(req.get("EndpointID"), "EndpointID")
        m = await self._get("endpoints", eid)
        if m is None:
            return {}
        await self._stop_dns_if_last(m)
        await self._unstage(eid, m)
        await self._put("endpoints", eid, {k: v for k, v in m.items() if k != "sandbox"})
        return {}

    # --- libnet's DNS for names across hosts (overlays) ----------------------------

    async def _serve_dns(self, nw: Network) -> None:
        """libnet's DNS on the overlay's gateway address, inside the overlay's namespace on this host:
        containers given ``--dns <gateway>`` get names of every host's containers on the overlay
        (Docker's 127.0.0.11 answers its own host's and forwards the rest there)."""
        dns = self.ctl.dns
        if dns is None or nw.id in self.dns_servers or not nw.ipv4_gateway:
            return
        drv: Any = self.ctl.driver(nw.driver)
        vnis, ns_name = getattr(drv, "vnis", None), getattr(drv, "ns_name", None)
        vni = vnis.cached(nw.id) if vnis is not None else None
        if vni is None or ns_name is None:
            return
        server = DnsServer(dns.resolver, dns.forwarder, str(_ip(nw.ipv4_gateway)), 53, _ip(nw.ipv6_gateway))
        try:
            await server.attach(f"docker-{nw.id[:12]}", ns_name(vni), frozenset({nw.id}))
        except (LibnetError, OSError) as exc:  # names across hosts only; the network works
            log.warning("overlay %s: libnet's DNS not served on its gateway: %s", nw.name, exc)
            return
        self.dns_servers[nw.id] = server
        # its answer cache goes whenever the records change (a removed container's name with it)
        dns.records.listeners.append(server.invalidate)

    async def restore_dns(self) -> None:
        """After an agent restart: libnet's DNS again on the overlays this host's Docker containers are on."""
        seen = set()
        for pair in await self.store.list(f"{PREFIX}endpoints/"):
            m = json.loads(pair.value)
            if not m.get("sandbox") or m.get("network") in seen:
                continue
            seen.add(m.get("network"))
            try:
                nw = await self.ctl.network(m["network"])
            except NotFound:
                continue
            if nw.driver == "overlay":
                await self._serve_dns(nw)

    async def close(self) -> None:
        for nid, server in list(self.dns_servers.items()):
            await self._stop_dns(nid, server)
        self.dns_servers.clear()

    async def _stop_dns_if_last(self, m: dict[str, Any]) -> None:
        """Close the overlay's DNS listener before this host's last endpoint on it leaves (the overlay's
        namespace goes with that leave; a socket must not keep it alive)."""
        server = self.dns_servers.get(m.get("network", ""))
        if server is None:
            return
        node = self.ctl.config.node_name
        joined = [e for e in await self.ctl.endpoints(m["network"]) if e.node == node and e.sandbox_id]
        if [e.id for e in joined] in ([], [m["endpoint"]]):
            del self.dns_servers[m["network"]]
            await self._stop_dns(m["network"], server)

    async def _stop_dns(self, network_id: str, server: DnsServer) -> None:
        dns = self.ctl.dns
        if dns is not None:
            with suppress(ValueError):
                dns.records.listeners.remove(server.invalidate)
        await server.detach(f"docker-{network_id[:12]}")

    async def _unstage(self, eid: str, m: dict[str, Any]) -> None:
        """Leave the staging sandbox and remove it; gone is fine.  A sandbox is removed only
        when it is the plugin's: the one its mapping records, or one of Docker endpoint ``eid``'s
        id that a Join made (origin :data:`STAGING_ORIGIN`: a kill between making it and recording
        it) -- never a sandbox of libnet's own API that happens to carry that id (or starts with it)."""
        sid = m.get("sandbox") or eid
        with suppress(NotFound):
            ep = await self.ctl.endpoint(m["endpoint"])
            if ep.sandbox_id:
                await self.ctl.leave(ep.id)
        if not await self.ctl.repo.has_sandbox(sid):  # exactly that id: never one it is a prefix of
            return
        with suppress(NotFound):
            if not m.get("sandbox") and (await self.ctl.sandbox(sid)).origin != STAGING_ORIGIN:
                return
            await self.ctl.delete_sandbox(sid)

    async def program_external_connectivity(self, req: dict[str, Any]) -> dict[str, Any]:
        """Publish the container's ports (``-p``) on this endpoint: Docker calls this for the endpoint that
        carries the container's default route only, so a container on several networks publishes once."""
        _m, ep = await self._endpoint(req.get("EndpointID"))
        await self.ctl.publish(ep.id, _ports(_obj(req.get("Options"), "Options").get(PORTMAP)))
        return {}

    async def revoke_external_connectivity(self, req: dict[str, Any]) -> dict[str, Any]:
        """Withdraw the ports (another endpoint becomes the way out, or the container stops)."""
        m = await self._get("endpoints", _id(req.get("EndpointID"), "EndpointID"))
        if m is not None:
            with suppress(NotFound):
                await self.ctl.publish(m["endpoint"], [])
        return {}

    async def nothing(self, req: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def allocate_network(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"Options": {}}  # swarm managers only; libnet's own cluster does the multi-host part


def _id(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 128 or not value.isalnum():
        raise BadRequest(f"{field} must be Docker's id (letters and digits)", field=field)
    return value


def _obj(value: Any, field: str) -> dict[str, Any]:
    """A JSON object field of a request (missing or null: empty); ``BadRequest`` for anything else."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{field} must be an object", field=field)
    return value


def _str(value: Any, field: str) -> str:
    """A string field of a request (missing or null: empty); ``BadRequest`` for anything else."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string", field=field)
    return value


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes", "on")
    return bool(value)


def _family(data: Any, fam: str) -> dict[str, Any] | None:
    """Docker's ``IPv4Data``/``IPv6Data`` (one subnet at most): ``Pool``, ``Gateway`` (strings,
    None when empty) and ``AuxAddresses`` (name -> string), each checked (``BadRequest`` naming it)."""
    if not data:
        return None
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise BadRequest(f"{fam}Data must be a list of objects")
    if len(data) > 1:
        raise InvalidOption(f"a libnet network has one {fam} subnet; Docker gave {len(data)}")
    if data[0].get("AddressSpace", "") not in DOCKER_SPACES:
        raise InvalidOption(
            "the libnet network driver keeps its own addresses: use it with Docker's default IPAM "
            "(leave out --ipam-driver); libnet's IPAM driver is for other network drivers",
            address_space=str(data[0].get("AddressSpace")),
        )
    field = f"{fam}Data.AuxAddresses"
    aux = {k: _str(v, f"{field}.{k}") for k, v in _obj(data[0].get("AuxAddresses"), field).items()}
    return {
        **data[0],
        "Pool": _str(data[0].get("Pool"), f"{fam}Data.Pool") or None,
        "Gateway": _str(data[0].get("Gateway"), f"{fam}Data.Gateway") or None,
        "AuxAddresses": aux,
    }


def _ports(value: Any) -> list[dict[str, Any]]:
    """Docker's port bindings (``com.docker.network.portmap``: a list of ``{Proto, Port, HostIP,
    HostPort, HostPortEnd}``, protocol numbers and ports as integers) as libnet's port mappings;
    ``BadRequest`` naming the field of one of the wrong type."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest(f"Options.{PORTMAP} must be a list of port bindings", field=PORTMAP)
    out = []
    for pb in value:
        if not isinstance(pb, dict):
            raise BadRequest("a port binding must be an object", binding=str(pb)[:80])
        number = pb.get("Proto")
        proto = PROTOCOLS.get(number) if isinstance(number, int) and not isinstance(number, bool) else None
        if proto is None:
            raise InvalidOption(f"libnet publishes tcp and udp ports (Proto 6, 17), not protocol {str(number)[:32]}")
        first, last = _port(pb, "HostPort"), _port(pb, "HostPortEnd")
        if last and last != first:
            raise InvalidOption(f"host port ranges ({first}-{last}) are not supported; give one port")
        mapping: dict[str, Any] = {"host_port": first, "container_port": _port(pb, "Port"), "protocol": proto}
        host_ip = _str(pb.get("HostIP"), "a port binding's HostIP")
        if host_ip:
            mapping["host_ip"] = host_ip
        out.append(mapping)
    return out


def _port(binding: dict[str, Any], key: str) -> int:
    """A port of a port binding: 0..65535 (missing, null or empty: 0; the mapping checks 0)."""
    value = binding.get(key)
    return 0 if value in (None, "") else check_int(value, f"a port binding's {key}", 0, 65535)


Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
PLUGIN: web.AppKey[DockerPlugin] = web.AppKey("docker_plugin")
SYNC: web.AppKey[docker_sync.DockerSync] = web.AppKey("docker_sync")


#: what an empty body on a call that needs one means (dockerd's plugin client re-sends a timed-out call
#: with the body it already consumed: nothing)
EMPTY_BODY = (
    "the request from dockerd had an empty body: dockerd sends one when it retries a call after a timeout, "
    "so the libnet agent was too slow to answer or not running (see `libnet agent status` and the agent's "
    "log); the first try may have been done: check with `docker network ls`/`libnet network ls`, then retry"
)


def _route(fn: Handler, ipam: bool = False, body: bool = True) -> Callable[[web.Request], Awaitable[web.Response]]:
    """One plugin call's HTTP handler; ``body``: the call carries a JSON object (refused when empty)."""

    async def handle(request: web.Request) -> web.Response:
        try:
            raw = await request.read()
            log.debug("docker %s %s", request.path, raw[:4000])
            if body and not raw.strip():
                raise BadRequest(EMPTY_BODY, call=request.path.lstrip("/"))
            body_ = json.loads(raw) if raw.strip() else {}
            if not isinstance(body_, dict):
                raise BadRequest("the request body must be a JSON object")
            answer = await fn(body_)
            return _reply(answer, 200)
        except json.JSONDecodeError as exc:
            msg, status = f"malformed JSON: {exc}", 400
        except (LibnetError, PluginError) as exc:
            msg, status = (exc.message if isinstance(exc, LibnetError) else str(exc)), 500
        except (KeyError, TypeError, ValueError) as exc:
            msg, status = f"bad request: {exc}", 400
        except Exception as exc:  # an unexpected failure: answered in the protocol's shape, logged, keep serving
            log.exception("docker %s: internal error", request.path)
            msg, status = f"internal error: {exc}", 500
        log.info("docker %s refused: %s", request.path, msg)
        # the plugin client reads "Err" from a non-200 answer; IPAM's own field is "Error"
        return _reply({"Err": msg, "Error": msg} if ipam else {"Err": msg}, status)

    return handle


def _reply(body: dict[str, Any], status: int) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type=CONTENT_TYPE)


def make_plugin_app(
    controller: Controller,
    handover: Handover = kernel_handover,
    docker_host: str | None = None,
    sync_interval: float = docker_sync.INTERVAL,
) -> web.Application:
    """The plugin's aiohttp application (served on its own unix socket by the agent); ``docker_host``:
    dockerd's API socket, for container names (:mod:`agent.docker_names`) and for forgetting what
    dockerd forgot every ``sync_interval`` seconds (:mod:`agent.docker_sync`)."""
    docker = DockerNames(docker_host)
    plugin = DockerPlugin(controller, handover, docker)
    sync = docker_sync.DockerSync(plugin, docker, interval=sync_interval, grace=max(sync_interval, 2.0))
    ipam = DockerIpam(controller)

    async def activate(_req: dict[str, Any]) -> dict[str, Any]:
        return {"Implements": ["NetworkDriver", "IpamDriver"]}

    net: dict[str, Handler] = {
        "GetCapabilities": plugin.get_capabilities,
        "CreateNetwork": plugin.create_network,
        "DeleteNetwork": plugin.delete_network,
        "CreateEndpoint": plugin.create_endpoint,
        "EndpointOperInfo": plugin.endpoint_oper_info,
        "DeleteEndpoint": plugin.delete_endpoint,
        "Join": plugin.join,
        "Leave": plugin.leave,
        "ProgramExternalConnectivity": plugin.program_external_connectivity,
        "RevokeExternalConnectivity": plugin.revoke_external_connectivity,
        "DiscoverNew": plugin.nothing,
        "DiscoverDelete": plugin.nothing,
        "AllocateNetwork": plugin.allocate_network,
        "FreeNetwork": plugin.nothing,
    }
    ipams: dict[str, Handler] = {
        "GetCapabilities": ipam.get_capabilities,
        "GetDefaultAddressSpaces": ipam.get_default_address_spaces,
        "RequestPool": ipam.request_pool,
        "ReleasePool": ipam.release_pool,
        "RequestAddress": ipam.request_address,
        "ReleaseAddress": ipam.release_address,
    }
    app = web.Application(client_max_size=1 << 20)
    no_body = {"GetCapabilities", "GetDefaultAddressSpaces", "DiscoverNew", "DiscoverDelete", "FreeNetwork"}
    app.router.add_post("/Plugin.Activate", _route(activate, body=False))
    for call, fn in net.items():
        app.router.add_post(f"/NetworkDriver.{call}", _route(fn, body=call not in no_body))
    for call, fn in ipams.items():
        app.router.add_post(f"/IpamDriver.{call}", _route(fn, ipam=True, body=call not in no_body))
    app[PLUGIN] = plugin
    app[SYNC] = sync

    async def startup(_app: web.Application) -> None:
        try:
            await plugin.restore_dns()
        except LibnetError as exc:  # names across hosts only; the rest works
            log.warning("libnet's DNS on overlay gateways not restored: %s", exc)
        sync.start()

    async def cleanup(_app: web.Application) -> None:
        await sync.stop()
        await plugin.close()

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    return app
