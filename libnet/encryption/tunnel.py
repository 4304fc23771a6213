"""This host's WireGuard tunnel: the one encrypted path of its encrypted overlays.

One WireGuard interface per host (``lnw<instance[:8]>``: unique per machine,
as ``wireguard-go``'s control socket path is shared by all namespaces), in
the host namespace, with one tunnel address from the configured range
(claimed in the cluster store, :mod:`~libnet.encryption.records`).  The
VXLAN devices of encrypted overlays use the tunnel address as their local
VTEP and the peers' tunnel addresses as remote VTEPs, so their UDP rides
inside WireGuard: only WireGuard's UDP crosses the underlay.

No clear text, ever: before the interface exists, an nftables rule in the
instance's table of the host namespace drops every locally sent packet to
the tunnel range that would leave other than through the WireGuard device
(:func:`libnet.kernel.firewall.tunnel_guard_rules`).  While the device is
gone -- ``wireguard-go`` killed, restarting -- encrypted VXLAN has nowhere to
go and is dropped; a peer without a key record has no WireGuard peer entry,
so its traffic is dropped by WireGuard.

Keys (:mod:`~libnet.encryption.keys`): made locally, the private key only in
the state dir (0600).  The public key, the underlay endpoint and the tunnel
address are published as this host's record in the cluster store; every
host with a tunnel watches those records (full read, then every change) and
sets its WireGuard peers to exactly the other hosts' records, so a host
whose record is removed (:func:`revoke`) loses every peer at once.

Supervision: every ``check_interval`` seconds the backend is asked whether
the interface is alive; a dead one (``kill -9`` of ``wireguard-go``) is
brought up again with the same key, address and peers.  The agent stops the
tunnel when it stops (``close``).  MTU: the underlay's minus WireGuard's
overhead (60 bytes on an IPv4 underlay, 80 on IPv6: outer IP + UDP 8 + WireGuard 32).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from libnet.encryption import keys
from libnet.encryption.backend import Backend, WgConfig, WgPeer
from libnet.encryption.records import (
    NodeKey,
    P,
    claim_address,
    endpoint,
    nodes_prefix,
    release_address,
    revoked_prefix,
    tunnel_range,
)
from libnet.errors import LibnetError, Unavailable
from libnet.kernel import firewall
from libnet.kernel.api import Kernel
from libnet.store.base import Store

log = logging.getLogger("libnet.encryption")
DEFAULT_PORT = 51820
GUARD_KEY = "wireguard-guard"


def wireguard_overhead(underlay: str) -> int:
    """Bytes WireGuard adds: outer IPv4 20 / IPv6 40, UDP 8, WireGuard header 16 and tag 16."""
    return (40 if ipaddress.ip_address(underlay).version == 6 else 20) + 8 + 32


def ifname_of(instance: str) -> str:
    """The WireGuard interface of a libnet instance (at most 11 characters)."""
    return f"lnw{instance[:8]}"


async def forget(store: Store, node: str) -> None:
    """Remove ``node``'s key record and tunnel address (the host is gone for good): every host drops it as a peer."""
    await store.delete(nodes_prefix() + node)
    await release_address(store, node)


async def revoke(store: Store, node: str) -> None:
    """Refuse ``node`` as a peer on every host, at once and whatever key it publishes
    (``libnet node revoke``); its record and address go too."""
    await store.put(revoked_prefix() + node, b"revoked")
    await forget(store, node)


