"""Published ports of bridge endpoints: DNAT rule groups in the instance's
firewall table, and userspace relays for the mappings on IPv6 loopback
(``[::1]``, which the kernel cannot route replies to: :mod:`libnet.drivers.relay`).

A :class:`Publisher` is the driver's one place for both: publish, withdraw,
and (reconcile) start or stop relays to match the joined endpoints.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from typing import Protocol, TypeVar

from libnet.driverapi import EndpointInfo, NetworkInfo
from libnet.drivers.bridge_model import bridge_name
from libnet.drivers.relay import Target
from libnet.errors import LibnetError
from libnet.kernel.api import FirewallOps, RuleList
from libnet.kernel.firewall import port_rules

T = TypeVar("T")
log = logging.getLogger("libnet.drivers.bridge")

#: host IPs whose mappings include ``[::1]``: loopback itself and "every IPv6 address"
RELAYED_HOST_IPS = frozenset({"::1", "::"})


class RelayOps(Protocol):
    """The relays of published ports (see :class:`libnet.drivers.relay.Relays`)."""

    def keys(self) -> set[str]: ...
    def targets(self, key: str) -> set[Target]: ...
    async def start(self, key: str, targets: list[Target]) -> None: ...
    async def stop(self, key: str) -> None: ...
    async def close(self) -> None: ...


def ports_key(ep: EndpointInfo) -> str:
    """The firewall rule group of an endpoint's published ports."""
    return f"ep:{ep.id}:ports"


def endpoint_port_rules(nw: NetworkInfo, ep: EndpointInfo) -> RuleList:
    """DNAT rules publishing the endpoint's ports (both address families)."""
    br = bridge_name(nw)
    rules: RuleList = []
    for mapping in ep.ports:
        for cidr in (ep.ipv4, ep.ipv6):
            if not cidr:
                continue
            ip = str(ipaddress.ip_interface(cidr).ip)
            if mapping.host_ip and ipaddress.ip_address(mapping.host_ip).version != ipaddress.ip_address(ip).version:
                continue
            rules += port_rules(mapping.host_port, ip, mapping.container_port, mapping.protocol, br, mapping.host_ip)
    return rules


def relay_targets(ep: EndpointInfo) -> list[Target]:
    """The endpoint's ports published on IPv6 loopback (host IP ``::1`` or
    none), served by relays: the kernel cannot route replies to ``::1``."""
    if not ep.ipv6:
        return []
    ip = str(ipaddress.ip_interface(ep.ipv6).ip)
    return [
        Target(mapping.protocol, mapping.host_port, ip, mapping.container_port)
        for mapping in ep.ports
        if mapping.host_port and (not mapping.host_ip or mapping.host_ip in RELAYED_HOST_IPS)
    ]


class Publisher:
    """Publishes endpoints' ports through ``firewall`` (a callable giving the
    driver's table, opened on first use) and ``relays``."""

    def __init__(self, firewall: Callable[[], FirewallOps], relays: RelayOps) -> None:
        self._firewall, self.relays = firewall, relays

    async def _fw(self, fn: Callable[[FirewallOps], T]) -> T:
        return await asyncio.to_thread(lambda: fn(self._firewall()))

    async def publish(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        """The endpoint's DNAT rules, then its relays; the rules go again if a relay fails."""
        rules = endpoint_port_rules(nw, ep)
        await self._fw(lambda fw: fw.add(ports_key(ep), rules))
        try:
            await self.relays.start(ep.id, relay_targets(ep))
        except BaseException:
            await self._fw(lambda fw: fw.remove(ports_key(ep)))
            raise

    async def withdraw(self, ep: EndpointInfo) -> None:
        """The endpoint's relays and DNAT rules gone; none is fine."""
        await self.relays.stop(ep.id)
        await self._fw(lambda fw: fw.remove(ports_key(ep)))

    async def repair_relays(self, endpoints: list[EndpointInfo]) -> list[str]:
        """Relays of exactly these endpoints (their ``[::1]`` mappings): missing
        ones started, others stopped; returns what was repaired."""
        repaired = []
        relayed = {ep.id: relay_targets(ep) for ep in endpoints}
        for key in self.relays.keys() - set(relayed):
            await self.relays.stop(key)
        for key, targets in relayed.items():
            if self.relays.targets(key) != set(targets):
                try:
                    await self.relays.start(key, targets)
                except LibnetError as exc:
                    log.warning("endpoint %s: [::1] published ports: %s", key[:12], exc)
                    continue
                repaired.append(f"endpoint {key[:12]}: relays of ports published on [::1] started")
        return repaired
