"""The wiring: every collaborator of the controller, built in one go from Config.

:func:`build` is the one place that turns a :class:`~libnet.config.Config`
into working parts -- stores, IPAM, drivers, sandbox namespaces, the embedded
DNS, the host-port registry, the repository -- each from what the caller
injected (:class:`Collaborators`: unit tests pass fakes) or else the real
thing.  The controller is bound to the result, so none of its collaborators
is ever missing.  Nothing here touches the system but reading the instance
id (``Config.resolved``); stores are contacted on first use.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ipam.api import Ipam
from ipam.ipam import StoreIpam
from ipam.pools import HostAddress
from libnet.config import Config, encryption_ports
from libnet.driverapi import Driver, DriverContext
from libnet.drivers import registry
from libnet.drivers.registry import Drivers
from libnet.namespaces import Namespaces
from libnet.ownership import firewall_table
from libnet.ports import PortRegistry
from libnet.repository import Repository
from libnet.store import open_store
from libnet.store.base import Store

if TYPE_CHECKING:
    from libnet.dns.service import EmbeddedDns
    from libnet.proxies import ProxyPlane


def host_routes(ns: str | None) -> Callable[[], list[str]]:
    """A provider of the host's routes (CIDRs), for IPAM's default-pool choice."""

    def routes() -> list[str]:
        from libnet.kernel.netlink import Netlink

        with Netlink(ns) as nl:
            return [r.dst for fam in (socket.AF_INET, socket.AF_INET6) for r in nl.routes(fam) if r.dst != "default"]

    return routes


def host_addresses(ns: str | None) -> Callable[[], list[HostAddress]]:
    """A provider of the host's own interface addresses (with the interface and,
    for libnet's bridges, the network id in its mark), for IPAM: a subnet that
    contains one is refused."""

    def addresses() -> list[HostAddress]:
        from libnet.kernel.netlink import Netlink
        from libnet.ownership import Mark

        with Netlink(ns) as nl:
            links = {link.index: link for link in nl.links()}
            out = []
            for cidr, index in nl.addresses_by_link():
                link = links.get(index)
                mark = Mark.parse(link.alias) if link is not None else None
                owner = mark.owner if mark is not None and mark.kind == "net" else ""
                out.append(HostAddress(cidr.split("/", 1)[0], link.name if link else f"#{index}", owner))
            return out

    return addresses


@dataclass(frozen=True)
class Collaborators:
    """What a caller may inject instead of the real thing (None: built from Config).

    The embedded DNS is built only with the real namespaces (and when
    ``config.dns.enabled``): its listeners live inside them."""

    store: Store | None = None
    cluster_store: Store | None = None
    ipam: Ipam | None = None
    drivers: Mapping[str, Driver] | None = None
    namespaces: Namespaces | None = None
    dns: EmbeddedDns | None = None
    proxy_plane: ProxyPlane | None = None


@dataclass(frozen=True)
class Parts:
    """A controller's collaborators, all present (``dns`` is None when it is off)."""

    config: Config  # resolved: instance id and prefixes filled in
    store: Store
    cluster_store: Store
    repo: Repository
    ipam: Ipam
    drivers: Drivers
    namespaces: Namespaces
    dns: EmbeddedDns | None
    ports: PortRegistry
    proxy_plane: ProxyPlane
    #: stores opened here (closed with the controller); injected ones belong to the caller
    owned: tuple[Store, ...]

    @property
    def instance(self) -> str:
        assert self.config.instance_id is not None  # Config.resolved()
        return self.config.instance_id


def build(config: Config, given: Collaborators = Collaborators()) -> Parts:
    """Every part from ``config``, except what ``given`` holds."""
    config = config.resolved()
    instance, prefix = config.instance_id, config.overlay_prefix
    assert instance is not None and prefix is not None  # Config.resolved()
    owned: list[Store] = []
    store = given.store
    if store is None:
        store = open_store(config.store)
        owned.append(store)
    cluster_store = given.cluster_store
    if cluster_store is None:
        if config.cluster_store:
            cluster_store = open_store(config.cluster_store)
            owned.append(cluster_store)
        else:
            cluster_store = store
    ipam = given.ipam
    if ipam is None:
        ipam_config = config.ipam
        if ipam_config.host_routes is None:
            ipam_config = dataclasses.replace(ipam_config, host_routes=host_routes(config.host_netns))
        if ipam_config.host_addresses is None:
            ipam_config = dataclasses.replace(ipam_config, host_addresses=host_addresses(config.host_netns))
        ipam = StoreIpam(store, cluster_store, ipam_config)
    if given.drivers is not None:
        drivers = given.drivers if isinstance(given.drivers, Drivers) else Drivers(given.drivers)
    else:
        drivers = registry.build(
            DriverContext(
                host_ns=config.host_netns,
                default_mtu=config.mtu,
                instance=instance,
                state_dir=config.state_dir,
                node=config.node_name,
                vtep=config.vtep,
                overlay_prefix=prefix,
                anti_entropy_interval=config.overlay_anti_entropy,
                cluster_store=cluster_store,
                encryption_range=config.encryption_range,
                encryption_port=config.encryption_port,
                encryption_rotation=config.encryption_rotation,
                encryption_join_timeout=config.encryption_join_timeout,
            )
        )
    from libnet.kernel_namespaces import KernelNamespaces

    namespaces, dns = given.namespaces, given.dns
    if namespaces is None:
        namespaces = KernelNamespaces(config.state_dir, instance, config.host_netns)
        if dns is None and config.dns.enabled:
            from libnet.dns.service import EmbeddedDns

            dns = EmbeddedDns(config.dns, config.host_netns, config.resolv_conf)
    real = isinstance(namespaces, KernelNamespaces)
    ports = PortRegistry(
        store,
        config.host_netns,
        None if real else (lambda pm: True),  # fakes: no host to probe for listeners
        config.port_range,
        own_table=firewall_table(instance),
        reserved=encryption_ports(config.encryption_port),
    )
    proxy_plane = given.proxy_plane
    if proxy_plane is None:
        if real:
            from libnet.kernel.proxy_plane import KernelProxyPlane

            proxy_plane = KernelProxyPlane(firewall_table(instance), config.host_netns)
        else:  # fake namespaces: there is no namespace to program
            from libnet.testing.fakes import FakeProxyPlane

            proxy_plane = FakeProxyPlane()
    return Parts(
        config=config,
        store=store,
        cluster_store=cluster_store,
        repo=Repository(store, cluster_store),
        ipam=ipam,
        drivers=drivers,
        namespaces=namespaces,
        dns=dns,
        ports=ports,
        proxy_plane=proxy_plane,
        owned=tuple(owned),
    )
