"""The IPAM contract, shaped like Docker's IPAM plugin API.

The agent serves this protocol to Docker as ``IpamDriver.*`` later
(``shared/reference/docker-plugins.md``); the controller calls it directly.
Addresses go in and out as strings: pools as CIDR (``"172.17.0.0/16"``),
allocated addresses as interface CIDR (``"172.17.0.2/16"``).

Errors (all from :mod:`libnet.errors`): ``InvalidSubnet`` for malformed or
unsuitable input, ``PoolOverlap`` naming the holder of an overlapping pool,
``PoolExhausted`` naming the pool (and how to add default pools),
``NoSuchPool``, ``AddressInUse``, ``AddressNotAllocated``.  A failed call
changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

LOCAL = "local"
GLOBAL = "global"
SPACES = (LOCAL, GLOBAL)

#: Docker's option marking the gateway request in RequestAddress
REQUEST_ADDRESS_TYPE = "RequestAddressType"
GATEWAY_TYPE = "com.docker.network.gateway"

#: request_pool options understood by libnet
OPT_GATEWAY = "gateway"  # the gateway address (default: first usable)
OPT_AUX = "aux_addresses"  # {name: address} reserved at pool creation
OPT_OWNER = "owner"  # who the pool / address belongs to (network / endpoint id)
OPT_ISOLATED = "isolated"  # the pool's network is its own address domain: it may overlap other isolated pools
#: the libnet instance making the request (recorded with the pool / address, see Allocation.instance)
OPT_INSTANCE = "instance"
#: request_pool: accept an explicit local subnet that overlaps a host route (adopting or
#: restoring a network whose own bridge route is there; or the operator insists: the
#: controller's ``allow_route_overlap``).  A subnet holding an address of the host is
#: refused regardless, unless the address is on the pool owner's own bridge.
OPT_OVER_ROUTES = "over_host_routes"

#: the holders of a pool's own reservations, as :class:`Allocation` ``owner`` shows them
GATEWAY_HOLDER = "gateway"
AUX_HOLDER_PREFIX = "aux:"  # + the auxiliary address's name


def pool_space(pool_id: str) -> str:
    """The address space (``"local"``/``"global"``) of a pool id: ids are ``<space>/<subnet>[...]``."""
    return pool_id.split("/", 1)[0]


def pool_options(
    owner: str,
    instance: str,
    *,
    gateway: str | None = None,
    aux: dict[str, str] | None = None,
    over_routes: bool = False,
    isolated: bool = False,
) -> dict[str, Any]:
    """The ``request_pool``/``check_pool`` options of a network's pool."""
    opts: dict[str, Any] = {OPT_OWNER: owner, OPT_INSTANCE: instance}
    if gateway:
        opts[OPT_GATEWAY] = gateway
    if aux:
        opts[OPT_AUX] = dict(aux)
    if over_routes:
        opts[OPT_OVER_ROUTES] = True
    if isolated:
        opts[OPT_ISOLATED] = True
    return opts


def address_options(owner: str, instance: str) -> dict[str, Any]:
    """The ``request_address`` options of an endpoint's address."""
    return {OPT_OWNER: owner, OPT_INSTANCE: instance}


@dataclass(frozen=True)
class Pool:
    """A pool handed out by ``request_pool``.

    ``data`` carries what Docker's ``Data`` field does; libnet puts the
    gateway there as ``com.docker.network.gateway`` (CIDR).
    """

    id: str
    subnet: str
    data: dict[str, str] = field(default_factory=dict)

    @property
    def gateway(self) -> str | None:
        """The gateway as interface CIDR, if the pool has one."""
        return self.data.get(GATEWAY_TYPE)


@dataclass(frozen=True)
class Allocation:
    """One allocated address and its owner, as ``audit`` lists them."""

    pool_id: str
    address: str
    owner: str
    #: the libnet instance that allocated it ("" for allocations made before instances were recorded);
    #: reconcile frees an orphaned allocation only if it is its own instance's (DESIGN.md, "Ownership")
    instance: str = ""

    @property
    def address_only(self) -> str:
        """The address without its prefix length."""
        return self.address.split("/", 1)[0]

    @property
    def space(self) -> str:
        """The address space of its pool."""
        return pool_space(self.pool_id)

    @property
    def reserved(self) -> bool:
        """Held by the pool itself (its gateway, an auxiliary address), not by an endpoint."""
        return self.owner == GATEWAY_HOLDER or self.owner.startswith(AUX_HOLDER_PREFIX)


@dataclass(frozen=True)
class PoolOwner:
    """Who holds a pool, as ``pool_owners`` lists them."""

    pool_id: str
    space: str
    owner: str  # the network id given as option ``owner``
    instance: str = ""  # as Allocation.instance


@runtime_checkable
class Ipam(Protocol):
    """Address management for pools and addresses (async, store-backed)."""

    def default_address_spaces(self) -> tuple[str, str]:
        """``("local", "global")``: the spaces for local and global scope."""
        ...

    async def request_pool(
        self,
        space: str,
        pool: str | None = None,
        sub_pool: str | None = None,
        options: dict[str, Any] | None = None,
        v6: bool = False,
    ) -> Pool:
        """Reserve ``pool`` (a CIDR) or, if None, the next free default pool.

        ``sub_pool`` restricts allocation to a range inside it.  The gateway
        (option ``gateway`` or the first usable address) and the auxiliary
        addresses (option ``aux_addresses``) are reserved at once.
        """
        ...

    async def check_pool(
        self,
        space: str,
        pool: str,
        sub_pool: str | None = None,
        options: dict[str, Any] | None = None,
        v6: bool = False,
    ) -> None:
        """Raise what :meth:`request_pool` would raise for the explicit ``pool``
        (bad subnet, range or reservations; overlap with a pool or the host),
        writing nothing: a caller that reserves several pools checks them all
        first, so a refusal leaves the store as it was."""
        ...

    async def release_pool(self, pool_id: str, owner: str | None = None) -> None:
        """Give the pool and all its addresses back; unknown ids raise ``NoSuchPool``.

        With ``owner``, only if the pool is still that owner's (a pool id is its
        subnet, so it may have been released and taken by another network
        meanwhile): otherwise ``NoSuchPool`` and nothing changes."""
        ...

    async def pool_owners(self) -> list[PoolOwner]:
        """Every pool of both spaces with its owner and instance."""
        ...

    async def request_address(
        self, pool_id: str, address: str | None = None, options: dict[str, Any] | None = None
    ) -> str:
        """Allocate ``address`` or the next free one; returns it as CIDR.

        With ``options["RequestAddressType"] == "com.docker.network.gateway"``
        it returns the pool's gateway.  ``options["owner"]`` records who holds
        the address (an endpoint id) and ``options["instance"]`` the libnet
        instance asking, for :meth:`audit`.
        """
        ...

    async def release_address(self, pool_id: str, address: str, owner: str | None = None) -> None:
        """Give an address back (``AddressNotAllocated`` if it was not allocated).

        With ``owner``, only if that owner still holds it (compare-and-delete:
        a crashed delete rolled forward later must not free the address of the
        endpoint that got it meanwhile); otherwise ``AddressNotAllocated``."""
        ...

    async def audit(self, pool_id: str | None = None) -> list[Allocation]:
        """Every allocation (of one pool or of all) with its owner, from the store."""
        ...
