"""The real implementations behind the controller's seams, built from Config.

The controller asks for whatever was not injected; unit tests inject fakes
and never reach this module's kernel-backed parts.
"""

from __future__ import annotations

import dataclasses
import socket
from typing import Any

from ipam.ipam import StoreIpam
from ipam.pools import HostAddress
from libnet.config import Config
from libnet.driverapi import Driver, builtin_drivers
from libnet.namespaces import KernelNamespaces, Namespaces
from libnet.store import open_store


def host_routes(ns: str | None):
    """A provider of the host's routes (CIDRs), for IPAM's default-pool choice."""

    def routes() -> list[str]:
        from libnet.kernel.netlink import Netlink

        with Netlink(ns) as nl:
            return [r.dst for fam in (socket.AF_INET, socket.AF_INET6) for r in nl.routes(fam) if r.dst != "default"]

    return routes


def host_addresses(ns: str | None):
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


def components(
    config: Config,
    *,
    store=None,
    cluster_store=None,
    ipam=None,
    drivers: dict[str, Driver] | None = None,
    namespaces: Namespaces | None = None,
    dns: Any = None,
) -> tuple[Any, ...]:
    """(store, cluster_store, ipam, drivers, namespaces, dns, stores opened here).

    The embedded DNS is built only with the real namespaces (and when
    ``config.dns.enabled``): its listeners live inside them."""
    owned = []
    if store is None:
        store = open_store(config.store)
        owned.append(store)
    if cluster_store is None:
        if config.cluster_store:
            cluster_store = open_store(config.cluster_store)
            owned.append(cluster_store)
        else:
            cluster_store = store
    if ipam is None:
        ipam_config = config.ipam
        if ipam_config.host_routes is None:
            ipam_config = dataclasses.replace(ipam_config, host_routes=host_routes(config.host_netns))
        if ipam_config.host_addresses is None:
            ipam_config = dataclasses.replace(ipam_config, host_addresses=host_addresses(config.host_netns))
        ipam = StoreIpam(store, cluster_store, ipam_config)
    if drivers is None:
        drivers = {
            name: factory(
                host_ns=config.host_netns,
                default_mtu=config.mtu,
                cluster_store=cluster_store,
                node=config.node_name,
                vtep=config.vtep,
                overlay_prefix=config.overlay_prefix,
                instance=config.instance_id,
                state_dir=config.state_dir,
                anti_entropy_interval=config.overlay_anti_entropy,
            )
            for name, factory in builtin_drivers().items()
        }
    if namespaces is None:
        namespaces = KernelNamespaces(config.state_dir, config.instance_id, config.host_netns)
        if dns is None and config.dns.enabled:
            from libnet.dns.service import EmbeddedDns

            dns = EmbeddedDns(config.dns, config.host_netns, config.resolv_conf)
    return store, cluster_store, ipam, drivers, namespaces, dns, owned
