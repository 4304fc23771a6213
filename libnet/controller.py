"""The Container Network Model: networks, endpoints, sandboxes; join and leave.

Orchestration only: addresses come from IPAM, kernel work from drivers and
:mod:`libnet.namespaces`, persistence from :mod:`libnet.repository`.  No
netlink and no sockets here.  Each operation runs its steps in order and
undoes the done ones if a later one fails (:class:`libnet.rollback.Rollback`):

- create network: name -> IPAM pools (v4, v6) -> driver -> store
- create endpoint: name -> IPAM addresses -> driver -> store
- join: driver.join (interface, addresses, routes) -> published ports -> store
- leave / delete: the reverse; deleting a network with endpoints fails and
  names them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import os
import secrets
import time
from collections.abc import Iterable
from contextlib import suppress
from typing import Any

from ipam.api import OPT_AUX, OPT_GATEWAY, OPT_INSTANCE, OPT_ISOLATED, OPT_OVER_ROUTES, OPT_OWNER
from libnet import sandbox_files
from libnet.config import Config
from libnet.dns.binding import DnsBinding
from libnet.dns.records import parse_service
from libnet.dns.service import ADDRESS as EMBEDDED_DNS
from libnet.driverapi import Driver, EndpointInfo, NetworkInfo, PortMapping, ReconcileReport, SandboxInfo
from libnet.errors import (
    AddressNotAllocated,
    BadRequest,
    Conflict,
    InvalidOption,
    LibnetError,
    NameInUse,
    NoSuchPool,
    NotANamespace,
    NotFound,
)
from libnet.gate import OperationGate, operation
from libnet.model import Endpoint, Network, Sandbox, mac_from_ipv4
from libnet.names import check_sandbox_id, default_endpoint_name, sandbox_namespace
from libnet.namespaces import Namespaces
from libnet.ownership import firewall_table
from libnet.repository import Repository
from libnet.rollback import Rollback
from libnet.validation import check_addressing, check_bool, check_labels, check_name, check_options

log = logging.getLogger("libnet.controller")
#: the local bridge network giving overlay containers a way out (Docker's docker_gwbridge)
GATEWAY_BRIDGE = "libnet-gwbridge"


def _new_id() -> str:
    return secrets.token_hex(32)


class Controller:
    """Networks, endpoints and sandboxes of one host.  Async; see :class:`libnet.sync.SyncController`.

    Collaborators may be injected (unit tests pass fakes); those left out are
    built from ``config`` by :meth:`start`.  The constructor touches nothing.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        store=None,
        cluster_store=None,
        ipam=None,
        drivers: dict[str, Driver] | None = None,
        namespaces: Namespaces | None = None,
        dns=None,
    ) -> None:
        self.config = config or Config()
        self._dns = dns
        self._dns_binding: DnsBinding | None = None
        self._store, self._cluster, self._ipam = store, cluster_store, ipam
        self._drivers = drivers
        self._namespaces = namespaces
        self._repo: Repository | None = None
        self._sandbox_locks: dict[str, asyncio.Lock] = {}
        self._owned_stores: list[Any] = []
        self._resolv_cache: tuple[int, str] | None = None
        self._gate = OperationGate()

    # --- life cycle -------------------------------------------------------------

    async def start(self) -> Controller:
        """Open stores and build drivers (whatever was not injected)."""
        from libnet import defaults

        self.config = self.config.resolved()
        parts = defaults.components(
            self.config,
            store=self._store,
            cluster_store=self._cluster,
            ipam=self._ipam,
            drivers=self._drivers,
            namespaces=self._namespaces,
            dns=self._dns,
        )
        self._store, self._cluster, self._ipam, self._drivers, self._namespaces, self._dns, self._owned_stores = parts
        self._repo = Repository(self._store, self._cluster)
        from libnet.namespaces import KernelNamespaces
        from libnet.ports import PortRegistry

        real = isinstance(self._namespaces, KernelNamespaces)  # fakes: no host to probe for listeners
        self._ports = PortRegistry(
            self._store,
            self.config.host_netns,
            None if real else (lambda pm: True),
            self.config.port_range,
            own_table=firewall_table(self.instance),
        )
        if self._dns is not None:
            self._dns_binding = DnsBinding(self._dns, self._repo)
            for drv in self._drivers.values():
                if hasattr(drv, "peer_listeners"):  # drivers with remote endpoints (overlay)
                    drv.peer_listeners.append(self._dns_binding.remote_listener(drv.remote_endpoints))
            await self._dns_binding.restore()
        return self

    async def close(self) -> None:
        """Release handles; networks and containers keep working (DNS stops until the next start)."""
        if self._dns_binding is not None:
            await self._dns_binding.close()
        for driver in (self._drivers or {}).values():
            await driver.close()
        for store in self._owned_stores:
            await store.close()

    async def quiesce(self, timeout: float) -> bool:
        """Graceful stop: refuse new operations and wait up to ``timeout`` seconds for
        those in flight (and a running reconcile) to finish; True if all did."""
        return await self._gate.close(timeout)

    async def __aenter__(self) -> Controller:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def repo(self) -> Repository:
        if self._repo is None:
            raise RuntimeError("Controller.start() was not called")
        return self._repo

    @property
    def ipam(self):
        return self._ipam

    @property
    def dns(self):
        """The embedded DNS (:class:`libnet.dns.service.EmbeddedDns`), None when off."""
        return self._dns

    @property
    def instance(self) -> str:
        """This libnet instance's id (:mod:`libnet.ownership`); set by :meth:`start`."""
        assert self.config.instance_id is not None, "Controller.start() was not called"
        return self.config.instance_id

    def driver(self, name: str) -> Driver:
        assert self._drivers is not None
        try:
            return self._drivers[name]
        except KeyError:
            raise InvalidOption(
                f"unknown driver {name!r}; available: {', '.join(sorted(self._drivers))}", driver=name
            ) from None

    # --- info objects -----------------------------------------------------------

    @staticmethod
    def _net_info(nw: Network) -> NetworkInfo:
        return NetworkInfo(
            nw.id,
            nw.name,
            nw.ipv4_subnet,
            nw.ipv4_gateway,
            nw.ipv6_subnet,
            nw.ipv6_gateway,
            nw.internal,
            dict(nw.options),
        )

    @staticmethod
    def _ep_info(ep: Endpoint) -> EndpointInfo:
        ports = tuple(PortMapping(**p) for p in ep.ports)
        return EndpointInfo(
            ep.id, ep.network_id, ep.name, ep.ipv4, ep.ipv6, ep.mac, ports, tuple(ep.aliases), tuple(ep.services)
        )

    @staticmethod
    def _sb_info(sb: Sandbox, ep: Endpoint) -> SandboxInfo:
        return SandboxInfo(sb.id, sb.netns, ep.ifname or "eth0", ep.gateway)

    # --- networks ---------------------------------------------------------------

    @operation
    async def create_network(
        self,
        name: str,
        driver: str = "bridge",
        *,
        ipv4_subnet: str | None = None,
        ipv4_gateway: str | None = None,
        ipv6: bool | None = None,
        ipv6_subnet: str | None = None,
        ipv6_gateway: str | None = None,
        internal: bool = False,
        options: dict[str, Any] | None = None,
        labels: dict[str, str] | None = None,
        ipv4_range: str | None = None,
        ipv6_range: str | None = None,
        aux_addresses: dict[str, str] | None = None,
        allow_route_overlap: bool = False,
    ) -> Network:
        """Create a network: dual-stack unless ``ipv6=False``.

        ``ipv4_range``/``ipv6_range`` (Docker's ``--ip-range``): dynamic addresses
        come only from there (an explicit address may be anywhere in the subnet).
        ``aux_addresses`` (``{name: IP}``, Docker's ``--aux-address``): reserved,
        never handed out.  ``allow_route_overlap``: accept an explicit subnet that
        overlaps a route of the host (never one that holds a host address).
        Checks and their reasons: :func:`libnet.validation.check_addressing`."""
        check_name(name, "network")
        drv = self.driver(driver)
        scope = drv.capabilities().scope
        parsed = drv.parse_network_options(check_options(options))
        labels = check_labels(labels)
        internal = check_bool(internal, "internal")
        ipv6 = self.config.ipv6 if ipv6 is None else check_bool(ipv6, "ipv6")
        allow_route_overlap = check_bool(allow_route_overlap, "allow_route_overlap")
        fams = check_addressing(
            ipv6=ipv6,
            ipv4_subnet=ipv4_subnet,
            ipv4_gateway=ipv4_gateway,
            ipv4_range=ipv4_range,
            ipv6_subnet=ipv6_subnet,
            ipv6_gateway=ipv6_gateway,
            ipv6_range=ipv6_range,
            aux_addresses=aux_addresses,
        )
        space = "global" if scope == "global" else "local"
        store = self.repo.store(scope)
        nw = Network(
            _new_id(),
            name,
            driver,
            scope,
            internal=internal,
            options=parsed,
            labels=labels,
            created=time.time(),
            instance=self.instance,
            ipv4_range=fams[0].ip_range,
            ipv6_range=fams[1].ip_range,
            aux_addresses={**fams[0].aux, **fams[1].aux},
        )
        await drv.check_network(self._net_info(nw))  # a refusal here has written nothing
        for v6, fam in ((False, fams[0]), (True, fams[1])):
            if fam.subnet and not (v6 and not ipv6):  # an explicit subnet IPAM would refuse: before any write
                opts = _pool_options(nw.id, self.instance, fam.gateway, fam.aux, allow_route_overlap)
                if drv.capabilities().own_addressing:
                    opts[OPT_ISOLATED] = True
                await self._ipam.check_pool(space, fam.subnet, fam.ip_range, options=opts, v6=v6)
        async with Rollback() as undo:
            await self.repo.reserve_name(store, self.repo.network_name_key(name), nw.id, "network", name, self.instance)
            undo.push(lambda: store.delete(self.repo.network_name_key(name)), "free network name")
            for v6, fam in ((False, fams[0]), (True, fams[1])):
                if v6 and not ipv6:
                    continue
                opts = _pool_options(nw.id, self.instance, fam.gateway, fam.aux, allow_route_overlap)
                if drv.capabilities().own_addressing and fam.subnet:
                    opts[OPT_ISOLATED] = True
                pool = await self._ipam.request_pool(space, fam.subnet, fam.ip_range, options=opts, v6=v6)
                undo.push(lambda p=pool.id: self._ipam.release_pool(p, owner=nw.id), f"release pool {pool.id}")
                if v6:
                    nw.ipv6_pool, nw.ipv6_subnet, nw.ipv6_gateway = pool.id, pool.subnet, pool.gateway
                else:
                    nw.ipv4_pool, nw.ipv4_subnet, nw.ipv4_gateway = pool.id, pool.subnet, pool.gateway
            info = self._net_info(nw)
            await drv.create_network(info)
            undo.push(lambda: drv.delete_network(info), "delete network in driver")
            await self.repo.add_network(nw)
        log.info("network %s (%s) created: %s %s", name, nw.id[:12], nw.ipv4_subnet, nw.ipv6_subnet or "")
        return nw

    async def networks(self) -> list[Network]:
        """All networks, by name."""
        return await self.repo.networks()

    async def network(self, ref: str) -> Network:
        """A network by id, name or unique id prefix."""
        return await self.repo.network(ref)

    @operation
    async def delete_network(self, ref: str) -> None:
        """Delete a network without endpoints (``Conflict`` naming them otherwise).

        The network is marked as being deleted by this instance first, so a
        crash part way is finished by the next reconcile (rolled forward)."""
        nw = await self.repo.network(ref)
        eps = await self.repo.endpoints(nw.id)
        if eps:
            names = ", ".join(f"{e.name} ({e.id[:12]})" for e in eps)
            raise Conflict(
                f"network {nw.name} still has endpoints: {names}; disconnect them first",
                network_id=nw.id,
                endpoints=[e.id for e in eps],
            )
        if nw.removing != self.instance:
            nw = await self.repo.update_network(nw, lambda n: setattr(n, "removing", self.instance))
        await self.driver(nw.driver).delete_network(self._net_info(nw))
        for pool in (nw.ipv4_pool, nw.ipv6_pool):
            if pool:
                with suppress(NoSuchPool):
                    await self._ipam.release_pool(pool, owner=nw.id)
        await self.repo.delete_network(nw)
        if self._dns_binding is not None:
            self._dns_binding.network_deleted(nw.id)
        log.info("network %s (%s) deleted", nw.name, nw.id[:12])

    # --- endpoints --------------------------------------------------------------

    @operation
    async def create_endpoint(
        self,
        network: str,
        name: str,
        *,
        ipv4: str | None = None,
        ipv6: str | None = None,
        aliases: Iterable[str] = (),
        services: Iterable[str] = (),
        ports: Iterable[PortMapping | dict] = (),
        _connecting: bool = False,
    ) -> Endpoint:
        """Create an endpoint with addresses from the network's pools.

        ``aliases``: more DNS names (shared by several endpoints: round robin);
        ``services``: ``"http:80/tcp"`` specs published as SRV records."""
        check_name(name, "endpoint")
        aliases = [check_name(a, "alias") for a in aliases]
        if isinstance(services, str):
            raise InvalidOption("services is a list of NAME:PORT[/PROTO] specs", services=services)
        services = [str(parse_service(s)) for s in services]
        mappings = [_port(p) for p in ports]
        nw = await self.repo.network(network)
        if nw.removing:
            raise Conflict(f"network {nw.name} is being deleted", network_id=nw.id)
        if ipv6 is not None and not nw.ipv6_pool:
            raise InvalidOption("the network has no IPv6", network_id=nw.id)
        _check_wanted(nw, ipv4, ipv6)  # before the first write: a refusal leaves no trace
        _check_port_families(nw, mappings)
        drv = self.driver(nw.driver)
        store = self.repo.store(nw.scope)
        ep = Endpoint(
            _new_id(),
            name,
            nw.id,
            mac="",
            aliases=aliases,
            services=services,
            ports=[m.__dict__ for m in mappings],
            connecting=_connecting,
            node=self.config.node_name,
            created=time.time(),
            instance=self.instance,
        )
        async with Rollback() as undo:
            key = self.repo.endpoint_name_key(nw.id, name)
            await self.repo.reserve_name(store, key, ep.id, "endpoint", name, self.instance)
            undo.push(lambda: store.delete(key), "free endpoint name")
            if mappings:
                mappings = await self._ports.reserve(ep.id, mappings)
                undo.push(lambda: self._ports.release(ep.id, mappings), "free host ports")
                ep.ports = [m.__dict__ for m in mappings]
            for pool, wanted, attr in ((nw.ipv4_pool, ipv4, "ipv4"), (nw.ipv6_pool, ipv6, "ipv6")):
                if not pool:
                    continue
                addr = await self._ipam.request_address(pool, wanted, {OPT_OWNER: ep.id, OPT_INSTANCE: self.instance})
                undo.push(lambda p=pool, a=addr: self._release(p, a, ep.id), f"release {addr}")
                setattr(ep, attr, addr)
            ep.mac = mac_from_ipv4(ep.ipv4)
            await drv.create_endpoint(self._net_info(nw), self._ep_info(ep))
            undo.push(lambda: drv.delete_endpoint(self._net_info(nw), self._ep_info(ep)), "driver endpoint")
            await self.repo.add_endpoint(nw, ep)
        return ep

    async def _release(self, pool: str, address: str, owner: str) -> None:
        """Release ``address`` if ``owner`` still holds it (gone or taken over is fine)."""
        with suppress(AddressNotAllocated, NoSuchPool):
            await self._ipam.release_address(pool, address, owner=owner)

    async def endpoints(self, network: str | None = None) -> list[Endpoint]:
        """Endpoints of one network, or of all."""
        nid = (await self.repo.network(network)).id if network else None
        return await self.repo.endpoints(nid)

    async def endpoint(self, ref: str, network: str | None = None) -> Endpoint:
        """An endpoint by id, unique id prefix, or name within ``network``."""
        nid = (await self.repo.network(network)).id if network else None
        return await self.repo.endpoint(ref, nid)

    @operation
    async def delete_endpoint(self, ref: str, network: str | None = None, *, force: bool = False) -> None:
        """Delete an endpoint that is not joined (``Conflict`` otherwise; ``force``
        leaves its sandbox first).

        Marked as being deleted by this instance first, so a crash part way is
        finished by the next reconcile; addresses are released only while the
        endpoint still holds them."""
        ep = await self.endpoint(ref, network)
        if ep.sandbox_id and force:
            await self.leave(ep.id)
            ep = await self.repo.endpoint(ep.id)
        if ep.sandbox_id:
            raise Conflict(
                f"endpoint {ep.name} is joined to sandbox {ep.sandbox_id[:12]}; leave first",
                endpoint_id=ep.id,
                sandbox_id=ep.sandbox_id,
            )
        nw = await self.repo.network(ep.network_id)
        if ep.removing != self.instance:
            ep = await self.repo.update_endpoint(ep, _removing(self.instance))
        await self.driver(nw.driver).delete_endpoint(self._net_info(nw), self._ep_info(ep))
        for pool, addr in ((nw.ipv4_pool, ep.ipv4), (nw.ipv6_pool, ep.ipv6)):
            if pool and addr:
                await self._release(pool, addr, ep.id)
        if ep.ports:
            await self._ports.release(ep.id, [PortMapping(**p) for p in ep.ports])
        await self.repo.delete_endpoint(nw, ep)

    @operation
    async def remove_node(self, node: str) -> list[str]:
        """Delete the endpoints a host that is gone for good left in the cluster store
        (``libnet node rm``): their addresses and names are free again and their peer
        records go.  The caller checks that the host is gone (not merely restarting);
        the host's own kernel is not touched.  Returns the endpoint ids removed."""
        if node == self.config.node_name:
            raise BadRequest("a host cannot remove itself; run this on another host", node=node)
        gone = []
        for ep in await self.repo.endpoints():
            if ep.node != node:
                continue
            if ep.sandbox_id:  # its sandbox was on the dead host: nothing here to leave
                ep = await self.repo.update_endpoint(ep, _unjoined)
            await self.delete_endpoint(ep.id)
            gone.append(ep.id)
        return gone

    # --- sandboxes --------------------------------------------------------------

    @operation
    async def create_sandbox(
        self,
        id: str | None = None,  # noqa: A002 - the sandbox's id, as in Docker's API
        *,
        netns: str | None = None,
        hostname: str | None = None,
        dns: list[str] | None = None,
        dns_search: list[str] | None = None,
        dns_options: list[str] | None = None,
    ) -> Sandbox:
        """A sandbox in a new namespace, or in an existing one given by path
        (``/var/run/netns/NAME``, ``/proc/PID/ns/net``).  ``dns``,
        ``dns_search``, ``dns_options``: its own DNS servers (the embedded
        server's upstreams for it), search domains and resolv.conf options,
        as Docker's ``--dns*`` (see :mod:`libnet.sandbox_files`)."""
        sid = _new_id() if id is None else check_sandbox_id(id)
        if hostname is not None:
            check_name(hostname, "host")
        dns, dns_search, dns_options = sandbox_files.check_dns(dns, dns_search, dns_options)
        if netns is not None and (not isinstance(netns, str) or not netns.startswith("/")):
            raise NotANamespace(f"netns {netns!r} must be an absolute path to a network namespace", netns=str(netns))
        if await self.repo.has_sandbox(sid):
            raise Conflict("a sandbox with that id exists", sandbox_id=sid)
        async with Rollback() as undo:
            if netns is None:
                assert self.config.sandbox_prefix is not None
                name = sandbox_namespace(self.config.sandbox_prefix, sid)
                path = await asyncio.to_thread(self._namespaces.create, name, sid)
                undo.push(lambda: asyncio.to_thread(self._namespaces.delete, path), "delete namespace")
                owned = True
            else:
                # a network namespace, not the host's, not another sandbox's (README, "Names")
                taken = {s.id: s.netns for s in await self.repo.sandboxes() if s.netns}
                await asyncio.to_thread(self._namespaces.check_external, netns, taken)
                path, owned = netns, False
            sb = Sandbox(
                sid,
                path,
                owned,
                hostname=hostname,
                created=time.time(),
                dns=dns,
                dns_search=dns_search,
                dns_options=dns_options,
            )
            try:
                await self.repo.add_sandbox(sb)
            except Conflict:
                raise Conflict("a sandbox with that id exists", sandbox_id=sid) from None
            await self._write_files(sb)
        return sb

    async def sandboxes(self) -> list[Sandbox]:
        return await self.repo.sandboxes()

    async def sandbox(self, ref: str) -> Sandbox:
        return await self.repo.sandbox(ref)

    @operation
    async def delete_sandbox(self, ref: str) -> None:
        """Leave and delete the sandbox's endpoints, then remove it (and its namespace if libnet made it)."""
        sb = await self.repo.sandbox(ref)
        if sb.removing != self.instance:
            sb = await self.repo.update_sandbox(sb, _removing(self.instance))
        for eid in reversed(sb.endpoints):
            with suppress(NotFound):
                await self._mark_removing(eid)
                await self.leave(eid)
                await self.delete_endpoint(eid)
        if self._dns_binding is not None:
            await self._dns_binding.sandbox_deleted(sb.id)
        removed = not sb.owned or await asyncio.to_thread(self._namespaces.delete, sb.netns)  # ours only
        if not removed and self._namespaces.exists(sb.netns):
            log.warning(
                "sandbox %s: namespace %s left in place: the state dir's namespace ledger does not record it "
                "as this instance's (%s/netns/ missing or damaged?); remove it by hand if it is libnet's",
                sb.id[:12],
                sb.netns,
                self.config.state_dir,
            )
        sandbox_files.remove(self.config.state_dir, sb.id)
        await self.repo.delete_sandbox(sb)
        self._sandbox_locks.pop(sb.id, None)

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._sandbox_locks.setdefault(sandbox_id, asyncio.Lock())

    async def _write_files(self, sb: Sandbox) -> None:
        entries = []
        for eid in sb.endpoints:
            with suppress(NotFound):
                ep = await self.repo.endpoint(eid)
                for cidr in (ep.ipv4, ep.ipv6):
                    if cidr:
                        entries.append((str(ipaddress.ip_interface(cidr).ip), [ep.name, *ep.aliases]))
        if self._dns is not None:
            resolv = sandbox_files.resolv_conf_embedded(
                self._host_resolv_conf(), EMBEDDED_DNS, sb.dns_search, sb.dns_options
            )
        else:
            resolv = sandbox_files.resolv_conf(self._host_resolv_conf(), sb.dns, sb.dns_search, sb.dns_options)
        hosts = sandbox_files.hosts_file(sb.hostname, entries)
        # two small local files: cheaper written here than handed to a thread
        sandbox_files.write(self.config.state_dir, sb.id, resolv, hosts)

    def _host_resolv_conf(self) -> str:
        """The host's resolv.conf, re-read only when it changes."""
        try:
            mtime = os.stat(self.config.resolv_conf).st_mtime_ns
        except OSError:
            return ""
        if self._resolv_cache is None or self._resolv_cache[0] != mtime:
            try:
                with open(self.config.resolv_conf) as f:
                    self._resolv_cache = (mtime, f.read())
            except OSError:
                return ""
        return self._resolv_cache[1]

    # --- join and leave ---------------------------------------------------------

    @operation
    async def join(self, endpoint: str, sandbox: str) -> Endpoint:
        """Plug an endpoint into a sandbox (idempotent for the same pair).

        A sandbox on a non-internal network whose driver has no way out of its
        own (overlay) is also connected to this host's gateway bridge
        network, which gives it a default route and masquerade.
        """
        ep = await self._join(endpoint, sandbox)
        try:
            await self._sync_gateway_bridge(ep.sandbox_id)
        except LibnetError as exc:  # the network works; only the way out is missing
            log.warning("sandbox %s: no gateway bridge: %s", (ep.sandbox_id or "")[:12], exc)
        await self._dns_sync(ep.sandbox_id)
        return ep

    async def _dns_sync(self, sandbox_id: str | None) -> None:
        if self._dns_binding is None or not sandbox_id:
            return
        try:
            await self._dns_binding.sandbox(await self.repo.sandbox(sandbox_id))
        except (LibnetError, OSError) as exc:  # names do not resolve; the network itself works
            log.warning("sandbox %s: embedded DNS not served: %s", sandbox_id[:12], exc)

    async def _join(self, endpoint: str, sandbox: str) -> Endpoint:
        ep = await self.repo.endpoint(endpoint)
        sb = await self.repo.sandbox(sandbox)
        async with self._lock(sb.id):
            sb = await self.repo.sandbox(sb.id)
            ep = await self.repo.endpoint(ep.id)
            if ep.sandbox_id == sb.id:
                return ep
            if ep.sandbox_id:
                raise Conflict(
                    f"endpoint {ep.name} is joined to another sandbox", endpoint_id=ep.id, sandbox_id=ep.sandbox_id
                )
            nw = await self.repo.network(ep.network_id)
            drv = self.driver(nw.driver)
            others = [await self.repo.endpoint(e) for e in sb.endpoints]
            await self._check_sandbox_overlap(sb, nw, others)
            used = {o.ifname for o in others}
            ifname = next(f"eth{i}" for i in range(len(used) + 1) if f"eth{i}" not in used)
            gateway = (
                not nw.internal
                and bool(nw.ipv4_gateway or nw.ipv6_gateway)
                and not drv.capabilities().external_via_gateway_bridge
                and not any(o.gateway for o in others)
            )
            ep.sandbox_id, ep.ifname, ep.gateway = sb.id, ifname, gateway
            ninfo, einfo, sinfo = self._net_info(nw), self._ep_info(ep), self._sb_info(sb, ep)
            async with Rollback() as undo:
                await drv.join(ninfo, einfo, sinfo)
                undo.push(lambda: drv.leave(ninfo, einfo, sinfo), "leave in driver")
                await drv.program_external_connectivity(ninfo, einfo)
                undo.push(lambda: drv.revoke_external_connectivity(ninfo, einfo), "revoke ports")

                def joined(e: Endpoint) -> None:
                    e.sandbox_id, e.ifname, e.gateway, e.connecting = sb.id, ifname, gateway, False

                ep = await self.repo.update_endpoint(ep, joined)
                undo.push(lambda: self.repo.update_endpoint(ep, _unjoined), "unmark endpoint")
                sb = await self.repo.update_sandbox(sb, lambda s: s.endpoints.append(ep.id))
            await self._write_files(sb)
        return ep

    async def _check_sandbox_overlap(self, sb: Sandbox, nw: Network, others: list[Endpoint]) -> None:
        """A sandbox holds one endpoint per network, and no two networks whose
        subnets overlap: the kernel would route by the first matching route, so
        a name could resolve to one network's address and the packet leave by
        the other's interface (another container answers)."""
        mine = [ipaddress.ip_network(s) for s in (nw.ipv4_subnet, nw.ipv6_subnet) if s]
        for other in others:
            if other.network_id == nw.id:
                raise Conflict(
                    f"sandbox {sb.id[:12]} is already on network {nw.name} (endpoint {other.name})",
                    sandbox_id=sb.id,
                    network_id=nw.id,
                    endpoint_id=other.id,
                )
            theirs = await self.repo.network(other.network_id)
            for subnet in (theirs.ipv4_subnet, theirs.ipv6_subnet):
                if subnet and any(
                    m.version == ipaddress.ip_network(subnet).version and m.overlaps(ipaddress.ip_network(subnet))
                    for m in mine
                ):
                    raise Conflict(
                        f"network {nw.name} overlaps network {theirs.name} ({subnet}) that sandbox {sb.id[:12]} "
                        "is already on: its addresses would be ambiguous inside the sandbox",
                        sandbox_id=sb.id,
                        network_id=nw.id,
                        overlaps=theirs.id,
                        subnet=subnet,
                    )

    @operation
    async def leave(self, endpoint: str, sandbox: str | None = None) -> Endpoint:
        """Unplug an endpoint from its sandbox; not joined is fine."""
        sandbox_id = (await self.repo.endpoint(endpoint)).sandbox_id
        ep = await self._leave(endpoint, sandbox)
        if sandbox_id and ep.network_id != await self._gateway_network_id():
            try:
                await self._sync_gateway_bridge(sandbox_id)
            except LibnetError as exc:
                log.warning("sandbox %s: gateway bridge not released: %s", sandbox_id[:12], exc)
        if sandbox_id and self._dns_binding is not None:
            await self._dns_binding.left(ep, sandbox_id)
        return ep

    async def _leave(self, endpoint: str, sandbox: str | None = None) -> Endpoint:
        ep = await self.repo.endpoint(endpoint)
        if not ep.sandbox_id:
            return ep
        async with self._lock(ep.sandbox_id):
            ep = await self.repo.endpoint(ep.id)
            if not ep.sandbox_id:
                return ep
            if sandbox is not None and (await self.repo.sandbox(sandbox)).id != ep.sandbox_id:
                raise Conflict("endpoint is joined to another sandbox", endpoint_id=ep.id, sandbox_id=ep.sandbox_id)
            nw = await self.repo.network(ep.network_id)
            drv = self.driver(nw.driver)
            try:
                sb = await self.repo.sandbox(ep.sandbox_id)
            except NotFound:
                sb = Sandbox(ep.sandbox_id, "", False)
            if self.instance not in (ep.leaving, ep.removing):  # a crash from here on is rolled forward
                ep = await self.repo.update_endpoint(ep, lambda e: setattr(e, "leaving", self.instance))
            ninfo, einfo, sinfo = self._net_info(nw), self._ep_info(ep), self._sb_info(sb, ep)
            await drv.revoke_external_connectivity(ninfo, einfo)
            await drv.leave(ninfo, einfo, sinfo)
            was_gateway = ep.gateway
            ep = await self.repo.update_endpoint(ep, _unjoined)
            if sb.netns:
                sb = await self.repo.update_sandbox(
                    sb, lambda s: s.endpoints.remove(ep.id) if ep.id in s.endpoints else None
                )
                if was_gateway:
                    await self._hand_over_gateway(sb)
                await self._write_files(sb)
        return ep

    async def _gateway_network_id(self) -> str | None:
        try:
            return (await self.repo.network(GATEWAY_BRIDGE)).id
        except NotFound:
            return None

    async def _sync_gateway_bridge(self, sandbox_id: str | None) -> None:
        """Connect the sandbox to the gateway bridge network when one of its
        networks needs it, and disconnect it when none does any more."""
        if not sandbox_id:
            return
        try:
            sb = await self.repo.sandbox(sandbox_id)
        except NotFound:
            return
        gw_id = await self._gateway_network_id()
        needed, present = False, None
        for eid in sb.endpoints:
            ep = await self.repo.endpoint(eid)
            if gw_id is not None and ep.network_id == gw_id:
                present = ep
                continue
            nw = await self.repo.network(ep.network_id)
            if not nw.internal and self.driver(nw.driver).capabilities().external_via_gateway_bridge:
                needed = True
        if needed and present is None:
            if gw_id is None:
                with suppress(NameInUse):  # made by a concurrent join
                    await self.create_network(
                        GATEWAY_BRIDGE,
                        "bridge",
                        options={"bridge_name": "lngwbridge"},
                        labels={"libnet.role": "gateway-bridge"},
                    )
            gw_ep = await self.create_endpoint(GATEWAY_BRIDGE, f"gw-{sb.id[:12]}", _connecting=True)
            await self._join(gw_ep.id, sb.id)
        elif present is not None and not needed:
            await self._mark_removing(present.id)
            await self._leave(present.id)
            await self.delete_endpoint(present.id)

    async def _hand_over_gateway(self, sb: Sandbox) -> None:
        """After the gateway endpoint left, the next non-internal one takes the default routes."""
        for eid in sb.endpoints:
            ep = await self.repo.endpoint(eid)
            nw = await self.repo.network(ep.network_id)
            if nw.internal or not (nw.ipv4_gateway or nw.ipv6_gateway):
                continue
            if self.driver(nw.driver).capabilities().external_via_gateway_bridge:
                continue
            await self.driver(nw.driver).set_gateway(self._net_info(nw), self._ep_info(ep), self._sb_info(sb, ep), True)
            await self.repo.update_endpoint(ep, lambda e: setattr(e, "gateway", True))
            return

    @operation
    async def connect(self, network: str, sandbox: str, name: str | None = None, **endpoint_args: Any) -> Endpoint:
        """Create an endpoint on ``network`` and join it to ``sandbox`` (like ``docker network connect``).

        If the join fails the endpoint is deleted again, its addresses released.
        """
        sb = await self.repo.sandbox(sandbox)
        if not sb.owned and not self._namespaces.exists(sb.netns):
            raise NotANamespace(
                f"sandbox {sb.id[:12]}'s namespace {sb.netns} is gone (no longer a network namespace): "
                "remove the sandbox and create it again with the container's namespace",
                sandbox_id=sb.id,
                path=sb.netns,
            )
        nw = await self.repo.network(network)
        for eid in sb.endpoints:  # before a default name could clash with the endpoint already there
            with suppress(NotFound):
                other = await self.repo.endpoint(eid)
                if other.network_id == nw.id:
                    raise Conflict(
                        f"sandbox {sb.id[:12]} is already on network {nw.name} (endpoint {other.name})",
                        sandbox_id=sb.id,
                        network_id=nw.id,
                        endpoint_id=other.id,
                    )
        name = name or sb.hostname or default_endpoint_name(sb.id)
        ep = await self.create_endpoint(nw.id, name, _connecting=True, **endpoint_args)
        try:
            return await self.join(ep.id, sb.id)
        except BaseException as failure:
            try:  # undo: a join that got as far as the store is left first
                with suppress(NotFound):
                    if (await self.repo.endpoint(ep.id)).sandbox_id:
                        await self.leave(ep.id)
                    await self.delete_endpoint(ep.id)
            except Exception as exc:  # the failure is what the caller must see; the rest is reconcile's
                log.error("connect %s to %s failed (%r); undoing it failed too: %s", sb.id[:12], nw.name, failure, exc)
            raise

    @operation
    async def disconnect(self, network: str, sandbox: str) -> None:
        """Leave and delete the sandbox's endpoint on ``network``."""
        nw = await self.repo.network(network)
        sb = await self.repo.sandbox(sandbox)
        for eid in list(sb.endpoints):
            ep = await self.repo.endpoint(eid)
            if ep.network_id == nw.id:
                await self._mark_removing(ep.id)  # a crash from here on is rolled forward
                await self.leave(ep.id)
                await self.delete_endpoint(ep.id)
                return
        raise NotFound(
            f"sandbox {sb.id[:12]} is not connected to network {nw.name}", network_id=nw.id, sandbox_id=sb.id
        )

    async def _mark_removing(self, endpoint_id: str) -> None:
        ep = await self.repo.endpoint(endpoint_id)
        if ep.removing != self.instance:
            await self.repo.update_endpoint(ep, _removing(self.instance))

    # --- reconcile --------------------------------------------------------------

    async def reconcile(self) -> ReconcileReport:
        """Make store and kernel consistent after a crash or drift.

        Store first: endpoints a crashed ``connect`` left half-made are
        deleted (their addresses released), sandbox endpoint lists are
        repaired, IPAM pools and addresses no stored object owns are
        released, stale name reservations dropped.  Then each driver removes
        kernel objects no stored object owns and reports missing parts.
        """
        async with self._gate.exclusive():
            return await self._reconcile()

    async def _reconcile(self) -> ReconcileReport:
        report = ReconcileReport()
        await self._reconcile_store(report)
        networks = await self.repo.networks()
        endpoints = await self.repo.endpoints()
        sandboxes = {s.id: s for s in await self.repo.sandboxes()}
        for sb in sandboxes.values():
            if not self._namespaces.exists(sb.netns):
                report.missing.append(f"sandbox {sb.id[:12]}: namespace {sb.netns} is gone")
        for name, drv in (self._drivers or {}).items():
            nets = [n for n in networks if n.driver == name]
            ids = {n.id for n in nets}
            eps = []
            for ep in endpoints:
                if ep.network_id in ids:
                    sb = sandboxes.get(ep.sandbox_id or "")
                    if sb is None and ep.sandbox_id and ep.node == self.config.node_name:
                        # joined, its sandbox's record lost: still joined in the kernel; keep it so
                        report.missing.append(
                            f"endpoint {ep.name} ({ep.id[:12]}): its sandbox {ep.sandbox_id[:12]} is not in the store"
                        )
                        sb = Sandbox(ep.sandbox_id, "", False)
                    eps.append((self._ep_info(ep), self._sb_info(sb, ep) if sb else None))
            report.merge(await drv.reconcile([self._net_info(n) for n in nets], eps))
        stored = {s.netns: s.id for s in sandboxes.values() if s.owned}
        for path, owner in (await asyncio.to_thread(self._namespaces.owned)).items():
            if path in stored or owner in sandboxes:
                continue
            if await asyncio.to_thread(self._namespaces.in_use, path):  # a lost sandbox record, not a leak
                report.missing.append(
                    f"sandbox namespace {path} (sandbox {owner[:12]}): the store does not know it but it holds "
                    "interfaces; kept (a lost store record? libnet-agent --adopt rebuilds it)"
                )
            elif await asyncio.to_thread(self._namespaces.delete, path):
                report.removed.append(f"sandbox namespace {path} of no sandbox")
        await self._restore_reservations(report)
        await self._free_orphans(report, set(report.kept))
        for line in report.removed + report.repaired:
            log.warning("reconcile: %s", line)
        for line in report.missing:
            log.warning("reconcile: %s", line)
        return report

    async def _reconcile_store(self, report: ReconcileReport) -> None:
        """Finish or undo what a crash interrupted (before the drivers' sweep);
        :meth:`_free_orphans` frees what nothing owns (after it).

        Rule (DESIGN.md, "Ownership"): only this instance's own unfinished
        work is touched -- objects marked ``removing``/``leaving`` by it are
        rolled forward, endpoints of its unfinished ``connect`` rolled back --
        and an orphaned pool, address or name reservation is freed only if
        this instance made it (the caller holds the operation gate, so none of
        its own is in flight).  Another instance's orphan may be an operation
        in flight on another host: it is left alone, however old.  Untagged
        records of older versions are freed only in the local store.
        """
        me = self.instance
        for sb in await self.repo.sandboxes():
            if sb.removing == me:
                await self.delete_sandbox(sb.id)
                report.repaired.append(f"finished deleting sandbox {sb.id[:12]}")
        for ep in await self.repo.endpoints():
            mine = ep.instance == me or (not ep.instance and ep.node == self.config.node_name)
            try:
                if ep.removing == me:
                    await self.delete_endpoint(ep.id, force=True)
                    report.repaired.append(f"finished deleting endpoint {ep.name} ({ep.id[:12]})")
                elif ep.leaving == me:
                    await self.leave(ep.id)
                    report.repaired.append(f"finished unplugging endpoint {ep.name} ({ep.id[:12]})")
                elif ep.connecting and not ep.sandbox_id and mine:
                    await self.delete_endpoint(ep.id)
                    report.repaired.append(f"deleted endpoint {ep.name} ({ep.id[:12]}) of an unfinished connect")
            except NotFound as exc:  # its network or sandbox is gone: say so, never silently
                report.missing.append(f"endpoint {ep.name} ({ep.id[:12]}): unfinished work not done: {exc}")
        for nw in await self.repo.networks():
            if nw.removing == me:
                try:
                    await self.delete_network(nw.id)
                    report.repaired.append(f"finished deleting network {nw.name} ({nw.id[:12]})")
                except Conflict as exc:  # endpoints still on it: the delete could never have gone through
                    await self.repo.update_network(nw, _removing(""))
                    report.repaired.append(f"network {nw.name}: unfinished delete undone ({exc.message})")
        endpoints = {e.id: e for e in await self.repo.endpoints()}
        for sb in await self.repo.sandboxes():
            want = [e for e in sb.endpoints if e in endpoints and endpoints[e].sandbox_id == sb.id]
            want += [e.id for e in endpoints.values() if e.sandbox_id == sb.id and e.id not in want]
            if want != sb.endpoints:
                await self.repo.update_sandbox(sb, lambda s, w=want: setattr(s, "endpoints", w))
                report.repaired.append(f"endpoint list of sandbox {sb.id[:12]}")

    async def _restore_reservations(self, report: ReconcileReport) -> None:
        """Re-reserve what the stored networks and endpoints hold but the store
        lost the reservation of (a deleted key, a restored backup): their pools,
        addresses and names.  Otherwise the next create would hand a live
        network's subnet, a live container's address or a taken name out again."""
        pools = {p.pool_id for p in await self._ipam.pool_owners()}
        held = {(a.pool_id, a.address.split("/")[0]) for a in await self._ipam.audit()}
        names = {p.key for store in self.repo.stores() for p in await store.list("libnet/v1/names/")}
        networks = {n.id: n for n in await self.repo.networks()}
        for nw in networks.values():
            if nw.removing:
                continue
            space = "global" if nw.scope == "global" else "local"
            isolated = self.driver(nw.driver).capabilities().own_addressing if nw.driver in self._drivers else False
            for v6, pool_id, subnet, gw, rng in (
                (False, nw.ipv4_pool, nw.ipv4_subnet, nw.ipv4_gateway, nw.ipv4_range),
                (True, nw.ipv6_pool, nw.ipv6_subnet, nw.ipv6_gateway, nw.ipv6_range),
            ):
                if not pool_id or not subnet or pool_id in pools:
                    continue
                net = ipaddress.ip_network(subnet)
                aux = {k: a for k, a in nw.aux_addresses.items() if ipaddress.ip_address(a) in net}
                gw_ip = str(ipaddress.ip_interface(gw).ip) if gw else None
                # over_host_routes: its own bridge's route is there (its own bridge's address does not count)
                opts = _pool_options(nw.id, nw.instance, gw_ip, aux, True)
                if isolated:
                    opts[OPT_ISOLATED] = True
                try:
                    pool = await self._ipam.request_pool(space, subnet, rng, options=opts, v6=v6)
                except LibnetError as exc:
                    report.missing.append(
                        f"network {nw.name}: its IPAM pool {pool_id} is lost and cannot be restored: {exc}"
                    )
                    continue
                report.repaired.append(f"IPAM pool {pool.id} of network {nw.name} restored")
                pools.add(pool.id)
                held |= {(a.pool_id, a.address.split("/")[0]) for a in await self._ipam.audit(pool.id)}
            key = self.repo.network_name_key(nw.name)
            if key not in names:
                await self._restore_name(report, self.repo.store(nw.scope), key, nw.id, "network", nw.name, nw.instance)
        for ep in await self.repo.endpoints():
            nw = networks.get(ep.network_id)
            if nw is None or ep.removing:
                continue
            for pool_id, cidr in ((nw.ipv4_pool, ep.ipv4), (nw.ipv6_pool, ep.ipv6)):
                if not pool_id or not cidr or (pool_id, cidr.split("/")[0]) in held:
                    continue
                try:
                    await self._ipam.request_address(
                        pool_id, cidr.split("/")[0], {OPT_OWNER: ep.id, OPT_INSTANCE: ep.instance}
                    )
                    report.repaired.append(f"address {cidr} of endpoint {ep.name} ({ep.id[:12]}) reserved again")
                except LibnetError as exc:
                    report.missing.append(f"endpoint {ep.name}: its address {cidr} cannot be reserved again: {exc}")
            key = self.repo.endpoint_name_key(nw.id, ep.name)
            if key not in names:
                await self._restore_name(
                    report, self.repo.store(nw.scope), key, ep.id, "endpoint", ep.name, ep.instance
                )

    async def _restore_name(
        self, report: ReconcileReport, store: Any, key: str, owner: str, what: str, name: str, instance: str
    ) -> None:
        try:
            await self.repo.reserve_name(store, key, owner, what, name, instance)
            report.repaired.append(f"{what} name {name} reserved again")
        except LibnetError as exc:
            report.missing.append(f"{what} {name} ({owner[:12]}): its name cannot be reserved again: {exc}")

    async def _free_orphans(self, report: ReconcileReport, kept: set[str]) -> None:
        """Free this instance's pools, addresses and names whose owner is gone --
        not those of an owner whose kernel objects the drivers kept (in use
        although the store lost its record): freeing them would hand a live
        container's subnet or address to someone else."""
        me = self.instance
        endpoints = {e.id: e for e in await self.repo.endpoints()}
        networks = {n.id for n in await self.repo.networks()}

        def ours(space: str, instance: str) -> bool:
            return instance == me or (not instance and space == "local")

        for pool in await self._ipam.pool_owners():
            if pool.owner and pool.owner not in networks | kept and ours(pool.space, pool.instance):
                with suppress(NoSuchPool):
                    await self._ipam.release_pool(pool.pool_id, owner=pool.owner)
                    report.removed.append(f"IPAM pool {pool.pool_id} of no network")
        for alloc in await self._ipam.audit():
            if (
                alloc.owner
                and alloc.owner != "gateway"
                and not alloc.owner.startswith("aux:")
                and alloc.owner not in endpoints
                and alloc.owner not in kept
                and ours("global" if alloc.pool_id.startswith("global/") else "local", alloc.instance)
            ):
                await self._release(alloc.pool_id, alloc.address, alloc.owner)
                report.removed.append(f"address {alloc.address} of no endpoint")
        for proto, port, holder in await self._ports.orphans(set(endpoints) | kept):
            report.removed.append(f"host port {port}/{proto} of no endpoint ({holder[:12]})")
        for key in await self.repo.stale_names(networks | kept, set(endpoints) | kept, me):
            report.removed.append(f"name reservation {key.rsplit('/', 1)[-1]}")


