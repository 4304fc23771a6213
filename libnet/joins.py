"""Join and leave: plugging an endpoint into a sandbox and out again.

Each runs under the sandbox's lock: the driver's part (interface, addresses,
routes; published ports), then the store (the endpoint's and the sandbox's
records), then the sandbox's files.  A join that fails part way undoes its
done steps; a leave is marked in the store first, so a crash part way is
rolled forward by the next reconcile.  Which endpoint carries a sandbox's
default routes is :mod:`libnet.gateway`'s decision.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Mapping

from libnet.driverapi import PortMapping
from libnet.drivers.registry import Drivers
from libnet.errors import Conflict, KernelObjectExists, LibnetError, NotFound
from libnet.gateway import GatewayPolicy
from libnet.info import ep_info, net_info, sb_info
from libnet.model import Endpoint, Network, Sandbox
from libnet.ports import PortRegistry, check_families
from libnet.repository import Reads, Repository
from libnet.rollback import Rollback
from libnet.sandbox_files import SandboxFiles

log = logging.getLogger("libnet.joins")

#: a leave's store step in place of recording the endpoint as unjoined (see :meth:`Joins.leave`)
Finish = Callable[[Endpoint, Sandbox], Awaitable[Sandbox | None]]


@functools.lru_cache(maxsize=1024)
def _subnet(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A network's subnet, parsed once (issue 22: every join parsed its network's two)."""
    return ipaddress.ip_network(cidr)


def unjoined(e: Endpoint) -> None:
    """Mark an endpoint as joined to no sandbox."""
    e.sandbox_id, e.ifname, e.gateway, e.leaving = None, None, False, ""


def held_already(ports: list[PortMapping], old: list[PortMapping]) -> tuple[list[PortMapping], list[PortMapping]]:
    """Split requested ``ports`` into (mappings ``old`` holds already, mappings to reserve).  A request
    without a host port (``-p 80``) is held by an old mapping of the same container port, protocol and
    host address, so a replayed request keeps the host port it was given."""
    kept: list[PortMapping] = []
    wanted: list[PortMapping] = []
    free = list(old)
    for p in ports:
        match = next(
            (
                o
                for o in free
                if o == p
                or (
                    not p.host_port
                    and (o.container_port, o.protocol, o.host_ip) == (p.container_port, p.protocol, p.host_ip)
                )
            ),
            None,
        )
        if match is None:
            wanted.append(p)
        else:
            free.remove(match)
            kept.append(match)
    return kept, wanted


def _check_joinable(ep: Endpoint) -> None:
    """``Conflict`` unless ``ep`` (a record about to be joined) is free: joined to no sandbox and
    not being deleted."""
    if ep.sandbox_id:
        raise Conflict(f"endpoint {ep.name} is joined to another sandbox", endpoint_id=ep.id, sandbox_id=ep.sandbox_id)
    if ep.removing:
        raise Conflict(f"endpoint {ep.name} is being deleted", endpoint_id=ep.id, removing=ep.removing)


def _check_kept(sb: Sandbox) -> None:
    """``Conflict`` if ``sb`` (a record about to take an endpoint) is being removed: its removal lets go
    of the endpoints of the record it marked, then removes the namespace and the record, so an
    endpoint added after that stayed joined to a gone sandbox."""
    if sb.removing:
        raise Conflict(f"sandbox {sb.id[:12]} is being removed", sandbox_id=sb.id, removing=sb.removing)


def _check_publishable(ep: Endpoint) -> None:
    """``Conflict`` if ``ep`` is being deleted: its deletion releases the ports of the record as it
    marked it, so ports recorded after that were never released (held by a gone endpoint)."""
    if ep.removing:
        raise Conflict(f"endpoint {ep.name} is being deleted", endpoint_id=ep.id, removing=ep.removing)


