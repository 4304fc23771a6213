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

Its collaborators are built in one go by :func:`libnet.wiring.build`; the
policies it applies live in their own modules: :mod:`libnet.gateway` (the
gateway bridge), :mod:`libnet.reconcile`, :mod:`libnet.sandbox_files`,
:mod:`libnet.dns.binding` (the embedded DNS's records and listeners),
:mod:`libnet.ports` and :mod:`libnet.validation` (checks of user input).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from ipam.api import GLOBAL, LOCAL, Ipam, address_options, pool_options
from libnet import gateway, sandbox_files, wiring
from libnet.config import Config
from libnet.dns.binding import DnsBinding
from libnet.dns.records import parse_service
from libnet.dns.service import ADDRESS as EMBEDDED_DNS
from libnet.driverapi import Driver, PortMapping, ReconcileReport
from libnet.drivers.registry import Drivers
from libnet.errors import (
    AddressNotAllocated,
    BadRequest,
    Conflict,
    InvalidOption,
    KeyExists,
    KeyModified,
    KeyNotFound,
    LibnetError,
    NameInUse,
    NoSuchEndpoint,
    NoSuchPool,
    NotANamespace,
    NotFound,
    PoolOverlap,
    ProxyInUse,
)
from libnet.gate import OperationGate, operation
from libnet.gateway import GatewayPolicy
from libnet.info import ep_info, net_info
from libnet.joins import Finish, Joins, unjoined
from libnet.model import Endpoint, Network, Proxy, Sandbox, mac_from_ipv4, proxy_leg_mac
from libnet.names import check_sandbox_id, default_endpoint_name, sandbox_namespace
from libnet.namespaces import Namespaces
from libnet.ports import PortRegistry, check_families, check_mapping
from libnet.proxies import BACK_SUFFIX, Proxies
from libnet.reconcile import Reconciler, release_address
from libnet.repository import Reads, Repository
from libnet.rollback import Rollback
from libnet.sandbox_files import SandboxFiles
from libnet.store.base import Store, Write
from libnet.validation import (
    check_addressing,
    check_bool,
    check_ifname,
    check_labels,
    check_mac,
    check_name,
    check_options,
    check_wanted,
)

if TYPE_CHECKING:
    from libnet.dns.service import EmbeddedDns
    from libnet.proxies import ProxyPlane
    from libnet.store.base import KVPair

log = logging.getLogger("libnet.controller")
#: the local bridge network giving overlay containers a way out (see libnet.gateway)
GATEWAY_BRIDGE = gateway.GATEWAY_BRIDGE
#: what start() binds; using one of them before start() is an error, not an AttributeError
_WIRED = frozenset(
    {
        "_parts",
        "_repo",
        "_store",
        "_cluster",
        "_ipam",
        "_drivers",
        "_namespaces",
        "_dns",
        "_ports",
        "_files",
        "_gateway",
        "_joins",
    }
    | {"_reconciler", "_dns_binding", "_proxies"}
)


def _new_id() -> str:
    return secrets.token_hex(32)


def _proxy_of_leg(ep: Endpoint) -> str:
    """The name of the proxy whose leg ``ep`` is: the front leg is named like the proxy,
    the back leg ``NAME.proxy`` (:func:`libnet.proxies.back_leg_name`)."""
    return ep.name.removesuffix(BACK_SUFFIX)


class Controller:
    """Networks, endpoints and sandboxes of one host.  Async; see :class:`libnet.sync.SyncController`.

    ``Controller(config, **collaborators)`` touches nothing; :meth:`start` (or
    ``async with``, or ``await Controller.create(...)``) builds every
    collaborator at once (:func:`libnet.wiring.build`: those injected --
    unit tests pass fakes -- and the real ones for the rest) before any
    operation can run.
    """

    # bound by start(), all present afterwards (the embedded DNS is None when it is off)
    _parts: wiring.Parts
    _repo: Repository
    _store: Store
    _cluster: Store
    _ipam: Ipam
    _drivers: Drivers
    _namespaces: Namespaces
    _dns: EmbeddedDns | None
    _ports: PortRegistry
    _files: SandboxFiles
    _gateway: GatewayPolicy
    _joins: Joins
    _reconciler: Reconciler
    _dns_binding: DnsBinding | None
    _proxies: Proxies

    def __init__(
        self,
        config: Config | None = None,
        *,
        store: Store | None = None,
        cluster_store: Store | None = None,
        ipam: Ipam | None = None,
        drivers: Mapping[str, Driver] | None = None,
        namespaces: Namespaces | None = None,
        dns: EmbeddedDns | None = None,
        proxy_plane: ProxyPlane | None = None,
    ) -> None:
        self.config = config or Config()
        self._given = wiring.Collaborators(
            store=store,
            cluster_store=cluster_store,
            ipam=ipam,
            drivers=drivers,
            namespaces=namespaces,
            dns=dns,
            proxy_plane=proxy_plane,
        )
        self._started = False
        self._gate = OperationGate()
        #: network id -> the lock its deletes take (the entry goes with the last holder or waiter)
        self._deleting: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            if name in _WIRED:
                raise RuntimeError("Controller.start() was not called")
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # --- life cycle -------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        config: Config | None = None,
        *,
        store: Store | None = None,
        cluster_store: Store | None = None,
        ipam: Ipam | None = None,
        drivers: Mapping[str, Driver] | None = None,
        namespaces: Namespaces | None = None,
        dns: EmbeddedDns | None = None,
        proxy_plane: ProxyPlane | None = None,
    ) -> Controller:
        """A started controller (see the class docstring)."""
        ctl = cls(
            config,
            store=store,
            cluster_store=cluster_store,
            ipam=ipam,
            drivers=drivers,
            namespaces=namespaces,
            dns=dns,
            proxy_plane=proxy_plane,
        )
        return await ctl.start()

    async def start(self) -> Controller:
        """Build every collaborator (:func:`libnet.wiring.build`), then serve the
        embedded DNS of the sandboxes that have endpoints again."""
        if self._started:
            return self
        self._bind(wiring.build(self.config, self._given))
        self._files.tidy()  # what a crash left in the sandbox directory pool and trash
        if self._dns_binding is not None:
            self._dns_binding.follow(self._drivers.remote_peers())
            for sandbox_id in await self._dns_binding.restore():
                await self._dns_served(sandbox_id, False)
        for drv in self._drivers.remote_peers():
            drv.peer_listeners.append(self._proxies.peers_changed)
        return self

    def _bind(self, parts: wiring.Parts) -> None:
        self._parts, self.config = parts, parts.config
        self._repo, self._store, self._cluster, self._ipam = parts.repo, parts.store, parts.cluster_store, parts.ipam
        self._drivers, self._namespaces, self._dns, self._ports = (
            parts.drivers,
            parts.namespaces,
            parts.dns,
            parts.ports,
        )
        self._files = SandboxFiles(
            self.config.state_dir, self.config.resolv_conf, parts.repo, parts.dns is not None, EMBEDDED_DNS
        )
        self._gateway = GatewayPolicy(parts.repo, parts.drivers)
        self._joins = Joins(parts.instance, parts.repo, parts.drivers, self._gateway, self._files)
        self._reconciler = Reconciler(
            parts.instance,
            self.config.node_name,
            parts.repo,
            parts.ipam,
            parts.drivers,
            parts.namespaces,
            parts.ports,
            self,
        )
        self._dns_binding = DnsBinding(parts.dns, parts.repo) if parts.dns is not None else None
        self._ports.describe = self._describe_endpoint
        self._proxies = Proxies(
            parts.instance,
            self.config.node_name,
            parts.repo,
            parts.drivers,
            self._joins,
            parts.proxy_plane,
            self,
            self._dns_sync,
        )
        self._started = True

    async def _describe_endpoint(self, endpoint_id: str) -> str | None:
        """An endpoint as users know it, for messages: name, network, sandbox."""
        try:
            ep = await self.repo.endpoint(endpoint_id)
            nw = await self.repo.network(ep.network_id)
        except NotFound:
            return None
        where = f" (sandbox {ep.sandbox_id[:12]})" if ep.sandbox_id else ""
        return f"endpoint {ep.name} on network {nw.name}{where}"

    async def close(self) -> None:
        """Release handles; networks and containers keep working (DNS stops until the next start)."""
        if not self._started:
            return
        await self._proxies.close()
        if self._dns_binding is not None:
            await self._dns_binding.close()
        await self._drivers.close()
        self._files.close()
        for store in self._parts.owned:
            await store.close()
        self._started = False  # a later start() builds everything again (DNS restored with it)

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
        return self._repo

    @property
    def ipam(self) -> Ipam:
        return self._ipam

    @property
    def dns(self) -> EmbeddedDns | None:
        """The embedded DNS (:class:`libnet.dns.service.EmbeddedDns`), None when off."""
        return self._dns

    @property
    def drivers(self) -> Drivers:
        """The drivers by name, with their optional capabilities (:mod:`libnet.drivers.registry`)."""
        return self._drivers

    @property
    def instance(self) -> str:
        """This libnet instance's id (:mod:`libnet.ownership`); set by :meth:`start`."""
        return self._parts.instance

    def driver(self, name: str) -> Driver:
        return self._drivers.driver(name)

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
        space = GLOBAL if scope == "global" else LOCAL
        isolated = drv.capabilities().own_addressing
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
        await drv.check_network(net_info(nw))  # a refusal here has written nothing
        for v6, fam in ((False, fams[0]), (True, fams[1])):
            if fam.subnet and not (v6 and not ipv6):  # an explicit subnet IPAM would refuse: before any write
                opts = pool_options(
                    nw.id,
                    self.instance,
                    gateway=fam.gateway,
                    aux=fam.aux,
                    over_routes=allow_route_overlap,
                    isolated=isolated,
                )
                try:
                    await self._ipam.check_pool(space, fam.subnet, fam.ip_range, options=opts, v6=v6)
                except PoolOverlap as exc:
                    raise await self._named_overlap(exc) from None
        async with Rollback() as undo:
            await self.repo.reserve_name(store, self.repo.network_name_key(name), nw.id, "network", name, self.instance)
            undo.push(lambda: store.delete(self.repo.network_name_key(name)), "free network name")
            for v6, fam in ((False, fams[0]), (True, fams[1])):
                if v6 and not ipv6:
                    continue
                opts = pool_options(
                    nw.id,
                    self.instance,
                    gateway=fam.gateway,
                    aux=fam.aux,
                    over_routes=allow_route_overlap,
                    isolated=isolated and bool(fam.subnet),
                )
                pool = await self._ipam.request_pool(space, fam.subnet, fam.ip_range, options=opts, v6=v6)
                undo.push(lambda p=pool.id: self._ipam.release_pool(p, owner=nw.id), f"release pool {pool.id}")  # type: ignore[misc]
                if v6:
                    nw.ipv6_pool, nw.ipv6_subnet, nw.ipv6_gateway = pool.id, pool.subnet, pool.gateway
                else:
                    nw.ipv4_pool, nw.ipv4_subnet, nw.ipv4_gateway = pool.id, pool.subnet, pool.gateway
            info = net_info(nw)
            await drv.create_network(info)
            undo.push(lambda: drv.delete_network(info), "delete network in driver")
            await self.repo.add_network(nw)
        log.info("network %s (%s) created: %s %s", name, nw.id[:12], nw.ipv4_subnet, nw.ipv6_subnet or "")
        return nw

    async def _named_overlap(self, exc: PoolOverlap) -> PoolOverlap:
        """``exc`` naming the network that holds the overlapping pool (users know networks, not pools)."""
        owner, pool = exc.ids.get("owner"), exc.ids.get("overlaps")
        if not pool:  # not another pool (a host address, a route): says so already
            return exc
        subnet = str(pool).split("/", 1)[-1]
        if owner:
            try:
                holder = await self.repo.network(str(owner))
            except NotFound:
                return exc
            return PoolOverlap(
                f"subnet {exc.ids.get('pool')} overlaps network {holder.name}'s subnet {subnet}", **exc.ids
            )
        return PoolOverlap(
            f"subnet {exc.ids.get('pool')} overlaps subnet {subnet}, held by Docker's use of libnet's IPAM "
            "driver (a network with --ipam-driver libnet)",
            **exc.ids,
        )

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
        crash part way is finished by the next reconcile (rolled forward).  Deletes
        of one network run one after the other: a later one finds it gone
        (``NoSuchNetwork``)."""
        nw = await self.repo.network(ref)
        lock, users_ = self._deleting.setdefault(nw.id, (asyncio.Lock(), [0]))
        users_[0] += 1
        try:
            async with lock:
                # read again: the delete this one waited for took it apart (two at once both took
                # it apart in the driver, and the nftables removals of one failed)
                await self._delete_network(await self.repo.network(nw.id))
        finally:
            users_[0] -= 1
            if not users_[0]:
                self._deleting.pop(nw.id, None)

    async def _delete_network(self, nw: Network) -> None:
        users = [px for px in await self._proxies.all() if nw.id in (px.source, px.target)]
        if users:
            names = ", ".join(px.name for px in users)
            raise ProxyInUse(
                f"network {nw.name} is used by proxy {names}; remove the proxy first (libnet proxy rm NAME)",
                network_id=nw.id,
                proxy_id=users[0].id,
                proxy=names,
            )
        eps = await self.repo.endpoints(nw.id)
        legs = [e for e in eps if e.proxy]  # of a proxy this host does not see (another host's, local scope)
        if legs:
            names = ", ".join(sorted({f"{_proxy_of_leg(e)} (on host {e.node})" for e in legs}))
            raise ProxyInUse(
                f"network {nw.name} is used by proxy {names}; remove the proxy there first (libnet proxy rm NAME)",
                network_id=nw.id,
                proxy_id=legs[0].proxy,
                proxy=names,
            )
        if eps:
            names = ", ".join(f"{e.name} ({e.id[:12]})" for e in eps)
            raise Conflict(
                f"network {nw.name} still has endpoints: {names}; disconnect them first",
                network_id=nw.id,
                endpoints=[e.id for e in eps],
            )
        if nw.removing != self.instance:
            nw = await self.repo.update_network(nw, lambda n: setattr(n, "removing", self.instance))
        await self.driver(nw.driver).delete_network(net_info(nw))
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
        ports: Iterable[PortMapping | dict[str, Any]] = (),
        mac: str | None = None,
    ) -> Endpoint:
        """Create an endpoint with addresses from the network's pools.

        ``aliases``: more DNS names (shared by several endpoints: round robin);
        ``services``: ``"http:80/tcp"`` specs published as SRV records;
        ``mac``: its interface's MAC address (a bridge network's; default: from its IPv4
        address, :func:`libnet.model.mac_from_ipv4`)."""
        return await self._create_endpoint(
            network, name, ipv4=ipv4, ipv6=ipv6, aliases=aliases, services=services, ports=ports, mac=mac
        )

    async def _create_endpoint(
        self,
        network: str | Network,
        name: str,
        *,
        ipv4: str | None = None,
        ipv6: str | None = None,
        aliases: Iterable[str] = (),
        services: Iterable[str] = (),
        ports: Iterable[PortMapping | dict[str, Any]] = (),
        connecting: bool = False,
        proxy: str = "",
        dns: bool = True,
        families: tuple[str, ...] = ("ipv4", "ipv6"),
        mac: str | None = None,
    ) -> Endpoint:
        """:meth:`create_endpoint`; ``connecting``: made by ``connect`` (or the gateway
        bridge policy) for a join that follows -- a crash before the join completes
        leaves an endpoint the next reconcile deletes.  ``proxy``: the id of the proxy
        whose leg it is (its name, made from the proxy's checked one, may be ``NAME.proxy``);
        ``dns``: whether its names are published.  ``network``: a reference, or the record
        the caller's operation read (issue 22: read once per operation)."""
        if not proxy:
            check_name(name, "endpoint")
        alias_list = [check_name(a, "alias") for a in aliases]
        if isinstance(services, str):
            raise InvalidOption("services is a list of NAME:PORT[/PROTO] specs", services=services)
        service_list = [str(parse_service(s)) for s in services]
        mappings = [check_mapping(p) for p in ports]
        own_mac = None if mac is None else check_mac(mac)
        nw = network if isinstance(network, Network) else await self.repo.network(network)
        if own_mac is not None and nw.driver != "bridge":
            raise InvalidOption(
                f"only bridge endpoints take a MAC address (network {nw.name} is {nw.driver})",
                network_id=nw.id,
                mac=own_mac,
            )
        if nw.removing:
            raise Conflict(f"network {nw.name} is being deleted", network_id=nw.id)
        if ipv6 is not None and not nw.ipv6_pool:
            raise InvalidOption("the network has no IPv6", network_id=nw.id)
        check_wanted(nw, ipv4, ipv6)  # before the first write: a refusal leaves no trace
        check_families(nw, mappings)
        drv = self.driver(nw.driver)
        store = self.repo.store(nw.scope)
        ep = Endpoint(
            _new_id(),
            name,
            nw.id,
            mac=own_mac or "",
            aliases=alias_list,
            services=service_list,
            ports=[m.__dict__ for m in mappings],
            connecting=connecting,
            node=self.config.node_name,
            created=time.time(),
            instance=self.instance,
            proxy=proxy,
            dns=dns,
        )
        if await self._create_endpoint_at_once(
            nw, ep, store, {"ipv4": ipv4, "ipv6": ipv6}, families, mappings, own_mac
        ):
            return ep
        async with Rollback() as undo:
            key = self.repo.endpoint_name_key(nw.id, name)
            await self.repo.reserve_name(store, key, ep.id, "endpoint", name, self.instance)
            undo.push(lambda: store.delete(key), "free endpoint name")
            if mappings:
                mappings = await self._ports.reserve(ep.id, mappings)
                undo.push(lambda: self._ports.release(ep.id, mappings), "free host ports")
                ep.ports = [m.__dict__ for m in mappings]
            for pool, wanted, attr in ((nw.ipv4_pool, ipv4, "ipv4"), (nw.ipv6_pool, ipv6, "ipv6")):
                if not pool or attr not in families:
                    continue
                addr = await self._ipam.request_address(pool, wanted, address_options(ep.id, self.instance))
                undo.push(lambda p=pool, a=addr: self._release(p, a, ep.id), f"release {addr}")  # type: ignore[misc]
                setattr(ep, attr, addr)
            ep.mac = own_mac or (proxy_leg_mac(ep.ipv4) if proxy else mac_from_ipv4(ep.ipv4))
            await drv.create_endpoint(net_info(nw), ep_info(ep))
            undo.push(lambda: drv.delete_endpoint(net_info(nw), ep_info(ep)), "driver endpoint")
            await self.repo.add_endpoint(nw, ep)
        return ep

    async def _create_endpoint_at_once(
        self,
        nw: Network,
        ep: Endpoint,
        store: Store,
        wanted: dict[str, str | None],
        families: tuple[str, ...],
        mappings: list[PortMapping],
        mac: str | None = None,
    ) -> bool:
        """:meth:`_create_endpoint`'s writes in one transaction (issue 22: name, each address and
        the records were four commits): the addresses are chosen first and held in the
        allocator's memory, the driver is asked, then name, addresses, id index and record are
        written together.  A refusal (``NameInUse``, ``AddressInUse``, the driver's) leaves
        nothing, as before.  False, with nothing done, where that cannot be (an IPAM without
        ``allocation_write``, a store without batches, a pool in another store), or after a
        chosen address turned out to be another host's (undone): the caller goes one by one."""
        allocation_write = getattr(self._ipam, "allocation_write", None)
        if allocation_write is None or getattr(store, "atomic_batch", None) is None:
            return False
        drv = self.driver(nw.driver)
        name_key = self.repo.endpoint_name_key(nw.id, ep.name)
        planned: list[Any] = []
        try:
            async with Rollback() as undo:
                if mappings:
                    mappings = await self._ports.reserve(ep.id, mappings)
                    undo.push(lambda: self._ports.release(ep.id, mappings), "free host ports")
                    ep.ports = [m.__dict__ for m in mappings]
                for pool, attr in ((nw.ipv4_pool, "ipv4"), (nw.ipv6_pool, "ipv6")):
                    if not pool or attr not in families:
                        continue
                    plan = await allocation_write(pool, wanted[attr], address_options(ep.id, self.instance))
                    planned.append(plan)
                    if plan.store is not store:
                        raise _OneByOne
                    setattr(ep, attr, plan.cidr)
                ep.mac = mac or (proxy_leg_mac(ep.ipv4) if ep.proxy else mac_from_ipv4(ep.ipv4))
                await drv.create_endpoint(net_info(nw), ep_info(ep))
                undo.push(lambda: drv.delete_endpoint(net_info(nw), ep_info(ep)), "driver endpoint")
                name = self.repo.name_write(name_key, ep.id, self.instance)
                try:
                    written = await self.repo.add_endpoint(nw, ep, before=[name, *(p.write for p in planned)])
                except KeyExists as exc:
                    if exc.ids.get("key") == name_key:
                        raise await self.repo.name_in_use(store, name_key, "endpoint", ep.name) from None
                    lost = next((p for p in planned if p.write.key == exc.ids.get("key")), None)
                    if lost is None:
                        raise
                    lost.lost()
                    planned.remove(lost)
                    if lost.wanted:
                        raise await lost.in_use() from None
                    raise _OneByOne from None
        except BaseException as exc:
            for plan in planned:
                plan.dropped()
            if isinstance(exc, _OneByOne):
                ep.ipv4 = ep.ipv6 = None
                return False
            raise
        for i, plan in enumerate(planned):
            plan.made(written[1 + i])  # after the name's
        return True

    async def _release(self, pool: str, address: str, owner: str) -> None:
        """Release ``address`` if ``owner`` still holds it (gone or taken over is fine)."""
        await release_address(self._ipam, pool, address, owner)

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
        leaves its sandbox first).  A proxy's leg is refused (``ProxyInUse``):
        ``delete_proxy`` removes it.

        Marked as being deleted by this instance first, so a crash part way is
        finished by the next reconcile; addresses are released only while the
        endpoint still holds them."""
        ep = await self.endpoint(ref, network)
        await self._refuse_proxy_leg(ep)
        await self._delete_endpoint(ep, force=force)

    async def _refuse_proxy_leg(self, ep: Endpoint) -> None:
        """``ProxyInUse`` if ``ep`` is a working proxy's leg (by its record, or as an
        endpoint joined to a proxy's sandbox: legs stored before they carried ``proxy``)."""
        if ep.removing == self.instance:  # libnet's own removal under way (a reconcile finishing it)
            return
        px = await self._proxies.owns_endpoint(ep)
        if px is None and ep.proxy and ep.node != self.config.node_name:  # its record is in its host's store
            name = _proxy_of_leg(ep)
            raise ProxyInUse(
                f"endpoint {ep.id[:12]} is a leg of proxy {name} on host {ep.node}; remove the proxy there "
                f"(libnet proxy rm {name})",
                endpoint_id=ep.id,
                proxy_id=ep.proxy,
                proxy=name,
            )
        if px is not None and not px.creating and not px.removing:
            raise ProxyInUse(
                f"endpoint {ep.name} ({ep.id[:12]}) is a leg of proxy {px.name}; remove the proxy instead "
                f"(libnet proxy rm {px.name})",
                endpoint_id=ep.id,
                proxy_id=px.id,
                proxy=px.name,
            )

    async def delete_proxy_leg(self, endpoint_id: str) -> None:
        """Delete a proxy's leg, joined or not (:mod:`libnet.proxies` only: its teardown
        and rebuild; everyone else goes through :meth:`delete_proxy`)."""
        await self._delete_endpoint(await self.repo.endpoint(endpoint_id), force=True)

    async def create_proxy_leg(
        self,
        network: str,
        name: str,
        proxy: str,
        *,
        dns: bool,
        aliases: Iterable[str] = (),
        services: Iterable[str] = (),
        families: tuple[str, ...] = ("ipv4", "ipv6"),
    ) -> Endpoint:
        """An endpoint that is proxy ``proxy``'s leg on ``network`` (:mod:`libnet.proxies` only);
        ``families``: the address families it gets (of those the network has)."""
        return await self._create_endpoint(
            network, name, aliases=aliases, services=services, proxy=proxy, dns=dns, families=families
        )

    async def _delete_endpoint(self, ep: Endpoint, *, force: bool, network: Network | None = None) -> None:
        """``network``: the endpoint's network as the caller's operation read it (only
        fields a network never changes are used: driver, pools, scope)."""
        if ep.sandbox_id and force:
            await self.leave(ep.id)
            ep = await self.repo.endpoint(ep.id)
        if ep.sandbox_id:
            raise Conflict(
                f"endpoint {ep.name} is joined to sandbox {ep.sandbox_id[:12]}; leave first",
                endpoint_id=ep.id,
                sandbox_id=ep.sandbox_id,
            )
        nw = network if network is not None and network.id == ep.network_id else None
        if nw is None:
            nw = await self.repo.network(ep.network_id)
        if ep.removing != self.instance:
            ep = await self.repo.update_endpoint(ep, _removing_unjoined(self.instance))
        await self.driver(nw.driver).delete_endpoint(net_info(nw), ep_info(ep))
        addresses = [(pool, addr) for pool, addr in ((nw.ipv4_pool, ep.ipv4), (nw.ipv6_pool, ep.ipv6)) if pool and addr]
        if ep.ports:
            await self._ports.release(ep.id, [PortMapping(**p) for p in ep.ports])
        if await self._delete_endpoint_records(nw, ep, addresses):
            return
        for pool, addr in addresses:  # one by one, as on a store without transactions
            await self._release(pool, addr, ep.id)
        await self.repo.delete_endpoint(nw, ep)

    async def _delete_endpoint_records(self, nw: Network, ep: Endpoint, addresses: list[tuple[str, str]]) -> bool:
        """Release the endpoint's ``addresses`` (those it still holds) and delete its records in
        one transaction (issue 22: three commits were a fifth of a disconnect's store time).
        False, with nothing changed, where that cannot be done (an IPAM without
        ``release_write``, a store without batches, the addresses in another store, one that
        changed hands meanwhile): the caller does it one by one."""
        store = self.repo.store(nw.scope)
        if getattr(store, "atomic_batch", None) is None:
            return False
        releases = await self._release_writes(store, ep.id, addresses)
        if releases is None:
            return False
        writes, done = releases
        try:
            await self.repo.delete_endpoint(nw, ep, before=writes)
        except (KeyModified, KeyNotFound):  # an address changed hands since it was read
            return False
        for released in done:
            released()
        return True

    async def _release_writes(
        self, store: Store, owner: str, addresses: list[tuple[str, str]]
    ) -> tuple[list[Write], list[Callable[[], None]]] | None:
        """The checked deletes releasing ``owner``'s ``addresses`` ((pool, address) pairs; those
        it no longer holds left out) for a transaction of ``store``, and what to call once it
        is made; None where they cannot go in one (an IPAM without ``release_write``, an
        address in another store)."""
        release_write = getattr(self._ipam, "release_write", None)
        if release_write is None:
            return None
        writes, done = [], []
        for pool, addr in addresses:
            try:
                where, write, released = await release_write(pool, addr, owner)
            except (AddressNotAllocated, NoSuchPool):  # gone or taken over is fine (as _release)
                continue
            if where is not store:
                return None
            writes.append(write)
            done.append(released)
        return writes, done

    @operation
    async def remove_node(self, node: str) -> list[str]:
        """Delete the endpoints a host that is gone for good left in the cluster store
        (``libnet node rm``): their addresses and names are free again and their peer
        records go.  The caller checks that the host is gone (not merely restarting);
        the host's own kernel is not touched; its proxies' records go too.  Returns the endpoint ids removed."""
        if node == self.config.node_name:
            raise BadRequest("a host cannot remove itself; run this on another host", node=node)
        gone = []
        for ep in await self.repo.endpoints():
            if ep.node != node:
                continue
            if ep.sandbox_id:  # its sandbox was on the dead host: nothing here to leave
                ep = await self.repo.update_endpoint(ep, unjoined)
            await self._delete_endpoint(ep, force=False)  # a leg of its proxies too
            gone.append(ep.id)
        await self._proxies.forget_node(node)
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
        files: bool = True,
        origin: str = "",
    ) -> Sandbox:
        """A sandbox in a new namespace, or in an existing one given by path
        (``/var/run/netns/NAME``, ``/proc/PID/ns/net``).  ``dns``,
        ``dns_search``, ``dns_options``: its own DNS servers (the embedded
        server's upstreams for it), search domains and resolv.conf options,
        as Docker's ``--dns*`` (see :mod:`libnet.sandbox_files`).  ``files``:
        write its resolv.conf and hosts under the state dir (False when the
        runtime writes the container's own, as CNI runtimes do).  ``origin``:
        who asked for it (``cni``: a CNI ADD; see :mod:`agent.cni_api`)."""
        sid = _new_id() if id is None else check_sandbox_id(id)
        if hostname is not None:
            check_name(hostname, "host")
        dns, dns_search, dns_options = sandbox_files.check_dns(dns, dns_search, dns_options)
        if netns is not None and (not isinstance(netns, str) or not netns.startswith("/")):
            raise NotANamespace(f"netns {netns!r} must be an absolute path to a network namespace", netns=str(netns))
        # an id made here (256 random bits) is nobody's; a given one is checked before anything is
        # made (add_sandbox's create-only write refuses a taken id too, for a race)
        if id is not None and await self.repo.has_sandbox(sid):
            raise Conflict("a sandbox with that id exists", sandbox_id=sid)
        async with Rollback() as undo:
            if netns is None:
                assert self.config.sandbox_prefix is not None
                name = sandbox_namespace(self.config.sandbox_prefix, sid)
                path = await asyncio.to_thread(self._namespaces.create, name, sid)
                undo.push(lambda: asyncio.to_thread(self._namespaces.delete, path), "delete namespace")
                owned = True
                netns_id = self._namespaces.identity(path)
                # a new namespace: a claim under its identity is a gone namespace's (taken over)
                claim = None if netns_id is None else (await self.repo.netns_claim(netns_id))[0]
            else:
                netns_id, claim = await self._external_netns(netns)
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
                files=bool(files),
                origin=str(origin),
                netns_id=netns_id or "",
                instance=self.instance,
            )
            for attempt in range(3):
                try:
                    await self.repo.add_sandbox(sb, claim)
                    break
                except (Conflict, KeyNotFound) as exc:
                    if not (netns_id and exc.ids.get("key") == self.repo.netns_key(netns_id)):
                        if isinstance(exc, KeyNotFound):
                            raise
                        raise Conflict("a sandbox with that id exists", sandbox_id=sid) from None
                    if claim is None or isinstance(exc, KeyExists) or attempt == 2:
                        raise await self._namespace_taken(path, netns_id) from None
                    # the stale claim read was removed (its holder deleted) or taken over
                    # meanwhile: read it again and decide on the current one
                    claim, holder = await self.repo.netns_claim(netns_id)
                    if not owned:
                        self._namespaces.check_external(
                            path, {holder.id: holder.netns} if holder and holder.netns else {}
                        )
            # files that cannot be written (a read-only state dir, a symlink in the directory's place)
            # refuse the sandbox: no record of a sandbox whose namespace the rollback removes
            undo.push(lambda: self.repo.delete_sandbox(sb), "delete sandbox record")

            async def remove_files() -> None:  # what was written before the failure
                self._files.remove(sid)

            undo.push(remove_files, "remove sandbox files")
            await self._files.write(sb)
        return sb

    async def check_netns(self, netns: object) -> None:
        """Whether ``netns`` can be a new sandbox's namespace, checked as :meth:`create_sandbox` checks
        it, nothing written: ``NotANamespace`` (an absolute path to a network namespace, not the
        host's, not an overlay's), ``Conflict`` (``holder``: the sandbox on it already)."""
        if not isinstance(netns, str) or not netns.startswith("/"):
            raise NotANamespace(f"netns {netns!r} must be an absolute path to a network namespace", netns=str(netns))
        await self._external_netns(netns)

    async def _external_netns(self, netns: str) -> tuple[str | None, KVPair | None]:
        """A given namespace's identity and its claim in the store, once checked: a network
        namespace, not the host's, not another sandbox's (README, "Names")."""
        # the holder is found by the claim on the namespace's identity (O(1), issue 22)
        if not self.repo.namespaces_indexed:
            await self.repo.index_namespaces(self._namespaces.identity)
        netns_id = self._namespaces.identity(netns)
        claim, holder = (None, None) if netns_id is None else await self.repo.netns_claim(netns_id)
        # a few stat calls: no thread hand-over; Conflict if the holder's path still shows it
        self._namespaces.check_external(netns, {holder.id: holder.netns} if holder and holder.netns else {})
        return netns_id, claim

    async def _namespace_taken(self, path: str, netns_id: str) -> Conflict:
        """The ``Conflict`` for a namespace another sandbox claimed while this one was made."""
        holder = (await self.repo.netns_claim(netns_id))[1]
        return Conflict(
            f"netns path {path} is the namespace of sandbox {holder.id if holder else 'being made'} already",
            netns=path,
            holder=holder.id if holder else "",
        )

    async def sandboxes(self) -> list[Sandbox]:
        return await self.repo.sandboxes()

    async def sandbox(self, ref: str) -> Sandbox:
        return await self.repo.sandbox(ref)

    @operation
    async def delete_sandbox(self, ref: str) -> None:
        """Leave and delete the sandbox's endpoints, then remove it (and its namespace if libnet made it).
        A proxy's sandbox is refused (``Conflict``): ``delete_proxy`` removes it."""
        sb = await self.repo.sandbox(ref)
        await self._refuse_proxy_sandbox(sb.id)
        await self.remove_sandbox(sb.id)

    async def _refuse_proxy_sandbox(self, sandbox_id: str) -> None:
        """``Conflict`` if the sandbox is a working proxy's: only ``delete_proxy`` takes it apart."""
        px = await self._proxies.owns_sandbox(sandbox_id)
        if px is not None and not px.creating and not px.removing:
            raise ProxyInUse(
                f"sandbox {sandbox_id[:12]} is proxy {px.name}'s; remove the proxy instead (libnet proxy rm {px.name})",
                sandbox_id=sandbox_id,
                proxy_id=px.id,
                proxy=px.name,
            )

    async def remove_sandbox(self, sandbox_id: str) -> None:
        """:meth:`delete_sandbox` without the proxy check (a proxy's own teardown)."""
        sb = await self.repo.sandbox(sandbox_id)
        await self._refuse_if_degraded(sb)  # before the local mark that reconcile would roll forward
        if sb.removing != self.instance:
            sb = await self.repo.update_sandbox(sb, _removing(self.instance))
        for eid in reversed(sb.endpoints):
            with suppress(NotFound):
                await self._mark_removing(eid)
                await self.leave(eid)
                await self._delete_endpoint(await self.repo.endpoint(eid), force=False)
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
        if sb.files:
            self._files.remove(sb.id)
        self._files.unserved.discard(sb.id)  # (files=False ones too: their DNS is served all the same)
        await self.repo.delete_sandbox(sb)
        self._joins.forget(sb.id)

    async def _refuse_if_degraded(self, sb: Sandbox) -> None:
        """``Unavailable`` when removing ``sb`` needs a cluster store that cannot be reached
        (degraded mode): refused before anything is written, also locally."""
        from libnet.store.mirror import MirroredStore

        for eid in sb.endpoints:
            with suppress(NotFound):
                ep = await self.repo.endpoint(eid)
                store = self.repo.store((await self.repo.network(ep.network_id)).scope)
                if isinstance(store, MirroredStore) and store.degraded:
                    raise store.refusal()

    # --- join and leave ---------------------------------------------------------

    @operation
    async def join(self, endpoint: str, sandbox: str, *, ifname: str | None = None) -> Endpoint:
        """Plug an endpoint into a sandbox (idempotent for the same pair).  ``ifname``: its
        interface's name in the sandbox (default the first free ``ethN``; one in use is a ``Conflict``).

        A sandbox on a non-internal network whose driver has no way out of its
        own (overlay) is also connected to this host's gateway bridge
        network, which gives it a default route and masquerade.
        """
        if ifname is not None:
            check_ifname(ifname)
        return await self._join(endpoint, sandbox, ifname=ifname)

    async def _join(
        self,
        endpoint: str | Endpoint,
        sandbox: str | Sandbox,
        *,
        ifname: str | None,
        network: Network | None = None,
        made: bool = False,
    ) -> Endpoint:
        """:meth:`join`; records the caller's operation read already are passed on, ``made``:
        the endpoint is the record the operation stored itself (see :meth:`libnet.joins.Joins.join`)."""
        reads, sb = Reads(self.repo), None  # the records the join wrote, shared by the next two steps
        ep = await self._joins.join(endpoint, sandbox, ifname=ifname, network=network, made=made, reads=reads)
        await self._proxies.refresh(ep.network_id)
        reads.keep(ep, network)  # as the join wrote it, and as this operation read it
        try:
            sb = await self._sync_gateway_bridge(ep.sandbox_id, reads)
        except LibnetError as exc:  # the network works; only the way out is missing
            log.warning("sandbox %s: no gateway bridge: %s", (ep.sandbox_id or "")[:12], exc)
        if sb is not None and not reads.current(sb):  # another join or leave wrote it meanwhile
            sb = None
        await self._dns_sync(ep.sandbox_id, sb, reads)
        return ep

    @operation
    async def publish(self, endpoint: str, ports: Iterable[PortMapping | dict[str, Any]]) -> Endpoint:
        """Replace the host ports an endpoint publishes (``[]``: none); see
        :meth:`libnet.joins.Joins.publish`.  Checked like ``create_endpoint``'s
        ``ports``; ``Conflict`` naming the holder when a port is taken."""
        mappings = [check_mapping(p) for p in ports]
        return await self._joins.publish(endpoint, mappings, self._ports)

    async def _dns_sync(self, sandbox_id: str | None, sb: Sandbox | None = None, reads: Reads | None = None) -> None:
        """Serve the sandbox's names.  ``sb``, ``reads``: its record and the records the
        caller's step read since the sandbox last changed (when it changed nothing after)."""
        if self._dns_binding is None or not sandbox_id:
            return
        if sb is None:
            reads = None  # the step changed the sandbox: everything is read afresh
        try:
            await self._dns_binding.sandbox(sb if sb is not None else await self.repo.sandbox(sandbox_id), reads)
        except (LibnetError, OSError) as exc:  # names do not resolve; the network itself works
            log.warning("sandbox %s: embedded DNS not served: %s", sandbox_id[:12], exc)
            if not isinstance(exc, NotFound):  # (the sandbox gone meanwhile: nothing to serve)
                await self._dns_served(sandbox_id, False)
        else:
            await self._dns_served(sandbox_id, True)

    async def _dns_served(self, sandbox_id: str, served: bool) -> bool:
        """Whether the sandbox's embedded DNS server is served, as just found: one that is not
        gets a resolv.conf naming the upstream servers (its own ``--dns``, else the host's) instead
        of an address where nothing listens (the container had no DNS at all), and the embedded
        server's address again once it is served.  Returns whether that changed."""
        if served == (sandbox_id not in self._files.unserved):
            return False
        if served:
            self._files.unserved.discard(sandbox_id)
        else:
            self._files.unserved.add(sandbox_id)
            log.warning("sandbox %s: resolv.conf names the upstream servers until its DNS is served", sandbox_id[:12])
        try:
            await self._joins.write_files(sandbox_id)
        except LibnetError as exc:  # a read-only state dir, say: the files keep their text
            log.warning("sandbox %s: resolv.conf not rewritten: %s", sandbox_id[:12], exc)
        return True

    @operation
    async def leave(self, endpoint: str, sandbox: str | None = None) -> Endpoint:
        """Unplug an endpoint from its sandbox; not joined is fine."""
        return await self._leave(endpoint, sandbox)

    async def _leave(
        self,
        endpoint: str | Endpoint,
        sandbox: str | None = None,
        *,
        network: Network | None = None,
        finish: Finish | None = None,
    ) -> Endpoint:
        """:meth:`leave`; ``endpoint`` and ``network`` may be records the caller's
        operation read already, ``finish`` the store step in place of the unjoin
        (see :meth:`libnet.joins.Joins.leave`)."""
        before = endpoint if isinstance(endpoint, Endpoint) else await self.repo.endpoint(endpoint)
        sandbox_id = before.sandbox_id
        if sandbox is not None and sandbox_id:  # asked from outside (the API), not a teardown of libnet's
            await self._refuse_proxy_sandbox(sandbox_id)
        reads = Reads(self.repo)
        if sandbox_id:  # a backend of a proxy stops getting new connections before it is unplugged
            async with self._proxies.leaving(before.network_id, before.id):
                ep = await self._joins.leave(before, sandbox, network=network, finish=finish, reads=reads)
        else:
            ep = await self._joins.leave(before, sandbox, network=network, finish=finish, reads=reads)
        sb = None  # the sandbox as read after the leave, if nothing changed it since
        left = network if network is not None and network.id == ep.network_id else None
        if left is None and sandbox_id:
            with suppress(NotFound):
                left = await self.repo.network(ep.network_id)
        if sandbox_id and not (left is not None and gateway.named_gateway_bridge(left)):
            try:
                sb = await self._sync_gateway_bridge(sandbox_id, reads)
            except LibnetError as exc:
                log.warning("sandbox %s: gateway bridge not released: %s", sandbox_id[:12], exc)
        if sandbox_id and self._dns_binding is not None:
            try:
                await self._dns_binding.left(ep, sandbox_id, sb)
            except (LibnetError, OSError) as exc:  # the leave is done; only names fail (see _dns_sync)
                log.warning("sandbox %s: embedded DNS not served: %s", sandbox_id[:12], exc)
                await self._dns_served(sandbox_id, False)
            else:
                await self._dns_served(sandbox_id, True)
        return ep

    async def _sync_gateway_bridge(self, sandbox_id: str | None, reads: Reads | None = None) -> Sandbox | None:
        """Carry out the gateway bridge policy (:mod:`libnet.gateway`) for a sandbox:
        connect it when one of its networks needs the gateway bridge, disconnect
        it when none does any more.  Returns the sandbox's record as read here when
        nothing was changed (None when something was, or it is gone); ``reads``: the
        step's shared reads (see :class:`libnet.repository.Reads`)."""
        if not sandbox_id:
            return None
        try:  # as the step's join wrote it (issue 22: read again right after), else read
            sb = await (reads.sandbox(sandbox_id) if reads is not None else self.repo.sandbox(sandbox_id))
        except NotFound:
            return None
        need = await self._gateway.need(sb, reads)
        if need.connect:
            if need.network_id is None:
                with suppress(NameInUse):  # made by a concurrent join
                    await self.create_network(
                        gateway.GATEWAY_BRIDGE,
                        gateway.GATEWAY_BRIDGE_DRIVER,
                        options=dict(gateway.GATEWAY_BRIDGE_OPTIONS),
                        labels=dict([gateway.GATEWAY_ROLE]),
                    )
            gw_ep = await self._create_endpoint(gateway.GATEWAY_BRIDGE, gateway.endpoint_name(sb.id), connecting=True)
            await self._joins.join(gw_ep.id, sb.id)
            return None
        if need.disconnect is not None:
            await self._mark_removing(need.disconnect.id)
            await self._joins.leave(need.disconnect.id)
            await self.delete_endpoint(need.disconnect.id)
            return None
        return sb

    @operation
    async def connect(
        self, /, network: str, sandbox: str, name: str | None = None, ifname: str | None = None, **endpoint_args: Any
    ) -> Endpoint:
        """Create an endpoint on ``network`` and join it to ``sandbox`` (like ``docker network connect``),
        as interface ``ifname`` (see :meth:`join`).

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
        if ifname is not None:
            check_ifname(ifname)
        ep = await self._create_endpoint(nw, name, connecting=True, **endpoint_args)
        try:
            return await self._join(ep, sb, ifname=ifname, network=nw, made=True)
        except BaseException as failure:
            try:  # undo: a join that got as far as the store is left first
                with suppress(NotFound):
                    joined_to = (await self.repo.endpoint(ep.id)).sandbox_id
                    if joined_to == sb.id:
                        await self.leave(ep.id)
                    if joined_to in (None, sb.id):  # not when another operation joined it elsewhere meanwhile
                        await self.delete_endpoint(ep.id)
            except Exception as exc:  # the failure is what the caller must see; the rest is reconcile's
                log.error("connect %s to %s failed (%r); undoing it failed too: %s", sb.id[:12], nw.name, failure, exc)
            raise

    @operation
    async def disconnect(self, network: str, sandbox: str) -> None:
        """Leave and delete the sandbox's endpoint on ``network`` (not of a proxy's sandbox: ``Conflict``)."""
        nw = await self.repo.network(network)
        sb = await self.repo.sandbox(sandbox)
        await self._refuse_proxy_sandbox(sb.id)
        not_connected = NotFound(
            f"sandbox {sb.id[:12]} is not connected to network {nw.name}", network_id=nw.id, sandbox_id=sb.id
        )
        for eid in list(sb.endpoints):
            try:
                ep = await self.repo.endpoint(eid)
            except NoSuchEndpoint:  # deleted since the sandbox was read (a racing disconnect)
                continue
            if ep.network_id == nw.id:
                try:
                    await self._disconnect(nw, ep)
                except NoSuchEndpoint:
                    if await self._endpoint_exists(ep.id):
                        raise
                    raise not_connected from None  # a racing disconnect deleted it first
                return
        raise not_connected

    async def _endpoint_exists(self, endpoint_id: str) -> bool:
        try:
            await self.repo.endpoint(endpoint_id)
        except NoSuchEndpoint:
            return False
        return True

    async def _disconnect(self, nw: Network, ep: Endpoint) -> None:
        """Leave and delete ``ep`` (on ``nw``, as the operation read both): marked first, so a
        crash from there on is rolled forward; its records and addresses go in the leave's
        own transaction where that can be done (:meth:`_unjoin_and_delete`)."""
        ep = await self._mark_removing(ep)
        deleted: list[bool] = []

        async def finish(joined: Endpoint, sb: Sandbox) -> Sandbox | None:
            stored = await self._unjoin_and_delete(nw, joined, sb)
            deleted.append(stored is not None)
            return stored

        await self._leave(ep, network=nw, finish=finish)
        if any(deleted):
            return
        ep = await self.repo.endpoint(ep.id)  # as the leave left it
        await self._refuse_proxy_leg(ep)
        await self._delete_endpoint(ep, force=False, network=nw)

    async def _unjoin_and_delete(self, nw: Network, ep: Endpoint, sb: Sandbox) -> Sandbox | None:
        """A disconnect's store step once the driver let go of the endpoint (issue 22): the
        endpoint out of the sandbox's record and deleted, its addresses released, in one
        transaction (:meth:`Repository.unjoin_and_delete_endpoint`).  The sandbox as stored;
        None, with nothing changed, where that cannot be done (published ports, a proxy's leg,
        an IPAM without ``release_write``, the driver refusing the delete, a record changed
        meanwhile): the endpoint is then recorded as unjoined and deleted the usual way."""
        store = self.repo.store(nw.scope)
        if ep.ports or ep.removing != self.instance or store is not self.repo.local:
            return None
        if ep.proxy or getattr(self._ipam, "release_write", None) is None:
            return None  # a proxy's leg (the usual way, with its checks); an IPAM of one call per release
        try:  # the usual way's first step, which it will try again if this fails
            await self.driver(nw.driver).delete_endpoint(net_info(nw), ep_info(ep))
        except (LibnetError, OSError):
            return None
        addresses = [(pool, addr) for pool, addr in ((nw.ipv4_pool, ep.ipv4), (nw.ipv6_pool, ep.ipv6)) if pool and addr]
        releases = await self._release_writes(store, ep.id, addresses)
        if releases is None:
            return None
        writes, done = releases
        ep_id = ep.id
        stored = await self.repo.unjoin_and_delete_endpoint(
            nw, ep, sb, lambda s: s.endpoints.remove(ep_id) if ep_id in s.endpoints else None, before=writes
        )
        if stored is not None:
            for released in done:
                released()
        return stored

    async def _mark_removing(self, endpoint: str | Endpoint) -> Endpoint:
        """Mark an endpoint (a reference, or the record the operation read) as being removed by
        this instance; returns it as stored."""
        ep = endpoint if isinstance(endpoint, Endpoint) else await self.repo.endpoint(endpoint)
        if ep.removing != self.instance:
            ep = await self.repo.update_endpoint(ep, _removing(self.instance))
        return ep

    # --- reconcile --------------------------------------------------------------

    async def reconcile(self) -> ReconcileReport:
        """Make store and kernel consistent after a crash or drift (:mod:`libnet.reconcile`).

        Store first: endpoints a crashed ``connect`` left half-made are
        deleted (their addresses released), sandbox endpoint lists are
        repaired, IPAM pools and addresses no stored object owns are
        released, stale name reservations dropped.  Then each driver removes
        kernel objects no stored object owns and reports missing parts.  Last, what a
        crash left undone after a store step is done in each of this instance's sandboxes:
        the gateway bridge of a connect or disconnect (:meth:`_repair_gateway_bridge`), then
        (:meth:`libnet.joins.Joins.repair`) the default routes' hand-over of a leave and the
        sandbox's files (a join's or leave's; a new sandbox's never written).
        """
        async with self._gate.exclusive():
            report = await self._reconciler.run()
            await self._proxies.reconcile(report)
            await self._repair_sandboxes(report)
            return report

    async def _repair_sandboxes(self, report: ReconcileReport) -> None:
        endpoints = {e.id: e for e in await self.repo.endpoints()}
        networks = {n.id: n for n in await self.repo.networks()}
        for sb in await self.repo.sandboxes():
            repaired, missing = [], []
            if sb.id in self._files.unserved and sb.endpoints and not sb.removing and self._namespaces.exists(sb.netns):
                await self._dns_sync(sb.id, sb)  # descriptors freed since, say
                if sb.id not in self._files.unserved:
                    said = " (resolv.conf points at it)" if sb.files else ""
                    repaired.append(f"sandbox {sb.id[:12]}: embedded DNS served again{said}")
            try:
                line = await self._repair_gateway_bridge(sb, endpoints, networks)
                if line is not None:
                    repaired.append(line)
                    endpoints = {e.id: e for e in await self.repo.endpoints()}  # a leg made or deleted
                    networks = {n.id: n for n in await self.repo.networks()}  # the gateway bridge made
            except LibnetError as exc:
                missing.append(f"sandbox {sb.id[:12]}: gateway bridge not repaired: {exc.message}")
            try:
                done, left = await self._joins.repair(sb.id, endpoints)
                repaired, missing = repaired + done, missing + left
            except LibnetError as exc:  # one sandbox's trouble (a read-only state dir) stops no other
                missing.append(f"sandbox {sb.id[:12]}: not repaired: {exc.message}")
            report.repaired += repaired
            report.missing += missing
            for line in repaired + missing:
                log.warning("reconcile: %s", line)

    async def _repair_gateway_bridge(
        self, sb: Sandbox, endpoints: Mapping[str, Endpoint], networks: Mapping[str, Network]
    ) -> str | None:
        """What a kill -9 between a connect's or disconnect's store step and its gateway bridge
        step (:meth:`_sync_gateway_bridge`) left, done now: a sandbox on a network that needs the
        gateway bridge is connected to it (it had no way out), one whose networks need it no
        more loses its leg there.  Only a sandbox of this instance whose every endpoint this
        instance made, none marked by an operation, none a proxy's leg (a proxy's sandbox never
        gets the gateway bridge).  ``endpoints``, ``networks``: every stored one by id, as the
        caller read them.  Returns the report line of what was done, None if nothing was."""
        if sb.removing or not sb.netns or sb.instance not in ("", self.instance) or not sb.endpoints:
            return None
        pairs = []
        for eid in sb.endpoints:
            ep = endpoints.get(eid)
            nw = networks.get(ep.network_id) if ep is not None else None
            if ep is None or nw is None or ep.instance != self.instance:
                return None
            if ep.leaving or ep.removing or ep.connecting or ep.proxy:
                return None
            pairs.append((ep, nw))
        needed, present = self._gateway.decide(pairs)
        if needed == (present is not None) or await self._proxies.owns_sandbox(sb.id) is not None:
            return None
        if not self._namespaces.exists(sb.netns):  # said already ("namespace ... is gone"): nothing to plug into
            return None
        await self._sync_gateway_bridge(sb.id)
        if needed:
            return f"sandbox {sb.id[:12]}: connected to the gateway bridge (its way out)"
        return f"sandbox {sb.id[:12]}: left the gateway bridge (none of its networks needs it)"

    # --- proxies ----------------------------------------------------------------

    @operation
    async def create_proxy(
        self, name: str, source: str, target: str, services: list[str], *, listen_port: int | None = None
    ) -> Proxy:
        """A proxy forwarding ``services`` (``"ALIAS:PORT[/tcp|udp]"``) from network
        ``source`` to the endpoints on ``target`` named or aliased ALIAS
        (:mod:`libnet.proxies`).  ``listen_port``: the port clients use (one service
        only; default its port).  ``InvalidOption``/``InvalidName`` for bad input,
        ``NoSuchNetwork``, ``NameInUse``; a refusal changes nothing."""
        return await self._proxies.create(name, source, target, services, listen_port)

    async def proxies(self) -> list[Proxy]:
        """All proxies, by name."""
        return await self._proxies.all()

    async def proxy(self, ref: str) -> Proxy:
        """A proxy by id, name or unique id prefix (``NoSuchProxy``)."""
        return await self._proxies.get(ref)

    async def inspect_proxy(self, ref: str) -> dict[str, Any]:
        """A proxy's record with its legs' addresses and, on its host, its current backends."""
        return await self._proxies.inspect(ref)

    @operation
    async def delete_proxy(self, ref: str) -> None:
        """Remove a proxy: its table, sandbox, legs and record (on its own host only)."""
        await self._proxies.delete(ref)


class _OneByOne(Exception):
    """:meth:`Controller._create_endpoint_at_once` cannot make it in one transaction: undone,
    the caller goes one by one."""


def _removing_unjoined(instance: str) -> Callable[[Endpoint], None]:
    """Mark an endpoint as being deleted, on its record as stored: ``Conflict`` if a join wrote it
    joined since the deletion read it (a join marks nothing first, and holds the sandbox's lock only)."""

    def mark(ep: Endpoint) -> None:
        if ep.sandbox_id:
            raise Conflict(
                f"endpoint {ep.name} is joined to sandbox {ep.sandbox_id[:12]}; leave first",
                endpoint_id=ep.id,
                sandbox_id=ep.sandbox_id,
            )
        ep.removing = instance

    return mark


def _removing(instance: str) -> Callable[[Any], None]:
    def mark(obj: Any) -> None:
        obj.removing = instance

    return mark