def _pool_options(
    owner: str, instance: str, gateway: str | None, aux: dict[str, str], over_routes: bool
) -> dict[str, Any]:
    """IPAM request_pool options of a network's pool."""
    opts: dict[str, Any] = {OPT_OWNER: owner, OPT_INSTANCE: instance}
    if gateway:
        opts[OPT_GATEWAY] = gateway
    if aux:
        opts[OPT_AUX] = dict(aux)
    if over_routes:
        opts[OPT_OVER_ROUTES] = True
    return opts


def _unjoined(e: Endpoint) -> None:
    e.sandbox_id, e.ifname, e.gateway, e.leaving = None, None, False, ""


def _check_wanted(nw: Network, ipv4: object, ipv6: object) -> None:
    """An endpoint's requested addresses: plain addresses (as ``docker network connect
    --ip``, no prefix) of the right version inside the network's subnets (``InvalidOption``)."""
    for version, wanted, subnet in ((4, ipv4, nw.ipv4_subnet), (6, ipv6, nw.ipv6_subnet)):
        if wanted is None:
            continue
        what = "ipv4" if version == 4 else "ipv6"
        try:
            addr = ipaddress.ip_address(wanted) if isinstance(wanted, str) else None
        except ValueError:
            addr = None
        if addr is None or addr.version != version:
            raise InvalidOption(
                f"{what} {wanted!r} is not an IPv{version} address (give an address, without a prefix length)",
                option=what,
                value=str(wanted)[:64],
            )
        if subnet is not None and addr not in ipaddress.ip_network(subnet):
            raise InvalidOption(
                f"{what} {addr} is not inside network {nw.name}'s subnet {subnet}", option=what, network_id=nw.id
            )


