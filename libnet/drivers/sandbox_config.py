"""The sandbox side of a join, shared by the drivers that plug a veth into a
sandbox (bridge, overlay): addresses, link state, mark and default routes in
one kernel batch inside the sandbox's namespace
(:class:`libnet.kernel.api.SandboxOps`)."""

from __future__ import annotations

import contextlib

from libnet.driverapi import EndpointInfo, NetworkInfo, SandboxInfo
from libnet.errors import LibnetError
from libnet.kernel.api import Kernel, SandboxOps


def addresses(ep: EndpointInfo) -> list[str]:
    """The endpoint's interface addresses (CIDR), IPv4 first."""
    return [cidr for cidr in (ep.ipv4, ep.ipv6) if cidr]


def version(cidr: str) -> int:
    """4 or 6."""
    return 6 if ":" in cidr else 4


def gateways(nw: NetworkInfo) -> list[str]:
    """The network's gateway addresses (CIDR), IPv4 first."""
    return [gw for gw in (nw.ipv4_gateway, nw.ipv6_gateway) if gw]


async def configure_sandbox(
    kernel: Kernel, nw: NetworkInfo, ep: EndpointInfo, sb: SandboxInfo, alias: str | None = None
) -> None:
    """Inside the sandbox, in one batch: lo up, the endpoint's addresses (DAD
    off), its interface up (and marked with ``alias`` when given), and -- if
    the endpoint carries the sandbox's default routes and the network is not
    internal -- default routes via the gateways of the families it has an address of (a
    proxy's front leg may have no IPv6 on a dual-stack network: no IPv6 route then)."""
    with await kernel.open_sandbox(sb.netns) as links:
        configure_links(links, nw, ep, sb, alias)


def configure_links(
    links: SandboxOps, nw: NetworkInfo, ep: EndpointInfo, sb: SandboxInfo, alias: str | None = None
) -> None:
    """:func:`configure_sandbox` on a handle opened already: blocking (a few kernel requests in
    one batch), for a thread that has other kernel work of the join to do (the bridge driver's
    host thread while other operations keep the event loop busy)."""
    have = {version(cidr) for cidr in addresses(ep)}
    routes = [gw for gw in gateways(nw) if version(gw) in have] if sb.gateway and not nw.internal else []
    links.configure(sb.ifname, addresses(ep), routes, alias, sandbox_id=sb.id)


async def set_default_routes(kernel: Kernel, nw: NetworkInfo, sb: SandboxInfo, present: bool) -> None:
    """Add (``present``, unless the network is internal) or remove the sandbox's
    default routes via the network's gateways."""
    with await kernel.open_sandbox(sb.netns) as links:
        links.set_default_routes(sb.ifname, gateways(nw), present and not nw.internal, sandbox_id=sb.id)


async def retire_interface(kernel: Kernel, sb: SandboxInfo, new_name: str) -> None:
    """Free the sandbox's interface name at once (down, renamed to ``new_name``);
    a sandbox or interface that is gone already is fine."""
    if not sb.netns:
        return
    with contextlib.suppress(LibnetError, OSError), await kernel.open_sandbox(sb.netns) as links:
        links.retire(sb.ifname, new_name)


def retire_links(links: SandboxOps, sb: SandboxInfo, new_name: str) -> None:
    """:func:`retire_interface` on a handle opened already (blocking; see :func:`configure_links`)."""
    with contextlib.suppress(LibnetError, OSError):
        links.retire(sb.ifname, new_name)
