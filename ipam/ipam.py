"""libnet's IPAM on the key-value store: pools, addresses, owners.

Layout under ``libnet/v1/ipam/<space>/`` (local space in the local store,
global space in the cluster store):

- ``pools``: one versioned JSON document holding every pool of the space.
  Creating or releasing a pool is a read-modify-CAS of this document
  (``libnet.model.update``), so overlap checks and default-pool choices are
  serialised cluster-wide without a lock; pools change rarely.
- ``ula48``: the space's random RFC 4193 /48, made once (create-only).
- ``addresses/<subnet>/<address>``: one key per allocated address, its value
  the owner (an endpoint id), then a newline and the libnet instance that
  allocated it when one was given (option ``instance``).  ``audit`` reads these; a restart rebuilds its
  view from them, so nothing drifts (lessons.md item 3).

Allocation is optimistic and needs one store write: the allocator keeps, per
pool, an in-memory set of used addresses (a bitmap for IPv4, a sparse set for
IPv6, see :mod:`ipam.bitsets`) and a serial cursor; it picks the next free
address after the cursor and *creates* its key.  The store's create-only
write is what guarantees uniqueness -- never the cache: if another host
created the key first (``KeyExists``), the address is marked used and the
search goes on.

Contention, when many hosts allocate from one global pool: there is no shared
hot key (no bitmap document, no counter) that every allocation must CAS, so
hosts do not serialise on one revision.  The only conflict is two hosts
trying the *same* address; the loser then jumps ahead by a random stride of
up to 64 addresses, so racing hosts spread over the pool instead of marching
in lock step.  Measured with ``python -m benchmarks.ipam_bench`` (4 processes
x 1,000 allocations from one pool on a single-node etcd, 2-core machine):
about 8 % of attempts lost a race and moved on, no duplicate, and the four
together allocated 1.4x as fast as one process alone (etcd shares the two
cores).  Per-host blocks (as Calico does) would remove even those retries, at
the cost of stranded addresses and a block protocol; the measurements did not
call for them.

A host's cache does not see other hosts' releases until it reloads (on
exhaustion, or after its own ``release_pool``); that costs availability, never
uniqueness.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Callable
from typing import Any

from ipam import pools as P
from ipam.api import (
    GATEWAY_TYPE,
    GLOBAL,
    LOCAL,
    OPT_AUX,
    OPT_GATEWAY,
    OPT_INSTANCE,
    OPT_ISOLATED,
    OPT_OVER_ROUTES,
    OPT_OWNER,
    REQUEST_ADDRESS_TYPE,
    SPACES,
    Allocation,
    Pool,
    PoolOwner,
)
from ipam.bitsets import AddressSet, address_set
from ipam.planned import PlannedAddress
from libnet import model
from libnet.errors import (
    AddressInUse,
    AddressNotAllocated,
    InvalidOption,
    InvalidSubnet,
    KeyExists,
    KeyModified,
    KeyNotFound,
    NoSuchPool,
    PoolExhausted,
    PoolOverlap,
)
from libnet.store.base import KVPair, Store, Write

PREFIX = "libnet/v1/ipam"
POOLS_KIND = "ipam_pools"
CONTENTION_STRIDE = 64


def _token(subnet: str) -> str:
    return subnet.replace("/", "_")


def _ip_str(n: int, v6: bool) -> str:
    if v6:
        return socket.inet_ntop(socket.AF_INET6, n.to_bytes(16, "big"))
    return socket.inet_ntoa(n.to_bytes(4, "big"))


class _PoolState:
    """The cached allocation state of one pool."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.net = ipaddress.ip_network(record["subnet"])
        self.v6 = self.net.version == 6
        self.prefixlen = self.net.prefixlen
        self.lo, self.hi = P.usable_range(self.net)
        rng = ipaddress.ip_network(record["sub_pool"]) if record.get("sub_pool") else self.net
        lo, hi = P.usable_range(rng)
        self.alloc_lo, self.alloc_hi = max(lo, self.lo), min(hi, self.hi)
        self.used: AddressSet = address_set(self.alloc_lo, self.alloc_hi, self.v6)
        self.cursor = self.alloc_lo - 1
        #: address -> (revision, owner) of its key as this allocator's own planned write made it
        #: (:meth:`StoreIpam.allocation_write`): its release needs no read while that is current
        #: (a checked delete at that revision; one that finds it changed goes the long way)
        self.written: dict[int, tuple[int, str]] = {}
        token = _token(record["subnet"]) + (f"@{record['owner'][:12]}" if record.get("isolated") else "")
        self.prefix = f"{PREFIX}/{record['space']}/addresses/{token}/"

    def key(self, n: int) -> str:
        return self.prefix + _ip_str(n, self.v6)

    def cidr(self, n: int) -> str:
        return f"{_ip_str(n, self.v6)}/{self.prefixlen}"


