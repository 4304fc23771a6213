"""The ``null`` driver: endpoints with addresses but no interface.

Like Docker's ``none`` network: a sandbox on it has only its loopback.  Useful
for containers that must have no network, and as the simplest driver.
"""

from __future__ import annotations

from typing import Any

from libnet.driverapi import Capabilities, EndpointInfo, NetworkInfo, ReconcileReport, SandboxInfo
from libnet.errors import InvalidOption


class NullDriver:
    """A driver that programs nothing."""

    name = "null"

    def __init__(self) -> None:
        pass

    def capabilities(self) -> Capabilities:
        return Capabilities(scope="local")

    def parse_network_options(self, options: dict[str, Any]) -> dict[str, Any]:
        if options:
            raise InvalidOption(f"the null driver takes no options, got {sorted(options)}")
        return {}

    async def check_network(self, nw: NetworkInfo) -> None:
        return None

    async def create_network(self, nw: NetworkInfo) -> None:
        return None

    async def delete_network(self, nw: NetworkInfo) -> None:
        return None

    async def create_endpoint(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        return None

    async def delete_endpoint(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        return None

    async def join(self, nw: NetworkInfo, ep: EndpointInfo, sb: SandboxInfo) -> None:
        return None

    async def leave(self, nw: NetworkInfo, ep: EndpointInfo, sb: SandboxInfo) -> None:
        return None

    async def set_gateway(self, nw: NetworkInfo, ep: EndpointInfo, sb: SandboxInfo, gateway: bool) -> None:
        return None

    async def program_external_connectivity(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        return None

    async def revoke_external_connectivity(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        return None

    async def reconcile(
        self, networks: list[NetworkInfo], endpoints: list[tuple[EndpointInfo, SandboxInfo | None]]
    ) -> ReconcileReport:
        return ReconcileReport()

    async def close(self) -> None:
        return None
