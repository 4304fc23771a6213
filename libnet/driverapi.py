"""The contract between the controller and network drivers.

Modelled on libnetwork's ``driverapi``: the controller owns identities,
addresses and persistence; a driver turns them into kernel state (or, for
``null``, into nothing).  Drivers receive narrow, immutable info objects --
never the controller, the store or other networks' objects -- and every
operation is async and idempotent: creating what exists adopts it, deleting
what is gone succeeds.  Built-in drivers are registered by name from one
explicit list (:func:`builtin_drivers`); importing a driver module registers
nothing.

Capabilities beyond :class:`Driver` are optional sub-protocols, checked once
when the drivers are registered (:class:`libnet.drivers.registry.Drivers`):
:class:`RemotePeers` (a driver that knows other hosts' endpoints, for DNS) and
:class:`ClusterAware` (a driver that uses cluster membership).  A driver is
built by a :class:`DriverFactory` from a :class:`DriverContext`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from libnet.config import (
    DEFAULT_ENCRYPTION_JOIN_TIMEOUT,
    DEFAULT_ENCRYPTION_PORT,
    DEFAULT_ENCRYPTION_RANGE,
    DEFAULT_ENCRYPTION_ROTATION,
)

if TYPE_CHECKING:
    from libnet.cluster.membership import Membership
    from libnet.store.base import Store

Scope = Literal["local", "global"]


@dataclass(frozen=True)
class Capabilities:
    """What a driver is: ``scope`` decides which store and IPAM space it uses."""

    scope: Scope
    #: each network is its own address domain (overlay): subnets may overlap other such networks
    own_addressing: bool = False
    #: the network has no way out of its own: sandboxes on it (unless internal) are also
    #: connected to the host's gateway bridge network, which carries their default route
    external_via_gateway_bridge: bool = False


@dataclass(frozen=True)
class NetworkInfo:
    """What a driver learns about a network."""

    id: str
    name: str
    ipv4_subnet: str | None
    ipv4_gateway: str | None  # interface CIDR, e.g. 198.51.100.1/24
    ipv6_subnet: str | None
    ipv6_gateway: str | None
    internal: bool
    options: dict[str, Any]  # already validated by the driver's parse_network_options


@dataclass(frozen=True)
class PortMapping:
    """A published port: host_port on the host -> container_port in the sandbox."""

    host_port: int
    container_port: int
    protocol: Literal["tcp", "udp"] = "tcp"
    host_ip: str | None = None


@dataclass(frozen=True)
class EndpointInfo:
    """What a driver learns about an endpoint."""

    id: str
    network_id: str
    name: str
    ipv4: str | None  # interface CIDR
    ipv6: str | None
    mac: str
    ports: tuple[PortMapping, ...] = ()
    aliases: tuple[str, ...] = ()
    services: tuple[str, ...] = ()  # "http:80/tcp"
    #: published in DNS; False (a proxy's back leg): a driver announcing endpoints to other
    #: hosts gives them no name, aliases or services for it
    dns: bool = True


@dataclass(frozen=True)
class SandboxInfo:
    """Where an endpoint joins: the sandbox's namespace and the interface name there."""

    id: str
    netns: str  # path: /run/netns/NAME or /proc/PID/ns/net
    ifname: str  # eth0, eth1, ... in join order
    #: this endpoint carries the sandbox's default routes
    gateway: bool = True


@dataclass
class ReconcileReport:
    """What a reconcile pass found and did."""

    removed: list[str] = field(default_factory=list)  # leaked kernel objects removed
    missing: list[str] = field(default_factory=list)  # stored objects whose kernel parts are gone
    repaired: list[str] = field(default_factory=list)
    #: objects named like libnet's that carry no mark of this instance: reported, never removed
    foreign: list[str] = field(default_factory=list)
    #: ids of networks/endpoints whose kernel objects are in use although the store does not
    #: know them (a lost record): kept, and so are their addresses, pools and names
    kept: list[str] = field(default_factory=list)

    def merge(self, other: ReconcileReport) -> None:
        self.removed += other.removed
        self.missing += other.missing
        self.repaired += other.repaired
        self.foreign += other.foreign
        self.kept += other.kept


