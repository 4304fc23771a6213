"""Reconcile: make store, IPAM and kernel consistent after a crash or drift.

In this order (:meth:`Reconciler.run`):

1. the store: finish or undo what a crash interrupted (:meth:`Reconciler.store`);
2. the kernel: each driver removes kernel objects no stored object owns and
   reports missing parts; sandbox namespaces of no sandbox are removed (kept
   if in use: a lost record);
3. reservations the store lost are made again (:meth:`Reconciler.restore`):
   pools, addresses, names of stored objects;
4. this instance's orphans are freed (:meth:`Reconciler.free_orphans`):
   pools, addresses, host ports, names whose owner is gone.

The caller (the controller) holds its operation gate exclusively meanwhile,
so none of this instance's operations is in flight.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from contextlib import suppress
from typing import Protocol

from ipam.api import LOCAL, Ipam, address_options, pool_options
from libnet.driverapi import EndpointInfo, ReconcileReport, SandboxInfo
from libnet.drivers.registry import Drivers
from libnet.errors import AddressNotAllocated, Conflict, LibnetError, NoSuchPool, NotFound
from libnet.info import ep_info, net_info, sb_info
from libnet.model import Endpoint, Sandbox
from libnet.namespaces import Namespaces
from libnet.ports import PortRegistry
from libnet.repository import Repository
from libnet.store.base import Store

log = logging.getLogger("libnet.controller")


class Operations(Protocol):
    """The controller's operations a reconcile pass rolls unfinished work forward with."""

    async def delete_sandbox(self, ref: str) -> None: ...
    async def delete_endpoint(self, ref: str, network: str | None = None, *, force: bool = False) -> None: ...
    async def leave(self, endpoint: str, sandbox: str | None = None) -> Endpoint: ...
    async def delete_network(self, ref: str) -> None: ...


async def release_address(ipam: Ipam, pool: str, address: str, owner: str) -> None:
    """Release ``address`` if ``owner`` still holds it (gone or taken over is fine)."""
    with suppress(AddressNotAllocated, NoSuchPool):
        await ipam.release_address(pool, address, owner=owner)