class StoreIpam:
    """The :class:`ipam.api.Ipam` implementation on libnet's stores."""

    def __init__(self, local: Store, cluster: Store | None = None, config: P.IpamConfig | None = None) -> None:
        self._stores = {LOCAL: local, GLOBAL: cluster or local}
        self.config = config or P.IpamConfig()
        self._states: dict[str, _PoolState] = {}
        #: allocations that lost a race for an address to another host (and retried)
        self.conflicts = 0

    def default_address_spaces(self) -> tuple[str, str]:
        return LOCAL, GLOBAL

    # --- pools ------------------------------------------------------------------

    def _store(self, space: str) -> Store:
        if space not in SPACES:
            raise InvalidOption(f"unknown address space {space!r}; use 'local' or 'global'", space=space)
        return self._stores[space]

    async def _ula48(self, space: str) -> str:
        store, key = self._store(space), f"{PREFIX}/{space}/ula48"
        try:
            return (await store.get(key)).value.decode()
        except KeyNotFound:
            pass
        try:
            return (await store.atomic_put(key, P.random_ula48().encode(), None)).value.decode()
        except KeyExists:  # another host made it first: use theirs
            return (await store.get(key)).value.decode()

    def _v6_specs(self, space: str) -> list[P.PoolSpec]:
        """The configured IPv6 default pools of ``space`` (none: the store's ULA)."""
        return (space != LOCAL and self.config.global_v6) or self.config.v6_pools

    def _default_specs(self, space: str, v6: bool, ula: str | None) -> list[P.PoolSpec]:
        if v6:
            return self._v6_specs(space) or [P.PoolSpec(ula or "", self.config.v6_size)]
        return self.config.local_v4 if space == LOCAL else self.config.global_v4

    async def request_pool(
        self,
        space: str,
        pool: str | None = None,
        sub_pool: str | None = None,
        options: dict[str, Any] | None = None,
        v6: bool = False,
    ) -> Pool:
        pool_ = await self._pool(space, pool, sub_pool, options, v6, dry_run=False)
        assert pool_ is not None
        return pool_

    async def check_pool(
        self,
        space: str,
        pool: str,
        sub_pool: str | None = None,
        options: dict[str, Any] | None = None,
        v6: bool = False,
    ) -> None:
        if pool is None:
            raise InvalidSubnet("check_pool needs an explicit pool")
        await self._pool(space, pool, sub_pool, options, v6, dry_run=True)

    async def _pool(
        self,
        space: str,
        pool: str | None,
        sub_pool: str | None,
        options: dict[str, Any] | None,
        v6: bool,
        dry_run: bool,
    ) -> Pool | None:
        store = self._store(space)
        options = dict(options or {})
        owner = _owner(options)
        explicit = None if pool is None else P.parse_subnet(pool, v6)
        if explicit is None and sub_pool is not None:
            raise InvalidSubnet("a sub-pool needs an explicit pool", sub_pool=sub_pool)
        sub = None if sub_pool is None or explicit is None else P.parse_range(sub_pool, explicit)
        _check_reservations(explicit, options)
        ula = await self._ula48(space) if explicit is None and v6 and not self._v6_specs(space) else None
        local = space == LOCAL
        routes = P.route_networks(self.config.host_routes()) if local and self.config.host_routes else []
        addrs = list(self.config.host_addresses()) if local and self.config.host_addresses else []
        chosen: dict[str, Any] = {}

        isolated = bool(options.get(OPT_ISOLATED))
        if isolated and not owner:
            raise InvalidOption("an isolated pool needs an owner (its network)")

        def add(doc: dict[str, Any] | None) -> dict[str, Any]:
            doc = {"pools": dict((doc or {}).get("pools", {}))}
            index = P.OverlapIndex((ipaddress.ip_network(r["subnet"]), r["id"]) for r in doc["pools"].values())
            if explicit is not None:
                net = explicit
                # an isolated pool (its own address domain, e.g. an overlay network) may
                # overlap other isolated pools, never a shared one
                check = (
                    P.OverlapIndex(
                        (ipaddress.ip_network(r["subnet"]), r["id"])
                        for r in doc["pools"].values()
                        if not (isolated and r.get("isolated"))
                    )
                    if isolated
                    else index
                )
                holder = check.find(net)
                if holder is not None:
                    raise PoolOverlap(
                        f"pool {net} overlaps pool {holder}",
                        pool=str(net),
                        overlaps=holder,
                        owner=doc["pools"][holder].get("owner"),
                    )
                _check_host(net, routes, addrs, options, owner)
            else:
                net = self._pick_default(space, v6, ula, index, routes, addrs)
            record = _pool_record(space, net, sub, options, owner, default=explicit is None)
            doc["pools"][record["id"]] = record
            chosen.clear()
            chosen.update(record)
            return doc

        if dry_run:
            try:
                current = model.decode((await store.get(f"{PREFIX}/{space}/pools")).value, POOLS_KIND)
            except KeyNotFound:
                current = None
            add(current)
            return None
        await model.update_json(store, f"{PREFIX}/{space}/pools", POOLS_KIND, add)
        record = dict(chosen)
        state = _PoolState(record)
        await self._reserve(store, state, record)
        self._states[record["id"]] = state
        return _pool_of(record)

    def _pick_default(
        self,
        space: str,
        v6: bool,
        ula: str | None,
        index: P.OverlapIndex,
        routes: list[P.Network],
        addrs: list[P.HostAddress],
    ) -> P.Network:
        specs = self._default_specs(space, v6, ula)
        for spec in specs:
            for net in spec.subnets():
                if (
                    index.find(net) is None
                    and not any(net.overlaps(r) for r in routes if r.version == net.version)
                    and P.host_address_in(net, addrs) is None
                ):
                    return net
        family = "IPv6" if v6 else "IPv4"
        local = space == LOCAL
        field = ("v6_pools" if local else "global_v6") if v6 else space + "_v4"
        raise PoolExhausted(
            f"all default {family} pools of the {space} address space are in use: configure more default pools "
            f"(IpamConfig.{field}, agent option {'default' if local else 'global'}_pools) or give an explicit subnet",
            space=space,
            pools=", ".join(f"{s.base}/{s.size}" for s in specs),
        )

    async def _reserve(self, store: Store, state: _PoolState, record: dict[str, Any]) -> None:
        """Reserve gateway and auxiliary addresses; clear keys a crashed release left."""
        for pair in await store.list(state.prefix):
            await store.delete(pair.key)
        reserved = {record["gateway"]: "gateway"} if record.get("gateway") else {}
        reserved.update({ip: f"aux:{name}" for name, ip in record.get("aux", {}).items()})
        for ip, who in reserved.items():
            n = int(ipaddress.ip_address(ip))
            await store.put(state.key(n), who.encode())
            if state.alloc_lo <= n <= state.alloc_hi:
                state.used.add(n)

    async def release_pool(self, pool_id: str, owner: str | None = None) -> None:
        space, _subnet = _parse_pool_id(pool_id)
        store = self._store(space)
        state = await self._state(pool_id, reload=owner is not None)
        if owner is not None and state.record.get("owner") != owner:
            raise NoSuchPool("the pool belongs to another owner now", pool_id=pool_id, owner=owner)
        for pair in await store.list(state.prefix):
            await store.delete(pair.key)

        def remove(doc: dict[str, Any] | None) -> dict[str, Any] | None:
            pools = dict((doc or {}).get("pools", {}))
            record = pools.pop(pool_id, None)
            if record is None or (owner is not None and record.get("owner") != owner):
                raise NoSuchPool("no such pool", pool_id=pool_id)
            return {"pools": pools} if pools else None  # the last pool: no document left behind

        self._states.pop(pool_id, None)
        await model.update_json(store, f"{PREFIX}/{space}/pools", POOLS_KIND, remove)

    async def pool_owners(self) -> list[PoolOwner]:
        """Every pool of both spaces with its owner and instance."""
        out = []
        for space in SPACES:
            out += [
                PoolOwner(r["id"], space, r.get("owner", ""), r.get("instance", ""))
                for r in (await self._pools_doc(space)).values()
            ]
        return out

    async def pools(self, space: str) -> list[Pool]:
        """Every pool of an address space."""
        doc = await self._pools_doc(space)
        return [_pool_of(r) for r in doc.values()]

    async def _pools_doc(self, space: str) -> dict[str, Any]:
        try:
            raw = await self._store(space).get(f"{PREFIX}/{space}/pools")
        except KeyNotFound:
            return {}
        pools: dict[str, Any] = model.decode(raw.value, POOLS_KIND)["pools"]
        return pools

    async def _state(self, pool_id: str, reload: bool = False) -> _PoolState:
        state = self._states.get(pool_id)
        if state is not None and not reload:
            return state
        space, _ = _parse_pool_id(pool_id)
        record = (await self._pools_doc(space)).get(pool_id)
        if record is None:
            self._states.pop(pool_id, None)
            raise NoSuchPool("no such pool", pool_id=pool_id)
        fresh = _PoolState(record)
        family = socket.AF_INET6 if fresh.v6 else socket.AF_INET
        cut = len(fresh.prefix)
        for pair in await self._store(space).list(fresh.prefix):
            n = int.from_bytes(socket.inet_pton(family, pair.key[cut:]), "big")
            if fresh.alloc_lo <= n <= fresh.alloc_hi:
                fresh.used.add(n)
        if state is not None:
            fresh.cursor = state.cursor  # keep serial order across a reload
            fresh.written = {n: w for n, w in state.written.items() if n in fresh.used}  # checked when used
        self._states[pool_id] = fresh
        return fresh

    # --- addresses --------------------------------------------------------------

    async def request_address(
        self, pool_id: str, address: str | None = None, options: dict[str, Any] | None = None
    ) -> str:
        options = options or {}
        value = _holder_value(options)
        state = await self._state(pool_id)
        store = self._stores[state.record["space"]]
        gw = state.record.get("gateway")
        is_gateway = options.get(REQUEST_ADDRESS_TYPE) == GATEWAY_TYPE and gw is not None
        # the gateway was reserved with the pool: asking for it again is fine
        if (
            is_gateway
            and gw is not None
            and (address is None or _address_in(state, address, pool_id) == int(ipaddress.ip_address(gw)))
        ):
            return state.cidr(int(ipaddress.ip_address(gw)))
        if address is not None:
            n = _address_in(state, address, pool_id)
            try:
                await store.atomic_put(state.key(n), value.encode(), None)
            except KeyExists:
                raise AddressInUse(
                    f"address {_ip_str(n, state.v6)} {await self._holder_of(store, state.key(n))}",
                    pool_id=pool_id,
                    address=address,
                ) from None
            if state.alloc_lo <= n <= state.alloc_hi:
                state.used.add(n)
            return state.cidr(n)
        return await self._allocate_next(store, state, pool_id, value)

    async def _holder_of(self, store: Store, key: str) -> str:
        """Who holds an address key, in words, for an ``AddressInUse`` message."""
        try:
            holder, _ = _holder((await store.get(key)).value)
        except KeyNotFound:
            return "was allocated a moment ago"
        if holder == "gateway":
            return "is the network's gateway"
        if holder.startswith("aux:"):
            return f"is reserved as auxiliary address {holder[4:]!r}"
        return f"is already allocated to {holder[:12] or 'another endpoint'}"

    async def _allocate_next(self, store: Store, state: _PoolState, pool_id: str, holder: str) -> str:
        value = holder.encode()
        reloaded = False
        while True:
            n = state.used.next_free(state.cursor)
            if n is None:
                if reloaded:
                    raise _exhausted(state, pool_id)
                state = await self._state(pool_id, reload=True)
                reloaded = True
                continue
            try:
                await store.atomic_put(state.key(n), value, None)
            except KeyExists:  # another host took it: remember, and spread out
                self.conflicts += 1
                state.used.add(n)
                state.cursor = min(n + random.randrange(CONTENTION_STRIDE), state.alloc_hi)
                continue
            state.used.add(n)
            state.cursor = n
            return state.cidr(n)

    async def release_address(self, pool_id: str, address: str, owner: str | None = None) -> None:
        state = await self._state(pool_id)
        store = self._stores[state.record["space"]]
        n = _address_in(state, address, pool_id)
        if owner is not None:
            try:
                pair = await store.get(state.key(n))
            except KeyNotFound:
                raise AddressNotAllocated("address is not allocated", pool_id=pool_id, address=address) from None
            if _holder(pair.value)[0] != owner:
                raise AddressNotAllocated(
                    "address is held by another owner", pool_id=pool_id, address=address, owner=owner
                )
            try:
                await store.atomic_delete(state.key(n), pair)
            except (KeyNotFound, KeyModified):
                raise AddressNotAllocated("address changed hands", pool_id=pool_id, address=address) from None
        elif not await store.delete(state.key(n)):
            raise AddressNotAllocated("address is not allocated", pool_id=pool_id, address=address)
        state.used.discard(n)
        state.written.pop(n, None)

    async def allocation_write(
        self, pool_id: str, address: str | None = None, options: dict[str, Any] | None = None
    ) -> PlannedAddress:
        """:meth:`request_address` (not of a gateway) as a write for the caller's transaction
        (issue 22: an endpoint's name, addresses and records in one commit): the address is
        chosen and held in this allocator's memory, and the caller makes the write, then says
        how it went (:class:`ipam.planned.PlannedAddress`).  The same errors as
        :meth:`request_address` for bad options and addresses outside the pool, before
        anything is written; ``AddressInUse`` comes from the write's failure
        (:meth:`PlannedAddress.in_use`)."""
        value = _holder_value(options or {})
        state = await self._state(pool_id)
        store = self._stores[state.record["space"]]
        if address is not None:
            n = _address_in(state, address, pool_id)
        else:
            found = state.used.next_free(state.cursor)
            if found is None:
                state = await self._state(pool_id, reload=True)
                found = state.used.next_free(state.cursor)
                if found is None:
                    raise _exhausted(state, pool_id)
            n = found
        return PlannedAddress(self, store, state, n, value.encode(), address is not None)

    async def release_write(self, pool_id: str, address: str, owner: str) -> tuple[Store, Write, Callable[[], None]]:
        """:meth:`release_address` with ``owner`` as a write for the caller's transaction
        (issue 22: an endpoint's addresses and records go in one commit, not three): the
        store to make it in, the checked delete of the address, and what to call once it
        is made.  The same errors as :meth:`release_address`, before anything is written;
        the write fails (``KeyModified``/``KeyNotFound``) if the address changes hands meanwhile."""
        state = await self._state(pool_id)
        store = self._stores[state.record["space"]]
        n = _address_in(state, address, pool_id)

        def released() -> None:
            state.used.discard(n)
            state.written.pop(n, None)

        written = state.written.get(n)
        if written is not None and written[1] == owner:  # as this allocator wrote it for ``owner``: no read
            pair = KVPair(state.key(n), b"", written[0])  # (a checked write compares revisions only)
            return store, Write(pair.key, None, pair, checked=True), released
        try:
            pair = await store.get(state.key(n))
        except KeyNotFound:
            raise AddressNotAllocated("address is not allocated", pool_id=pool_id, address=address) from None
        if _holder(pair.value)[0] != owner:
            raise AddressNotAllocated("address is held by another owner", pool_id=pool_id, address=address, owner=owner)
        return store, Write(pair.key, None, pair, checked=True), released

    async def audit(self, pool_id: str | None = None) -> list[Allocation]:
        out: list[Allocation] = []
        for space in SPACES:
            for record in (await self._pools_doc(space)).values():
                if pool_id is not None and record["id"] != pool_id:
                    continue
                state = _PoolState(record)
                for pair in await self._stores[space].list(state.prefix):
                    ip = pair.key[len(state.prefix) :]
                    owner, instance = _holder(pair.value)
                    out.append(Allocation(record["id"], f"{ip}/{state.prefixlen}", owner, instance))
        return out


