"""The narrow info objects drivers get (:mod:`libnet.driverapi`), made from stored objects."""

from __future__ import annotations

from libnet.driverapi import EndpointInfo, NetworkInfo, PortMapping, SandboxInfo
from libnet.model import Endpoint, Network, Sandbox


def net_info(nw: Network) -> NetworkInfo:
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


def ep_info(ep: Endpoint) -> EndpointInfo:
    ports = tuple(PortMapping(**p) for p in ep.ports)
    return EndpointInfo(
        ep.id,
        ep.network_id,
        ep.name,
        ep.ipv4,
        ep.ipv6,
        ep.mac,
        ports,
        tuple(ep.aliases),
        tuple(ep.services),
        ep.dns,
    )


def sb_info(sb: Sandbox, ep: Endpoint) -> SandboxInfo:
    return SandboxInfo(sb.id, sb.netns, ep.ifname or "eth0", ep.gateway)