class Reconciler:
    """One host's reconcile (see the module docstring)."""

    def __init__(
        self,
        instance: str,
        node: str,
        repo: Repository,
        ipam: Ipam,
        drivers: Drivers,
        namespaces: Namespaces,
        ports: PortRegistry,
        ops: Operations,
    ) -> None:
        self.instance, self.node = instance, node
        self.repo, self.ipam, self.drivers, self.namespaces, self.ports, self.ops = (
            repo,
            ipam,
            drivers,
            namespaces,
            ports,
            ops,
        )

    async def run(self) -> ReconcileReport:
        report = ReconcileReport()
        await self.store(report)
        networks = await self.repo.networks()
        endpoints = await self.repo.endpoints()
        sandboxes = {s.id: s for s in await self.repo.sandboxes()}
        for stored_sb in sandboxes.values():
            if not self.namespaces.exists(stored_sb.netns):
                report.missing.append(f"sandbox {stored_sb.id[:12]}: namespace {stored_sb.netns} is gone")
        for name, drv in self.drivers.items():
            nets = [n for n in networks if n.driver == name]
            ids = {n.id for n in nets}
            eps: list[tuple[EndpointInfo, SandboxInfo | None]] = []
            for ep in endpoints:
                if ep.network_id in ids:
                    sb: Sandbox | None = sandboxes.get(ep.sandbox_id or "")
                    if sb is None and ep.sandbox_id and ep.node == self.node:
                        # joined, its sandbox's record lost: still joined in the kernel; keep it so
                        report.missing.append(
                            f"endpoint {ep.name} ({ep.id[:12]}): its sandbox {ep.sandbox_id[:12]} is not in the store"
                        )
                        sb = Sandbox(ep.sandbox_id, "", False)
                    eps.append((ep_info(ep), sb_info(sb, ep) if sb else None))
            report.merge(await drv.reconcile([net_info(n) for n in nets], eps))
        stored = {s.netns: s.id for s in sandboxes.values() if s.owned}
        for path, owner in (await asyncio.to_thread(self.namespaces.owned)).items():
            if path in stored or owner in sandboxes:
                continue
            if await asyncio.to_thread(self.namespaces.in_use, path):  # a lost sandbox record, not a leak
                report.missing.append(
                    f"sandbox namespace {path} (sandbox {owner[:12]}): the store does not know it but it holds "
                    "interfaces; kept (a lost store record? libnet-agent --adopt rebuilds it)"
                )
            elif await asyncio.to_thread(self.namespaces.delete, path):
                report.removed.append(f"sandbox namespace {path} of no sandbox")
        await self.restore(report)
        await self.free_orphans(report, set(report.kept))
        for line in report.removed + report.repaired:
            log.warning("reconcile: %s", line)
        for line in report.missing:
            log.warning("reconcile: %s", line)
        return report

    async def store(self, report: ReconcileReport) -> None:
        """Finish or undo what a crash interrupted (before the drivers' sweep);
        :meth:`free_orphans` frees what nothing owns (after it).

        Rule (DESIGN.md, "Ownership"): only this instance's own unfinished
        work is touched -- objects marked ``removing``/``leaving`` by it are
        rolled forward, endpoints of its unfinished ``connect`` rolled back --
        and an orphaned pool, address or name reservation is freed only if
        this instance made it (the caller holds the operation gate, so none of
        its own is in flight).  Another instance's orphan may be an operation
        in flight on another host: it is left alone, however old.  Untagged
        records of older versions are freed only in the local store.
        """
        me = self.instance
        for sb in await self.repo.sandboxes():
            if sb.removing == me:
                await self.ops.delete_sandbox(sb.id)
                report.repaired.append(f"finished deleting sandbox {sb.id[:12]}")
        for ep in await self.repo.endpoints():
            mine = ep.instance == me or (not ep.instance and ep.node == self.node)
            try:
                if ep.removing == me:
                    await self.ops.delete_endpoint(ep.id, force=True)
                    report.repaired.append(f"finished deleting endpoint {ep.name} ({ep.id[:12]})")
                elif ep.leaving == me:
                    await self.ops.leave(ep.id)
                    report.repaired.append(f"finished unplugging endpoint {ep.name} ({ep.id[:12]})")
                elif ep.connecting and not ep.sandbox_id and mine:
                    await self.ops.delete_endpoint(ep.id)
                    report.repaired.append(f"deleted endpoint {ep.name} ({ep.id[:12]}) of an unfinished connect")
            except NotFound as exc:  # its network or sandbox is gone: say so, never silently
                report.missing.append(f"endpoint {ep.name} ({ep.id[:12]}): unfinished work not done: {exc}")
        for nw in await self.repo.networks():
            if nw.removing == me:
                try:
                    await self.ops.delete_network(nw.id)
                    report.repaired.append(f"finished deleting network {nw.name} ({nw.id[:12]})")
                except Conflict as exc:  # endpoints still on it: the delete could never have gone through
                    await self.repo.update_network(nw, lambda n: setattr(n, "removing", ""))
                    report.repaired.append(f"network {nw.name}: unfinished delete undone ({exc.message})")
        endpoints = {e.id: e for e in await self.repo.endpoints()}
        for sb in await self.repo.sandboxes():
            want = [e for e in sb.endpoints if e in endpoints and endpoints[e].sandbox_id == sb.id]
            want += [e.id for e in endpoints.values() if e.sandbox_id == sb.id and e.id not in want]
            if want != sb.endpoints:
                await self.repo.update_sandbox(sb, lambda s, w=want: setattr(s, "endpoints", w))  # type: ignore[misc]
                report.repaired.append(f"endpoint list of sandbox {sb.id[:12]}")

    async def restore(self, report: ReconcileReport) -> None:
        """Re-reserve what the stored networks and endpoints hold but the store
        lost the reservation of (a deleted key, a restored backup): their pools,
        addresses and names.  Otherwise the next create would hand a live
        network's subnet, a live container's address or a taken name out again."""
        pools = {p.pool_id for p in await self.ipam.pool_owners()}
        held = {(a.pool_id, a.address_only) for a in await self.ipam.audit()}
        names = {key for store in self.repo.stores() for key in await self.repo.name_keys(store)}
        networks = {n.id: n for n in await self.repo.networks()}
        local, global_ = self.ipam.default_address_spaces()
        for nw in networks.values():
            if nw.removing:
                continue
            space = global_ if nw.scope == "global" else local
            isolated = nw.driver in self.drivers and self.drivers[nw.driver].capabilities().own_addressing
            for v6, pool_id, subnet, gw, rng in (
                (False, nw.ipv4_pool, nw.ipv4_subnet, nw.ipv4_gateway, nw.ipv4_range),
                (True, nw.ipv6_pool, nw.ipv6_subnet, nw.ipv6_gateway, nw.ipv6_range),
            ):
                if not pool_id or not subnet or pool_id in pools:
                    continue
                net = ipaddress.ip_network(subnet)
                aux = {k: a for k, a in nw.aux_addresses.items() if ipaddress.ip_address(a) in net}
                gw_ip = str(ipaddress.ip_interface(gw).ip) if gw else None
                # over_host_routes: its own bridge's route is there (its own bridge's address does not count)
                opts = pool_options(nw.id, nw.instance, gateway=gw_ip, aux=aux, over_routes=True, isolated=isolated)
                try:
                    pool = await self.ipam.request_pool(space, subnet, rng, options=opts, v6=v6)
                except LibnetError as exc:
                    report.missing.append(
                        f"network {nw.name}: its IPAM pool {pool_id} is lost and cannot be restored: {exc}"
                    )
                    continue
                report.repaired.append(f"IPAM pool {pool.id} of network {nw.name} restored")
                pools.add(pool.id)
                held |= {(a.pool_id, a.address_only) for a in await self.ipam.audit(pool.id)}
            key = self.repo.network_name_key(nw.name)
            if key not in names:
                await self._restore_name(report, self.repo.store(nw.scope), key, nw.id, "network", nw.name, nw.instance)
        for ep in await self.repo.endpoints():
            owner = networks.get(ep.network_id)
            if owner is None or ep.removing:
                continue
            for pool_id, cidr in ((owner.ipv4_pool, ep.ipv4), (owner.ipv6_pool, ep.ipv6)):
                if not pool_id or not cidr or (pool_id, cidr.split("/")[0]) in held:
                    continue
                try:
                    await self.ipam.request_address(pool_id, cidr.split("/")[0], address_options(ep.id, ep.instance))
                    report.repaired.append(f"address {cidr} of endpoint {ep.name} ({ep.id[:12]}) reserved again")
                except LibnetError as exc:
                    report.missing.append(f"endpoint {ep.name}: its address {cidr} cannot be reserved again: {exc}")
            key = self.repo.endpoint_name_key(owner.id, ep.name)
            if key not in names:
                await self._restore_name(
                    report, self.repo.store(owner.scope), key, ep.id, "endpoint", ep.name, ep.instance
                )

    async def _restore_name(
        self, report: ReconcileReport, store: Store, key: str, owner: str, what: str, name: str, instance: str
    ) -> None:
        try:
            await self.repo.reserve_name(store, key, owner, what, name, instance)
            report.repaired.append(f"{what} name {name} reserved again")
        except LibnetError as exc:
            report.missing.append(f"{what} {name} ({owner[:12]}): its name cannot be reserved again: {exc}")

    async def free_orphans(self, report: ReconcileReport, kept: set[str]) -> None:
        """Free this instance's pools, addresses and names whose owner is gone --
        not those of an owner whose kernel objects the drivers kept (in use
        although the store lost its record): freeing them would hand a live
        container's subnet or address to someone else."""
        me = self.instance
        endpoints = {e.id: e for e in await self.repo.endpoints()}
        networks = {n.id for n in await self.repo.networks()}

        def ours(space: str, instance: str) -> bool:
            return instance == me or (not instance and space == LOCAL)

        for pool in await self.ipam.pool_owners():
            if pool.owner and pool.owner not in networks | kept and ours(pool.space, pool.instance):
                with suppress(NoSuchPool):
                    await self.ipam.release_pool(pool.pool_id, owner=pool.owner)
                    report.removed.append(f"IPAM pool {pool.pool_id} of no network")
        for alloc in await self.ipam.audit():
            if (
                alloc.owner
                and not alloc.reserved
                and alloc.owner not in endpoints
                and alloc.owner not in kept
                and ours(alloc.space, alloc.instance)
            ):
                await release_address(self.ipam, alloc.pool_id, alloc.address, alloc.owner)
                report.removed.append(f"address {alloc.address} of no endpoint")
        for proto, port, holder in await self.ports.orphans(set(endpoints) | kept):
            report.removed.append(f"host port {port}/{proto} of no endpoint ({holder[:12]})")
        for key in await self.repo.stale_names(networks | kept, set(endpoints) | kept, me):
            report.removed.append(f"name reservation {key.rsplit('/', 1)[-1]}")