# --- helpers ----------------------------------------------------------------------


def _holder_value(options: dict[str, Any]) -> str:
    """An address key's value for a request with ``options``: owner, and instance if given."""
    owner = _owner(options)
    instance = options.get(OPT_INSTANCE) or ""
    if not isinstance(instance, str) or "\n" in instance or len(instance) > 64:
        raise InvalidOption("option 'instance' must be a short string", instance=repr(instance))
    if "\n" in owner:
        raise InvalidOption("option 'owner' must be one line", owner=repr(owner))
    return f"{owner}\n{instance}" if instance else owner


def _holder(value: bytes) -> tuple[str, str]:
    """(owner, instance) from an address key's value."""
    owner, _, instance = value.decode().partition("\n")
    return owner, instance


def _owner(options: dict[str, Any]) -> str:
    owner = options.get(OPT_OWNER, "")
    if not isinstance(owner, str) or len(owner) > 256:
        raise InvalidOption("option 'owner' must be a string of at most 256 characters", owner=repr(owner))
    return owner


def _parse_pool_id(pool_id: object) -> tuple[str, str]:
    if isinstance(pool_id, str):
        parts = pool_id.split("/")
        if len(parts) in (3, 5) and parts[0] in SPACES:
            return parts[0], f"{parts[1]}/{parts[2]}"
    raise NoSuchPool("no such pool (ids look like 'local/172.17.0.0/16')", pool_id=str(pool_id))


