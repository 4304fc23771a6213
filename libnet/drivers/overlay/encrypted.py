"""Encrypted overlays in the overlay driver: the host's WireGuard tunnel as the driver uses it.

A mixin of :class:`~libnet.drivers.overlay.driver.OverlayDriver` (the attributes
and methods declared below are the driver's): the tunnel made on first use
(:mod:`libnet.encryption.tunnel`), this host's VTEP on encrypted networks (its
tunnel address), the working tunnels a join waits for, the MTU an encrypted
network can carry, key rotation and the re-announcement of endpoints after it,
and the operator's commands on hosts' keys (revoke, unrevoke, forget).

Why the WireGuard peers are not programmed through the driver's
:class:`~libnet.drivers.overlay.programmer.Programmer` queue: that queue turns
per-network peer tables (endpoint records) into neighbour and FDB entries of
each network's VXLAN device; WireGuard peers are per host, not per network
(one interface carries every encrypted network), come from another record
(each host's key record, not its endpoints), and must be set before any
network uses them.  They follow the same pattern with their own small queue:
one watch of the records (full read, then every change) feeding one
serialised ``sync`` (a lock, changes by difference), and the same reconcile:
the driver's anti-entropy pass (:meth:`OverlayDriver.repair`) repairs the
tunnel first, then the networks' devices and entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from libnet.cluster.membership import Membership
from libnet.driverapi import NetworkInfo
from libnet.drivers.overlay.peerwatch import decode, encode, peers_prefix
from libnet.drivers.overlay.plumbing import Plumbing
from libnet.drivers.overlay.vni import P
from libnet.encryption import rotation
from libnet.encryption.backend import Backend
from libnet.encryption.backend import choose as choose_backend
from libnet.encryption.records import NodeKey, nodes_prefix, revoked_prefix, tunnel_range
from libnet.encryption.tunnel import Tunnel, forget, revoke, unrevoke, wireguard_overhead
from libnet.errors import BadRequest, KeyNotFound, LibnetError, NoSuchNode
from libnet.kernel.api import Kernel
from libnet.ownership import NamespaceLedger
from libnet.store.base import Store

log = logging.getLogger("libnet.drivers.overlay")


class EncryptedOverlays:
    """The overlay driver's encrypted-network part (see the module docstring)."""

    # --- the driver's, used here -----------------------------------------------------
    store: Store | None
    node: str
    vtep: str | None
    host_ns: str | None
    state_dir: str | None
    default_mtu: int | None
    kernel: Kernel
    plumbing: Plumbing
    encryption_range: str
    encryption_port: int
    encryption_rotation: float
    encryption_join_timeout: float
    _wireguard: Backend | Literal["auto"] | None
    _tunnel: Tunnel | None
    _rotating: asyncio.Task[None] | None
    _membership: Membership | None
    _nets: dict[str, NetworkInfo]
    _local: dict[str, set[str]]
    _need: Callable[[], tuple[Store, str]]
    host_gone: Callable[[str], bool]
    _teardown_local: Callable[[str], Awaitable[None]]
    _announce: Callable[[str, Any], Awaitable[None]]

    if TYPE_CHECKING:  # the driver's property (its namespace ledger), declared for the type checker only

        @property
        def ledger(self) -> NamespaceLedger: ...

    def tunnel(self) -> Tunnel:
        """This host's WireGuard tunnel (:mod:`libnet.encryption.tunnel`), made on first use."""
        if self._tunnel is None:
            store, vtep = self._need()
            state_dir = self.state_dir or ""
            if self._wireguard == "auto":
                backend, reason = choose_backend(self.host_ns, os.path.join(state_dir, "wireguard"))
            else:
                backend = self._wireguard
                reason = "given" if backend is not None else "no backend given"
            self._tunnel = Tunnel(
                node=self.node,
                vtep=vtep,
                host_ns=self.host_ns,
                state_dir=state_dir,
                instance=self.ledger.instance,
                store=store,
                kernel=self.kernel,
                backend=backend,
                reason=reason,
                underlay_mtu=lambda: self.default_mtu or self.plumbing.underlay_mtu(vtep),
                range_=self.encryption_range,
                port=self.encryption_port,
            )
            self._tunnel.gone = self.host_gone
            self._tunnel.handshake_timeout = self.encryption_join_timeout
            self._tunnel.switch_listeners.append(self._reannounce_encrypted)
            self._tunnel.publish_listeners.append(self._tag_key)
        return self._tunnel

    async def _tag_key(self, record: NodeKey) -> None:
        """This host's current WireGuard key and tunnel address as Serf tags too (``libnet node ls``
        shows them; the cluster store stays what hosts configure their peers from)."""
        client = getattr(self._membership, "client", None)
        if client is None or not hasattr(client, "tags"):
            return
        try:
            await client.tags({"wg_key": record.public_key, "wg_tunnel": record.tunnel})
        except LibnetError as exc:
            log.warning("could not put the WireGuard key into Serf tags: %s", exc)

    async def rotate_keys(self) -> dict[str, Any]:
        """Rotate this host's WireGuard key pair without loss (``libnet network rotate-keys``;
        :mod:`libnet.encryption.rotation`)."""
        return await rotation.rotate(self.tunnel())

    async def _reannounce_encrypted(self) -> None:
        """This host's tunnel address changed (a key rotation): its endpoints' peer
        records on encrypted networks get the new VTEP, stored and gossiped."""
        tunnel = self._tunnel
        if self.store is None or tunnel is None or tunnel.address is None:
            return
        for nid, nw in list(self._nets.items()):
            if not nw.options.get("encrypted"):
                continue
            for pair in await self.store.list(peers_prefix(P, nid)):
                try:
                    peer = decode(pair.value)
                except LibnetError:
                    continue
                if peer.node == self.node and peer.vtep != tunnel.address:
                    peer = dataclasses.replace(peer, vtep=tunnel.address)
                    await self.store.put(pair.key, encode(peer))
                    await self._announce("add", peer)

    async def encryption_status(self) -> dict[str, Any] | None:
        """The tunnel's status (backend and why; ``up`` once an encrypted network
        was set up here; seconds since each peer host's latest handshake), or None
        without a cluster store or VTEP."""
        if self._tunnel is None and (self.store is None or not self.vtep):
            return None
        tunnel = self.tunnel()
        return tunnel.status(await tunnel.handshake_ages())

    async def _known_nodes(self, store: Store) -> set[str]:
        """Every host name the cluster knows of: Serf members (any status), WireGuard key records and
        revocations, and the hosts of overlay endpoints."""
        names = {m.name for m in await self._membership.members()} if self._membership is not None else set()
        for prefix in (nodes_prefix(), revoked_prefix()):
            names |= {pair.key.rsplit("/", 1)[1] for pair in await store.list(prefix)}
        for pair in await store.list(f"{P}/peers/"):
            with contextlib.suppress(LibnetError):
                names.add(decode(pair.value).node)
        return names

    async def revoke_node(self, node: str) -> None:
        """Refuse ``node`` as a WireGuard peer on every host at once (``libnet node revoke``).

        Raises ``NoSuchNode`` for a name the cluster does not know (a typo would otherwise revoke
        nothing and mark a name for ever), ``BadRequest`` for this host itself."""
        store, _ = self._need()
        if node.lower() == self.node.lower():
            raise BadRequest("a host cannot revoke itself; run this on another host", node=node)
        if node not in await self._known_nodes(store):
            raise NoSuchNode(
                f"no host {node!r} is known to the cluster (no member, WireGuard key or endpoint of that name)",
                node=node,
            )
        await revoke(store, node)

    async def unrevoke_node(self, node: str) -> None:
        """Take back a revocation (``libnet node unrevoke``): ``node``'s tunnel publishes its key again
        and every host takes it as a peer again.  Raises ``NoSuchNode`` if it is not revoked."""
        store, _ = self._need()
        try:
            await store.get(revoked_prefix() + node)
        except KeyNotFound:
            raise NoSuchNode(f"host {node!r} is not revoked", node=node) from None
        await unrevoke(store, node)

    async def forget_node(self, node: str) -> None:
        """``node`` is gone for good (``libnet node rm``): its key record and tunnel address go."""
        if self.store is not None:
            await forget(self.store, node)

    async def _vtep_of(self, nw: NetworkInfo) -> str:
        """The VTEP address of this host on ``nw``: its tunnel address (the tunnel
        brought up first) on encrypted networks, else the underlay's."""
        _, vtep = self._need()
        if nw.options.get("encrypted"):
            tunnel = self.tunnel()
            address = await tunnel.ensure()
            if self.encryption_rotation > 0 and self._rotating is None:
                self._rotating = asyncio.create_task(rotation.rotate_periodically(tunnel, self.encryption_rotation))
            return address
        return vtep

    def mtu_limit(self, nw: NetworkInfo, vtep: str) -> int:
        """The largest MTU ``nw``'s containers can have on this host: the underlay's (``vtep``'s link, or
        the configured default) minus VXLAN's 50 (IPv4 VTEP) / 70 (IPv6), and on encrypted networks
        minus WireGuard's too (:func:`~libnet.encryption.tunnel.wireguard_overhead`; the VTEPs are then
        tunnel addresses, of the encryption range's family).  A larger ``mtu`` option is refused where
        the network is created and lowered to this on other hosts (:meth:`Plumbing.build`)."""
        mtu = self.default_mtu or self.plumbing.underlay_mtu(vtep)
        inner = vtep
        if nw.options.get("encrypted"):
            mtu -= wireguard_overhead(vtep)
            inner = str(tunnel_range(self.encryption_range).network_address)
        return mtu - (70 if ipaddress.ip_address(inner).version == 6 else 50)

    async def _await_tunnels(self, store: Store, nw: NetworkInfo) -> None:
        """An encrypted network is joined only with a working WireGuard tunnel to each other host
        holding endpoints on it (:meth:`Tunnel.await_peers`); else this host stops serving it
        again (if nothing else of it is here) and the join fails naming those hosts."""
        nodes = set()
        for pair in await store.list(peers_prefix(P, nw.id)):
            with contextlib.suppress(LibnetError):
                nodes.add(decode(pair.value).node)
        try:
            await self.tunnel().await_peers(nodes - {self.node}, nw.name)
        except LibnetError:
            if not self._local.get(nw.id):
                await self._teardown_local(nw.id)
            raise

    async def stop_tunnel(self) -> None:
        """Remove this host's WireGuard interfaces now (the host leaves the cluster for good), also
        those a previous agent left and this one never used; otherwise they outlive the agent,
        which re-adopts them on start.  The fail-closed route goes with them only when no encrypted
        network's namespace is left here (:meth:`_encrypted_left`)."""
        if self._tunnel is not None or (self.store is not None and self.vtep):
            left = await asyncio.to_thread(self._encrypted_left)
            if left:
                log.warning(
                    "leaving the cluster: the encrypted overlays' fail-closed route stays, as overlay namespaces "
                    "of this instance are left here (%s) whose VXLAN must never go out in clear; "
                    "libnet-agent --purge removes them and it",
                    ", ".join(left),
                )
            await self.tunnel().close(stop=True, unfence=not left)

    def _encrypted_left(self) -> list[str]:
        """This instance's overlay namespaces that still exist and are not known to be a plain overlay's:
        leaving does not tear networks down (containers stay attached), and an encrypted network's VXLAN
        device there still sends to the peers' tunnel addresses -- with the WireGuard interface gone,
        only the fence route keeps that from following another route in clear."""
        plain = {nid for nid, nw in self._nets.items() if not nw.options.get("encrypted")}
        return [
            rec.name
            for rec in self.ledger.records("overlay")
            if rec.owner not in plain and self.kernel.netns_exists(rec.name)
        ]
