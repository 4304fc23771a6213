"""The gateway-bridge policy: how sandboxes on networks without a way out get one.

A driver whose networks have no way out of their own (overlay:
``Capabilities.external_via_gateway_bridge``) gets it from this host's
gateway bridge network (Docker's ``docker_gwbridge``): a local bridge network
with masquerade, made on first need.  A sandbox on a non-internal network of
such a driver is also connected to it, and that endpoint carries the
sandbox's default routes; when none of its networks needs it any more, the
sandbox is disconnected from it.

This module decides; the controller carries the decisions out (create the
network and the endpoint, join, leave, delete).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from libnet.drivers.registry import Drivers
from libnet.model import Endpoint, Network, Sandbox
from libnet.repository import Reads, Repository

#: the local bridge network giving overlay containers a way out (Docker's docker_gwbridge)
GATEWAY_BRIDGE = "libnet-gwbridge"
#: how the controller creates it
GATEWAY_BRIDGE_DRIVER = "bridge"
GATEWAY_BRIDGE_OPTIONS: dict[str, Any] = {"bridge_name": "lngwbridge"}
#: the label marking it (the embedded DNS leaves it out of sandboxes' views)
GATEWAY_ROLE = ("libnet.role", "gateway-bridge")


def endpoint_name(sandbox_id: str) -> str:
    """The name of a sandbox's endpoint on the gateway bridge network."""
    return f"gw-{sandbox_id[:12]}"


def is_gateway_bridge(nw: Network) -> bool:
    return nw.labels.get(GATEWAY_ROLE[0]) == GATEWAY_ROLE[1]


@dataclass(frozen=True)
class Need:
    """What a sandbox needs of the gateway bridge: ``connect`` it, ``disconnect``
    its endpoint there, or neither; ``network_id``: the gateway bridge network's
    id (None: not made yet)."""

    network_id: str | None
    connect: bool = False
    disconnect: Endpoint | None = None


def named_gateway_bridge(nw: Network) -> bool:
    """Whether ``nw`` holds the gateway bridge network's name, as :meth:`GatewayPolicy.network_id`
    finds it (names are unique without regard to case): from a record read anyway, where a
    look-up of the name cost a store read per join and leave (issue 22)."""
    return nw.name.lower() == GATEWAY_BRIDGE


class GatewayPolicy:
    """See the module docstring."""

    def __init__(self, repo: Repository, drivers: Drivers) -> None:
        self.repo, self.drivers = repo, drivers

    def _via_gateway_bridge(self, nw: Network) -> bool:
        return self.drivers.driver(nw.driver).capabilities().external_via_gateway_bridge

    async def network_id(self) -> str | None:
        """The gateway bridge network's id; None if it was not made (yet).  Found by its
        name alone: every join and leave asks, so it must not list the networks."""
        nw = await self.repo.network_named(GATEWAY_BRIDGE)
        return None if nw is None else nw.id

    def default_route(self, nw: Network, others: list[Endpoint]) -> bool:
        """Whether an endpoint joining ``nw`` in a sandbox holding ``others``
        carries the sandbox's default routes: the first non-internal network
        with a gateway whose driver has a way out of its own does."""
        return (
            not nw.internal
            and bool(nw.ipv4_gateway or nw.ipv6_gateway)
            and not self._via_gateway_bridge(nw)
            and not any(o.gateway for o in others)
        )

    async def need(self, sb: Sandbox, reads: Reads | None = None) -> Need:
        """Whether ``sb`` must be connected to, or disconnected from, the gateway bridge.
        ``reads``: the records the caller's step read already, shared with it."""
        src = reads if reads is not None else Reads(self.repo)
        pairs = []
        for eid in sb.endpoints:
            ep = await src.endpoint(eid)
            pairs.append((ep, await src.network(ep.network_id)))
        needed, present = self.decide(pairs)
        if needed and present is None:
            return Need(await self.network_id(), connect=True)
        if present is not None and not needed:
            return Need(present.network_id, disconnect=present)
        return Need(present.network_id if present is not None else None)

    def decide(self, pairs: list[tuple[Endpoint, Network]]) -> tuple[bool, Endpoint | None]:
        """For a sandbox holding these (endpoint, its network) pairs: whether one of its networks
        needs the gateway bridge, and its endpoint on the gateway bridge network if it has one."""
        needed, present = False, None
        for ep, nw in pairs:
            if named_gateway_bridge(nw):
                present = ep
            elif not nw.internal and self._via_gateway_bridge(nw):
                needed = True
        return needed, present

    async def successor(self, sb: Sandbox) -> tuple[Network, Endpoint] | None:
        """After the endpoint carrying the default routes left ``sb``: the next
        one to carry them (a non-internal network with a gateway and a way out
        of its own), if any."""
        for eid in sb.endpoints:
            ep = await self.repo.endpoint(eid)
            nw = await self.repo.network(ep.network_id)
            if nw.internal or not (nw.ipv4_gateway or nw.ipv6_gateway):
                continue
            if self._via_gateway_bridge(nw):
                continue
            return nw, ep
        return None