def _address_in(state: _PoolState, address: object, pool_id: str) -> int:
    """The integer of ``address`` (plain or CIDR) if it is a usable address of the pool."""
    if not isinstance(address, str):
        raise InvalidSubnet("address must be a string", pool_id=pool_id, address=repr(address))
    try:  # inet_pton: the hot path of release, ten times cheaper than ipaddress
        family = socket.AF_INET6 if state.v6 else socket.AF_INET
        n = int.from_bytes(socket.inet_pton(family, address.split("/", 1)[0]), "big")
    except OSError:
        n = -1
    if not state.lo <= n <= state.hi:
        raise InvalidSubnet(
            f"address {address!r} is not a usable address of pool {state.record['subnet']}",
            pool_id=pool_id,
            address=address,
        )
    return n


def _check_reservations(net: P.Network | None, options: dict[str, Any]) -> None:
    """Gateway and auxiliary addresses: usable addresses of the pool, aux never
    the gateway (given or the default first address), no address twice."""
    gw = options.get(OPT_GATEWAY)
    aux = options.get(OPT_AUX) or {}
    if (gw is not None or aux) and net is None:
        raise InvalidOption("gateway and auxiliary addresses need an explicit pool", gateway=gw)
    if net is None:
        return
    gateway = P.parse_address(gw, net, "gateway") if gw is not None else None
    if gateway is None:
        gateway = ipaddress.ip_address(P.usable_range(net)[0])
    P.check_aux(aux, net, gateway)