def _removing(instance: str) -> Any:
    def mark(obj: Any) -> None:
        obj.removing = instance

    return mark


def _port(p: PortMapping | dict) -> PortMapping:
    if isinstance(p, PortMapping):
        pm = p
    else:
        if not isinstance(p, dict) or set(p) - {"host_port", "container_port", "protocol", "host_ip"}:
            raise InvalidOption("a port is {host_port, container_port, protocol, host_ip}", port=str(p))
        try:
            pm = PortMapping(**{"host_port": 0, **p})
        except TypeError:
            raise InvalidOption(
                "a port needs container_port (and host_port, 0 or left out: any free one)", port=str(p)
            ) from None
    for port, lowest in ((pm.host_port, 0), (pm.container_port, 1)):  # host port 0: pick a free one
        if isinstance(port, bool) or not isinstance(port, int) or not lowest <= port < 65536:
            raise InvalidOption(f"invalid port {port!r}: {lowest}..65535", port=str(port))
    if pm.protocol not in ("tcp", "udp"):
        raise InvalidOption("protocol must be tcp or udp", protocol=str(pm.protocol))
    if pm.host_ip is not None:
        try:
            hip = ipaddress.ip_address(pm.host_ip) if isinstance(pm.host_ip, str) else None
        except ValueError:
            hip = None
        if hip is None:
            raise InvalidOption(f"invalid host_ip {pm.host_ip!r}: give an IP address", host_ip=str(pm.host_ip))
        if hip.is_multicast or (hip.version == 4 and hip.is_reserved):  # 240/4 holds 255.255.255.255
            raise InvalidOption(
                f"host_ip {hip} is a multicast or broadcast address: ports are published on a unicast address",
                host_ip=str(hip),
            )
        if hip.version == 6 and (hip.scope_id or hip.is_link_local):
            raise InvalidOption(
                f"host_ip {pm.host_ip} is link-local or scoped: publish on a global or loopback address",
                host_ip=str(pm.host_ip),
            )
        if hip.version == 6 and hip.ipv4_mapped is not None:
            raise InvalidOption(f"host_ip {hip} is IPv4-mapped: give {hip.ipv4_mapped}", host_ip=str(hip))
        if str(hip) != pm.host_ip:  # one spelling per address: the registry compares strings
            pm = dataclasses.replace(pm, host_ip=str(hip))
    return pm


def _check_port_families(nw: Network, mappings: list[PortMapping]) -> None:
    """A port published on a host address of one IP version needs a container
    address of that version to send it to (``InvalidOption``)."""
    for pm in mappings:
        if pm.host_ip is None:
            continue
        version = ipaddress.ip_address(pm.host_ip).version
        if not (nw.ipv4_subnet if version == 4 else nw.ipv6_subnet):
            raise InvalidOption(
                f"host_ip {pm.host_ip} is IPv{version} but network {nw.name} gives its endpoints no IPv{version} "
                "address to publish it to",
                host_ip=pm.host_ip,
                network_id=nw.id,
            )