def _set_ports(ep: Endpoint, ports: list[PortMapping]) -> None:
    """Record ``ports`` on ``ep`` as stored: refused (``Conflict``) if a deletion marked it since the
    publish read it, unless they are none (a withdrawal leaves the deletion nothing to release)."""
    if ports:
        _check_publishable(ep)
    ep.ports = [p.__dict__ for p in ports]


class Joins:
    """See the module docstring.  ``instance``: this libnet instance (leave marks)."""

    def __init__(
        self, instance: str, repo: Repository, drivers: Drivers, gateway: GatewayPolicy, files: SandboxFiles
    ) -> None:
        self.instance, self.repo, self.drivers, self.gateway, self.files = instance, repo, drivers, gateway, files
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def forget(self, sandbox_id: str) -> None:
        """The sandbox is gone: drop its lock."""
        self._locks.pop(sandbox_id, None)

    async def join(
        self,
        endpoint: str | Endpoint,
        sandbox: str | Sandbox,
        *,
        overlap: bool = False,
        ifname: str | None = None,
        network: Network | None = None,
        made: bool = False,
        reads: Reads | None = None,
    ) -> Endpoint:
        """Plug an endpoint into a sandbox (idempotent for the same pair): the
        driver's join and published ports, then the store, then the sandbox's files.

        ``endpoint``, ``sandbox``: references, or the records the caller's operation
        read already (only their ids are used: both are read again under the lock);
        ``network``: the endpoint's network as the operation read it (issue 22: a
        network's record changes only by its ``removing`` mark, which a join does not
        look at).  ``overlap``: allow networks whose subnets overlap those the sandbox is on
        (a proxy's two legs, :mod:`libnet.proxies`, whose namespace routes by the
        side a connection goes to, never by destination alone).  ``made``: ``endpoint`` is the
        record the caller's operation stored moments ago (``connect``): used as it is, not read
        again (its write below is checked against the stored revision all the same).
        ``reads``: the caller's step's shared reads (:class:`libnet.repository.Reads`), given
        the sandbox's record as written here."""
        ep_id = endpoint.id if isinstance(endpoint, Endpoint) else (await self.repo.endpoint(endpoint)).id
        sb_id = sandbox.id if isinstance(sandbox, Sandbox) else (await self.repo.sandbox(sandbox)).id
        async with self._lock(sb_id):
            sb = await self.repo.sandbox(sb_id)
            ep = endpoint if made and isinstance(endpoint, Endpoint) else await self.repo.endpoint(ep_id)
            if ep.sandbox_id == sb.id:
                if reads is not None:
                    reads.keep_sandbox(sb)
                return ep
            _check_joinable(ep)
            _check_kept(sb)
            nw = network if network is not None and network.id == ep.network_id else None
            if nw is None:
                nw = await self.repo.network(ep.network_id)
            drv = self.drivers.driver(nw.driver)
            others = [await self.repo.endpoint(e) for e in sb.endpoints]
            await self._check_overlap(sb, nw, others, overlap)
            used = {o.ifname for o in others}
            if ifname is None:
                ifname = next(f"eth{i}" for i in range(len(used) + 1) if f"eth{i}" not in used)
            elif ifname in used:
                raise Conflict(
                    f"sandbox {sb.id[:12]} already has an interface {ifname}", sandbox_id=sb.id, ifname=ifname
                )
            gateway = self.gateway.default_route(nw, others)
            ep.sandbox_id, ep.ifname, ep.gateway = sb.id, ifname, gateway
            ninfo, einfo, sinfo = net_info(nw), ep_info(ep), sb_info(sb, ep)
            async with Rollback() as undo:
                await drv.join(ninfo, einfo, sinfo)
                undo.push(lambda: drv.leave(ninfo, einfo, sinfo), "leave in driver")
                await drv.program_external_connectivity(ninfo, einfo)
                undo.push(lambda: drv.revoke_external_connectivity(ninfo, einfo), "revoke ports")

                def joined(e: Endpoint) -> None:
                    # decided on again on the record as stored: the one read (or, from ``connect``,
                    # written) above may have been joined elsewhere or marked for deletion since (a
                    # join of it to another sandbox holds another lock; a delete holds none)
                    _check_joinable(e)
                    e.sandbox_id, e.ifname, e.gateway, e.connecting = sb.id, ifname, gateway, False

                # one store transaction for both records (the endpoint unmarked again if the
                # sandbox's record cannot be written, on a store without batches)
                def added(s: Sandbox) -> None:
                    # a removal that marked the sandbox since has read its endpoint list already
                    _check_kept(s)
                    s.endpoints.append(ep.id)

                ep, sb = await self.repo.update_endpoint_and_sandbox(ep, joined, sb, added, ep_undo=unjoined)
            await self.files.write(sb, {ep.id: ep})
            if reads is not None:
                reads.keep_sandbox(sb)
        return ep

    async def _check_overlap(self, sb: Sandbox, nw: Network, others: list[Endpoint], allowed: bool = False) -> None:
        """A sandbox holds one endpoint per network, and no two networks whose
        subnets overlap: the kernel would route by the first matching route, so
        a name could resolve to one network's address and the packet leave by
        the other's interface (another container answers)."""
        mine = [_subnet(s) for s in (nw.ipv4_subnet, nw.ipv6_subnet) if s]
        for other in others:
            if other.network_id == nw.id:
                raise Conflict(
                    f"sandbox {sb.id[:12]} is already on network {nw.name} (endpoint {other.name})",
                    sandbox_id=sb.id,
                    network_id=nw.id,
                    endpoint_id=other.id,
                )
            theirs = await self.repo.network(other.network_id)
            if allowed:
                continue
            for subnet in (theirs.ipv4_subnet, theirs.ipv6_subnet):
                if subnet and any(m.version == _subnet(subnet).version and m.overlaps(_subnet(subnet)) for m in mine):
                    raise Conflict(
                        f"network {nw.name} overlaps network {theirs.name} ({subnet}) that sandbox {sb.id[:12]} "
                        "is already on: its addresses would be ambiguous inside the sandbox",
                        sandbox_id=sb.id,
                        network_id=nw.id,
                        overlaps=theirs.id,
                        subnet=subnet,
                    )

    async def leave(
        self,
        endpoint: str | Endpoint,
        sandbox: str | None = None,
        *,
        network: Network | None = None,
        finish: Finish | None = None,
        reads: Reads | None = None,
    ) -> Endpoint:
        """Unplug an endpoint from its sandbox; not joined is fine.  Marked as
        leaving by this instance first, so a crash part way is rolled forward.
        ``endpoint``: a reference, or the record the caller's operation read (read
        again under the lock); ``network``: its network as the operation read it
        (see :meth:`join`).  ``finish``: the store step instead of recording the
        endpoint as unjoined, called with the endpoint and sandbox as read under the
        lock once the driver let go (a disconnect deletes the endpoint there): the
        sandbox as it stored it, or None to have the endpoint recorded as unjoined as
        usual.  ``reads``: the caller's step's shared reads, given the sandbox as the leave
        wrote it (not read again while it is current)."""
        ep = endpoint if isinstance(endpoint, Endpoint) else await self.repo.endpoint(endpoint)
        if not ep.sandbox_id:
            return ep
        async with self._lock(ep.sandbox_id):
            ep = await self.repo.endpoint(ep.id)
            if not ep.sandbox_id:
                return ep
            if sandbox is not None and (await self.repo.sandbox(sandbox)).id != ep.sandbox_id:
                raise Conflict("endpoint is joined to another sandbox", endpoint_id=ep.id, sandbox_id=ep.sandbox_id)
            nw = network if network is not None and network.id == ep.network_id else None
            if nw is None:
                nw = await self.repo.network(ep.network_id)
            drv = self.drivers.driver(nw.driver)
            try:
                sb = await self.repo.sandbox(ep.sandbox_id)
            except NotFound:
                sb = Sandbox(ep.sandbox_id, "", False)
            if self.instance not in (ep.leaving, ep.removing):  # a crash from here on is rolled forward
                ep = await self.repo.update_endpoint(ep, lambda e: setattr(e, "leaving", self.instance))
            ninfo, einfo, sinfo = net_info(nw), ep_info(ep), sb_info(sb, ep)
            await drv.revoke_external_connectivity(ninfo, einfo)
            await drv.leave(ninfo, einfo, sinfo)
            was_gateway = ep.gateway
            if sb.netns:
                ep_id = ep.id
                finished = await finish(ep, sb) if finish is not None else None
                if finished is not None:
                    sb, ep = finished, dataclasses.replace(ep)
                    unjoined(ep)
                else:
                    ep, sb = await self.repo.update_endpoint_and_sandbox(
                        ep, unjoined, sb, lambda s: s.endpoints.remove(ep_id) if ep_id in s.endpoints else None
                    )
                if reads is not None:
                    reads.keep_sandbox(sb)
            else:
                ep = await self.repo.update_endpoint(ep, unjoined)
            if sb.netns:
                if was_gateway:
                    await self._hand_over(sb)
                if not sb.removing:  # a sandbox being removed loses its files next: not rewritten first
                    await self.files.write(sb)
        return ep

    async def publish(self, endpoint: str, ports: list[PortMapping], registry: PortRegistry) -> Endpoint:
        """Replace the published ports of an endpoint (Docker's
        ``ProgramExternalConnectivity``/``RevokeExternalConnectivity``: only the
        endpoint that gives its container the way out publishes).

        ``ports``: checked mappings, ``[]`` withdraws them all.  The new ports are
        reserved first (``Conflict``/``PortsExhausted`` change nothing), then a
        joined endpoint's rules are replaced in the driver, then the store; the
        old reservations go last.  An endpoint that is not joined only has its
        ports recorded: its join publishes them.  An endpoint being deleted takes no new
        ports (``Conflict``): its deletion releases those of the record it marked.  Returns
        the endpoint as stored."""
        ep = await self.repo.endpoint(endpoint)
        async with self._lock(ep.sandbox_id or f"unjoined:{ep.id}"):
            ep = await self.repo.endpoint(ep.id)
            old = [PortMapping(**p) for p in ep.ports]
            nw = await self.repo.network(ep.network_id)
            check_families(nw, ports)
            kept, wanted = held_already(ports, old)
            if not wanted and len(kept) == len(old):
                return ep  # the same ports again (a replay)
            if ports:  # refused before anything is reserved; checked again on the record it writes
                _check_publishable(ep)
            drv = self.drivers.driver(nw.driver)
            async with Rollback() as undo:
                fresh = await registry.reserve(ep.id, wanted)
                undo.push(lambda: registry.release(ep.id, fresh), "free new host ports")
                new = kept + fresh
                if ep.sandbox_id:
                    ninfo = net_info(nw)
                    await drv.revoke_external_connectivity(ninfo, ep_info(ep))
                    undo.push(lambda: drv.program_external_connectivity(ninfo, ep_info(ep)), "republish old ports")
                    newer = dataclasses.replace(ep, ports=[p.__dict__ for p in new])
                    await drv.program_external_connectivity(ninfo, ep_info(newer))
                    undo.push(lambda: drv.revoke_external_connectivity(ninfo, ep_info(newer)), "withdraw new ports")
                ep = await self.repo.update_endpoint(ep, functools.partial(_set_ports, ports=new))
            await registry.release(ep.id, [p for p in old if p not in new])
        return ep

    async def repair(self, sandbox_id: str, endpoints: Mapping[str, Endpoint]) -> tuple[list[str], list[str]]:
        """What a join or leave of ``sandbox_id`` left undone when a crash (kill -9) stopped it
        after its store step, done now (reconcile, after the store's own repairs): the default
        routes handed over to the next endpoint if the one carrying them left and none took them
        (the sandbox had no way out), and the sandbox's resolv.conf and hosts rewritten if their
        text is not what its stored endpoints say (a join's entry missing, a gone endpoint's
        kept), or written if its directory is missing (a kill -9 between ``create_sandbox``'s
        store step and its first file write).  ``endpoints``: every stored endpoint by id, as
        the caller read them.

        Only a sandbox of this instance: for the files, one whose directory is under this
        instance's state dir or that this instance made (``Sandbox.instance``; whatever stands
        in the directory's place that is not a plain directory is never written through,
        opened or removed: reported); for the routes, every endpoint made by this
        instance and none marked by an operation.
        Returns (what was repaired, what could not be), as report lines."""
        repaired: list[str] = []
        missing: list[str] = []
        async with self._lock(sandbox_id):
            try:
                sb = await self.repo.sandbox(sandbox_id)
            except NotFound:
                return repaired, missing
            if sb.removing or not sb.netns:
                return repaired, missing
            eps = [endpoints[e] for e in sb.endpoints if e in endpoints]
            ours = all(e.instance == self.instance and not (e.leaving or e.removing or e.connecting) for e in eps)
            if eps and ours and not any(e.gateway for e in eps):
                successor = await self.gateway.successor(sb)
                if successor is not None:
                    nw, ep = successor
                    try:
                        await self.drivers.driver(nw.driver).set_gateway(
                            net_info(nw), ep_info(ep), sb_info(sb, ep), True
                        )
                    except KernelObjectExists as exc:  # a default route libnet did not make: kept
                        missing.append(
                            f"sandbox {sb.id[:12]}: endpoint {ep.name} does not take over the default routes: "
                            f"{exc.message}"
                        )
                    else:
                        await self.repo.update_endpoint(ep, lambda e: setattr(e, "gateway", True))
                        repaired.append(f"sandbox {sb.id[:12]}: default routes handed over to endpoint {ep.name}")
            if not sb.files:
                return repaired, missing
            if self.files.has(sb.id):
                if await self.files.write(sb, endpoints):
                    repaired.append(f"sandbox {sb.id[:12]}: resolv.conf/hosts rewritten from the store")
            elif sb.instance == self.instance:  # made here, its directory never was (or was removed)
                try:  # a symlink, FIFO or file in the directory's place: Conflict, neither followed nor opened
                    await self.files.write(sb, endpoints)
                except LibnetError as exc:
                    missing.append(f"sandbox {sb.id[:12]}: resolv.conf/hosts not written: {exc.message}")
                else:
                    repaired.append(f"sandbox {sb.id[:12]}: resolv.conf/hosts written (its directory was missing)")
        return repaired, missing

    async def write_files(self, sandbox_id: str) -> None:
        """(Re)write the sandbox's files from its stored record, under its lock (a change of
        their text not made by a join or leave: its embedded DNS served or not); gone is fine."""
        async with self._lock(sandbox_id):
            try:
                sb = await self.repo.sandbox(sandbox_id)
            except NotFound:
                return
            await self.files.write(sb)

    async def _hand_over(self, sb: Sandbox) -> None:
        """After the endpoint carrying the default routes left, the next one takes them.

        Not when the sandbox holds a default route libnet did not make (added by its
        runtime meanwhile): libnet does not replace it, and the leave, done already,
        does not fail for it (a CNI DEL that failed here left the endpoint behind)."""
        successor = await self.gateway.successor(sb)
        if successor is None:
            return
        nw, ep = successor
        try:
            await self.drivers.driver(nw.driver).set_gateway(net_info(nw), ep_info(ep), sb_info(sb, ep), True)
        except KernelObjectExists as exc:
            log.warning("sandbox %s: endpoint %s does not take over the default routes: %s", sb.id[:12], ep.name, exc)
            return
        await self.repo.update_endpoint(ep, lambda e: setattr(e, "gateway", True))