#: the request/CLI option that lets an explicit subnet overlap a host route (named in the refusal)
OVERRIDE_HINT = "allow_route_overlap (libnet network create --allow-route-overlap)"


def _check_host(
    net: P.Network, routes: list[P.Network], addrs: list[P.HostAddress], options: dict[str, Any], owner: str
) -> None:
    """An explicit local subnet must not contain an address of the host (never
    overridable: the host would answer for a container's address) nor, unless
    the caller insists (option ``over_host_routes``), overlap a host route."""
    mine = P.host_address_in(net, addrs, owner)
    if mine is not None:
        raise PoolOverlap(
            f"subnet {net} contains {mine.address}, an address of this host ({mine.ifname}): containers could "
            "not reach it, and the host would answer for a container's address; choose another subnet",
            pool=str(net),
            address=mine.address,
            interface=mine.ifname,
        )
    if options.get(OPT_OVER_ROUTES):
        return
    # a subnet the host already routes elsewhere (its uplink, a VPN, a kept bridge of a
    # network the store lost, another program's bridge): containers could not reach it
    clash = next((r for r in routes if r.version == net.version and r.overlaps(net)), None)
    if clash is not None:
        raise PoolOverlap(
            f"subnet {net} overlaps the host's route to {clash}: addresses there would be ambiguous on this "
            f"host; choose another subnet, or insist with {OVERRIDE_HINT}",
            pool=str(net),
            route=str(clash),
        )