@runtime_checkable
class Driver(Protocol):
    """A network driver.  All methods are idempotent."""

    name: str

    def capabilities(self) -> Capabilities:
        """Scope and kind of the driver."""
        ...

    def parse_network_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Validate driver options (``InvalidOption`` on unknown keys or bad values)
        and return them normalised; called before anything is created."""
        ...

    async def check_network(self, nw: NetworkInfo) -> None:
        """Refuse a network this driver cannot build on this host, before
        anything is written (no IPAM pool, no store key, no kernel change):
        e.g. a missing cluster store, an interface name libnet does not own.
        ``nw`` has no subnets yet.  Raises ``Conflict``/``Unavailable``/``BadRequest``."""
        ...

    async def create_network(self, nw: NetworkInfo) -> None:
        """Build the network's kernel parts (or adopt them if present)."""
        ...

    async def delete_network(self, nw: NetworkInfo) -> None:
        """Remove the network's kernel parts; gone is fine."""
        ...

    async def create_endpoint(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        """Prepare an endpoint (no kernel interface before join)."""
        ...

    async def delete_endpoint(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        """Forget an endpoint; gone is fine."""
        ...

    async def join(self, nw: NetworkInfo, ep: EndpointInfo, sb: SandboxInfo) -> None:
        """Plug the endpoint into the sandbox: interface, addresses, routes.

        On failure it leaves nothing behind.
        """
        ...

    async def leave(self, nw: NetworkInfo, ep: EndpointInfo, sb: SandboxInfo) -> None:
        """Unplug the endpoint; gone is fine."""
        ...

    async def set_gateway(self, nw: NetworkInfo, ep: EndpointInfo, sb: SandboxInfo, gateway: bool) -> None:
        """Add or remove the sandbox's default routes through this endpoint."""
        ...

    async def program_external_connectivity(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        """Publish the endpoint's ports."""
        ...

    async def revoke_external_connectivity(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        """Withdraw the endpoint's published ports; none is fine."""
        ...

    async def reconcile(
        self, networks: list[NetworkInfo], endpoints: list[tuple[EndpointInfo, SandboxInfo | None]]
    ) -> ReconcileReport:
        """Make the kernel match the stored objects of this driver: remove
        what no stored object owns, report stored objects missing parts."""
        ...

    async def close(self) -> None:
        """Release handles; the data plane stays."""
        ...


#: a peer listener: called with a network id when that network's remote endpoints changed
PeerListener = Callable[[str], None]


class RemoteEndpoint(Protocol):
    """Another host's endpoint as a :class:`RemotePeers` driver knows it (read-only)."""

    @property
    def endpoint_id(self) -> str: ...
    @property
    def network_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def ipv4(self) -> str | None: ...
    @property
    def ipv6(self) -> str | None: ...
    @property
    def aliases(self) -> tuple[str, ...]: ...
    @property
    def services(self) -> tuple[str, ...]: ...


@runtime_checkable
class RemotePeers(Protocol):
    """Optional: a driver whose networks span hosts (overlay) and that knows the
    other hosts' endpoints.  The controller appends a listener to
    ``peer_listeners`` once, at start; the driver calls every listener with a
    network id whenever that network's remote endpoints change."""

    peer_listeners: list[PeerListener]

    def remote_endpoints(self, network_id: str) -> Sequence[RemoteEndpoint]:
        """The other hosts' endpoints on ``network_id`` (empty if it has none here)."""
        ...


@runtime_checkable
class ClusterAware(Protocol):
    """Optional: a driver that uses cluster membership (overlay: gossiped peer
    events, and removing the peers of hosts gone for ``grace`` seconds)."""

    def attach_membership(self, membership: Membership, grace: float) -> None:
        """Start using ``membership``; called once, after the controller started."""
        ...

    def host_gone(self, node: str) -> bool:
        """Whether host ``node`` was confirmed gone here: failed or left, and still so
        when its grace period ended (its peers were removed).  ``libnet node rm``
        refuses any other host: a restarting one keeps its containers."""
        ...


@dataclass(frozen=True)
class DriverContext:
    """What a driver may be built from (a subset of :class:`libnet.config.Config`,
    resolved, and the cluster store)."""

    host_ns: str | None
    default_mtu: int | None
    instance: str
    state_dir: str
    node: str
    vtep: str | None
    overlay_prefix: str
    anti_entropy_interval: float
    cluster_store: Store
    encryption_range: str = DEFAULT_ENCRYPTION_RANGE
    encryption_port: int = DEFAULT_ENCRYPTION_PORT
    encryption_rotation: float = DEFAULT_ENCRYPTION_ROTATION
    encryption_join_timeout: float = DEFAULT_ENCRYPTION_JOIN_TIMEOUT


class DriverFactory(Protocol):
    """Builds one driver; constructors touch nothing (DESIGN.md)."""

    def __call__(self, ctx: DriverContext, /) -> Driver: ...