class Tunnel:
    """See the module docstring.  Constructing one touches nothing."""

    def __init__(
        self,
        *,
        node: str,
        vtep: str,
        host_ns: str | None,
        state_dir: str,
        instance: str,
        store: Store,
        kernel: Kernel,
        backend: Backend | None,
        reason: str,
        underlay_mtu: Callable[[], int],
        range_: str,
        port: int = DEFAULT_PORT,
        check_interval: float = 0.5,
    ) -> None:
        self.node, self.vtep, self.host_ns, self.store = node, vtep, host_ns, store
        self.kernel, self.backend, self.reason = kernel, backend, reason
        self.range, self.port, self.check_interval = str(tunnel_range(range_)), port, check_interval
        self.underlay_mtu = underlay_mtu
        self.ifname = ifname_of(instance)
        self.instance = instance
        self.dir = os.path.join(state_dir, "wireguard")
        self.address: str | None = None
        self.public_key = ""
        self._private = ""
        self.records: dict[str, NodeKey] = {}
        self.revoked: set[str] = set()
        self.restarts = 0
        self._lock = asyncio.Lock()
        self._sync_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._up = False

    # --- status ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What ``libnet agent status`` shows: backend and why, interface, key, address, peers."""
        out: dict[str, Any] = {
            "backend": self.backend.name if self.backend else None,
            "reason": self.reason,
            "interface": self.ifname,
            "up": self._up,
            "tunnel_address": self.address,
            "public_key": self.public_key or None,
            "peers": sorted(n for n in self.records if n != self.node and n not in self.revoked),
            "revoked": sorted(self.revoked),
            "restarts": self.restarts,
        }
        if self.backend is not None:
            out.update({k: v for k, v in self.backend.describe().items() if k != "backend"})
        return out

    # --- bring up -------------------------------------------------------------------

    def _need_backend(self) -> Backend:
        if self.backend is None:
            raise Unavailable(f"encrypted overlays are unavailable on this host: {self.reason}", node=self.node)
        return self.backend

    async def ensure(self) -> str:
        """The tunnel up (made on first use); returns this host's tunnel address.

        Order: guard rule, key, address, interface with its peers, then the
        published record -- so nothing encrypted is ever sent without the guard."""
        async with self._lock:
            if self._up and self.address is not None:
                return self.address
            backend = self._need_backend()
            await asyncio.to_thread(self._guard)
            self.address = await claim_address(self.store, self.range, self.node)
            self._private, self.public_key = await asyncio.to_thread(keys.load_or_make, self.dir)
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._tasks.append(asyncio.create_task(self._watch(ready)))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(ready), 10)
            await asyncio.to_thread(self._bring_up, backend)
            record = NodeKey(self.node, self.public_key, endpoint(self.vtep, self.port), self.address)
            await self.store.put(nodes_prefix() + self.node, record.encode())
            self._tasks.append(asyncio.create_task(self._supervise()))
            self._up = True
            log.info("wireguard tunnel %s up (%s, %s): %s", self.ifname, backend.name, self.reason, self.address)
            return self.address

    def _guard(self) -> None:
        from libnet.ownership import firewall_table

        fw = self.kernel.firewall(self.host_ns, firewall_table(self.instance))
        try:
            fw.add(GUARD_KEY, firewall.tunnel_guard_rules(self.range, self.ifname))
        finally:
            fw.close()

    def mtu(self) -> int:
        """The WireGuard interface's MTU: the underlay's minus WireGuard's overhead."""
        return self.underlay_mtu() - wireguard_overhead(self.vtep)

    def _config(self) -> WgConfig:
        peers = tuple(
            WgPeer(r.public_key, r.endpoint, (f"{r.tunnel}/{ipaddress.ip_address(r.tunnel).max_prefixlen}",))
            for name, r in sorted(self.records.items())
            if name != self.node and name not in self.revoked and r.public_key != self.public_key
        )
        return WgConfig(self._private, self.port, peers)

    def _bring_up(self, backend: Backend) -> None:
        """Make the interface exist with key, peers, MTU, address; up."""
        assert self.address is not None
        backend.create(self.ifname)
        backend.configure(self.ifname, self._config())
        prefix = tunnel_range(self.range).prefixlen
        mtu = self.mtu()
        deadline = time.monotonic() + 5
        with self.kernel.netlink(self.host_ns) as nl:
            while not nl.has_link(self.ifname):
                if time.monotonic() > deadline:
                    raise Unavailable(f"the WireGuard interface {self.ifname} did not appear", ifname=self.ifname)
                time.sleep(0.02)
            if nl.link(self.ifname).mtu != mtu:
                nl.set_mtu(self.ifname, mtu)
            cidr = f"{self.address}/{prefix}"
            if cidr not in nl.addresses(self.ifname):
                nl.add_address(self.ifname, cidr, nodad=True)
            nl.set_up(self.ifname)

    # --- peers ----------------------------------------------------------------------

    async def _sync(self) -> None:
        """Set the WireGuard peers to exactly the other hosts' records."""
        if self.backend is None or not self._private:
            return
        async with self._sync_lock:
            try:
                await asyncio.to_thread(self.backend.configure, self.ifname, self._config())
            except LibnetError as exc:  # the interface is gone: the supervisor brings it back, with peers
                log.warning("wireguard peers of %s: %s", self.ifname, exc)

    def _set(self, key: str, value: bytes | None) -> bool:
        """Apply one record of the encryption prefix; whether the peers changed."""
        node = key.rsplit("/", 1)[1]
        if key.startswith(revoked_prefix()):
            had = node in self.revoked
            if value is None:
                self.revoked.discard(node)
            else:
                self.revoked.add(node)
            return had != (value is not None)
        if not key.startswith(nodes_prefix()):
            return False  # address claims
        if value is None:
            return self.records.pop(node, None) is not None
        try:
            rec = NodeKey.decode(value)
            keys.check_key(rec.public_key)
        except LibnetError as exc:
            log.warning("ignoring the wireguard record of %s: %s", node, exc)
            return self.records.pop(node, None) is not None
        old = self.records.get(node)
        self.records[node] = rec
        return old != rec

    async def _watch(self, ready: asyncio.Future[None]) -> None:
        """Every host's record and every revocation: a full read, then every change from the revision before it."""
        while True:
            try:
                rev = await self.store.revision()
                pairs = await self.store.list(f"{P}/")
                self.records.clear()
                self.revoked.clear()
                for pair in pairs:
                    self._set(pair.key, pair.value)
                if self._up:
                    await self._sync()
                if not ready.done():
                    ready.set_result(None)
                async for event in self.store.watch_prefix(f"{P}/", start_revision=rev):
                    if self._set(event.key, event.value if event.kind == "put" else None) and self._up:
                        await self._sync()
            except LibnetError as exc:
                log.warning("wireguard record watch: %s; re-reading", exc)
                await asyncio.sleep(1)

    # --- supervision ----------------------------------------------------------------

    async def _supervise(self) -> None:
        backend = self._need_backend()
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                why = await asyncio.to_thread(self._unhealthy, backend)
                if why:
                    log.warning("wireguard interface %s (%s) %s: bringing it up again", self.ifname, backend.name, why)
                    async with self._sync_lock:
                        await asyncio.to_thread(self._bring_up, backend)
                    self.restarts += 1
            except (LibnetError, OSError) as exc:  # the next round tries again
                log.warning("wireguard supervision of %s: %s", self.ifname, exc)

    def _unhealthy(self, backend: Backend) -> str | None:
        """Why the interface cannot carry traffic now (None: it can)."""
        if not backend.alive(self.ifname):
            return "is gone"
        with self.kernel.netlink(self.host_ns) as nl:
            if not nl.has_link(self.ifname):
                return "is gone"
            if not nl.link(self.ifname).up:
                return "is down"
            if f"{self.address}/{tunnel_range(self.range).prefixlen}" not in nl.addresses(self.ifname):
                return "lost its tunnel address"
        return None

    async def close(self) -> None:
        """Stop supervising and remove the interface (the guard rule stays: nothing leaves in clear)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._up and self.backend is not None:
            await asyncio.to_thread(self.backend.delete, self.ifname)
        self._up = False