def _pool_record(
    space: str, net: P.Network, sub: P.Network | None, options: dict[str, Any], owner: str, default: bool
) -> dict[str, Any]:
    lo, _hi = P.usable_range(net)
    gw = options.get(OPT_GATEWAY)
    gateway = str(ipaddress.ip_address(gw.split("/")[0])) if gw else _ip_str(lo, net.version == 6)
    isolated = bool(options.get(OPT_ISOLATED))
    pool_id = f"{space}/{net}" + (f"@{owner[:12]}" if isolated else "") + (f"/{sub}" if sub is not None else "")
    return {
        "id": pool_id,
        "isolated": isolated,
        "space": space,
        "subnet": str(net),
        "sub_pool": str(sub) if sub is not None else None,
        "gateway": gateway,
        "aux": {k: str(ipaddress.ip_address(v.split("/")[0])) for k, v in (options.get(OPT_AUX) or {}).items()},
        "owner": owner,
        "instance": str(options.get(OPT_INSTANCE) or ""),
        "default": default,
    }


def _pool_of(record: dict[str, Any]) -> Pool:
    net = ipaddress.ip_network(record["subnet"])
    data = {GATEWAY_TYPE: f"{record['gateway']}/{net.prefixlen}"} if record.get("gateway") else {}
    return Pool(record["id"], record["subnet"], data)


def _exhausted(state: _PoolState, pool_id: str) -> PoolExhausted:
    return PoolExhausted(
        f"no free address left in pool {pool_id}",
        pool_id=pool_id,
        allocated=len(state.used),
    )
