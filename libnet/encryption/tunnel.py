"""This host's WireGuard tunnel: the one encrypted path of its encrypted overlays.

One WireGuard interface per host (``lnw<instance[:8]>``: unique per machine,
as ``wireguard-go``'s control socket path is shared by all namespaces), in
the host namespace, with one tunnel address from the configured range
(claimed in the cluster store, :mod:`~libnet.encryption.records`).  The
VXLAN devices of encrypted overlays send from the unspecified address: the
kernel takes the source from this host's one route into the tunnel range
(``<range> dev <wg> src <tunnel address>``), and the peers' tunnel
addresses are their remote VTEPs, so VXLAN's UDP rides inside WireGuard:
only WireGuard's UDP crosses the underlay.

During a key rotation (:mod:`~libnet.encryption.rotation`) a host has two
*slots*: the interface of the current key and that of the coming one
(``lnw<instance[:8]>`` and ``...b``, ports ``port`` and ``port + 1``, each
with its own tunnel address, as /32 or /128); replacing that one route
switches key and source address in one step.

No clear text, ever: before any interface exists, two guards are set in the
host namespace.  The fail-closed one is a route, :mod:`~libnet.encryption.fence`
(``unreachable <range> metric 4294967295 proto 108``): whenever the route
through WireGuard is gone -- interface down or deleted, ``wireguard-go``
killed, restarting -- packets to tunnel addresses are dropped, whatever the
firewall holds and whether the agent runs or not.  The second is an nftables
rule in the instance's table that drops every locally sent packet to the
tunnel range that would leave other than through a WireGuard slot
(:func:`libnet.kernel.firewall.tunnel_guard_rules`; a ruleset flush removes
it until the supervision puts it back).  A peer without a key record has no
WireGuard peer entry, so its traffic is dropped by WireGuard.

Keys (:mod:`~libnet.encryption.keys`): made locally, the private keys only
in the state dir (0600).  The public keys, underlay endpoints and tunnel
addresses are published as this host's record in the cluster store; every
host with a tunnel watches those records (full read, then every change) and
sets the WireGuard peers of each of its slots to exactly the other hosts'
identities, so a host whose record is removed or revoked (:func:`revoke`)
loses every peer at once.

Working tunnels (:meth:`Tunnel.await_peers`): a join of an encrypted network
waits, at most ``handshake_timeout`` seconds, until an ICMP echo to each peer
host's tunnel address comes back through WireGuard (:mod:`libnet.kernel.probe`),
else fails with ``TunnelDown`` naming those hosts; a host whose record shows
another encryption range is refused at once (``IncompatibleTunnel``) and
listed by :meth:`Tunnel.status`.

Supervision: every ``check_interval`` seconds the guards are checked
and put back if missing (:meth:`Tunnel.restore_guards`: a flushed ruleset, the fence route deleted),
then each live slot (process, link up, address); a dead one (``kill -9`` of ``wireguard-go``) is
brought up again with the same key, address and peers.  The interfaces
outlive an agent stop or crash (the next agent adopts them, so encrypted
traffic goes on); they are stopped when the host leaves the cluster for good
(``close(stop=True)``: ``libnet node drain``, ``libnet-agent --leave``), and the
fence route with them.  MTU: the underlay's minus WireGuard's overhead (60 bytes on
an IPv4 underlay, 80 on IPv6: outer IP + UDP 8 + WireGuard 32).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from libnet.encryption import fence, keys
from libnet.encryption.backend import Backend, WgConfig, WgPeer
from libnet.encryption.records import (
    Identity,
    NodeKey,
    P,
    acks_prefix,
    claim_address,
    endpoint,
    nodes_prefix,
    release_address,
    revoked_prefix,
    slot_owner,
    tunnel_range,
)
from libnet.errors import BadRequest, IncompatibleTunnel, KeyNotFound, LibnetError, TunnelDown, Unavailable
from libnet.kernel import firewall, probe
from libnet.kernel.api import Kernel
from libnet.store.base import Store

log = logging.getLogger("libnet.encryption")
DEFAULT_PORT = 51820
GUARD_KEY = "wireguard-guard"
CURRENT_FILE = "current-slot"
#: seconds a join of an encrypted network waits for a working tunnel to each peer host holding endpoints on it
HANDSHAKE_TIMEOUT = 10.0


def wireguard_overhead(underlay: str) -> int:
    """Bytes WireGuard adds: outer IPv4 20 / IPv6 40, UDP 8, WireGuard header 16 and tag 16."""
    return (40 if ipaddress.ip_address(underlay).version == 6 else 20) + 8 + 32


def ifname_of(instance: str, slot: int = 0) -> str:
    """The WireGuard interface of a libnet instance's slot (at most 12 characters)."""
    return f"lnw{instance[:8]}" + ("b" if slot else "")


async def forget(store: Store, node: str) -> None:
    """Remove ``node``'s key record and tunnel addresses (the host is gone for good): every host drops it."""
    await store.delete(nodes_prefix() + node)
    await release_address(store, node)


async def revoke(store: Store, node: str) -> None:
    """Refuse ``node`` as a peer on every host, at once and whatever key it publishes
    (``libnet node revoke``); its record goes too.  Its tunnel addresses stay claimed (no
    other host gets them meanwhile) until it is removed for good (:func:`forget`) or the
    revocation is taken back (:func:`unrevoke`: the host then publishes its key again)."""
    await store.put(revoked_prefix() + node, b"revoked")
    await store.delete(nodes_prefix() + node)


async def unrevoke(store: Store, node: str) -> None:
    """Take back ``node``'s revocation: its running tunnel sees that and publishes its record
    again, so every host takes it as a peer again (``libnet node unrevoke``)."""
    await store.delete(revoked_prefix() + node)


@dataclass
class Slot:
    """One WireGuard interface of this host: its key, port and tunnel address."""

    index: int
    ifname: str
    port: int
    address: str = ""
    private: str = ""
    public: str = ""


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
        self.instance = instance
        self.state_dir = state_dir
        self.dir = os.path.join(state_dir, "wireguard")
        self.slots = [Slot(i, ifname_of(instance, i), port + i) for i in (0, 1)]
        self.current = 0
        self.live: set[int] = set()  # slots whose interface should exist
        self.records: dict[str, NodeKey] = {}
        self.revoked: set[str] = set()
        self.restarts = 0
        self.rotations = 0
        #: awaited after a rotation switched this host's tunnel address (the driver re-announces its endpoints)
        self.switch_listeners: list[Callable[[], Awaitable[None]]] = []
        #: awaited with this host's record each time it is published (the driver copies the key into Serf tags)
        self.publish_listeners: list[Callable[[NodeKey], Awaitable[None]]] = []
        self.acked: Callable[[], None] = lambda: None  # poked when another host acknowledged a coming key
        #: whether a host is gone (its Serf member failed past the grace period, or left): no tunnel is awaited
        #: to it, nor its acknowledgement of a coming key (the driver sets its membership's view)
        self.gone: Callable[[str], bool] = lambda node: False
        self.handshake_timeout = HANDSHAKE_TIMEOUT
        #: (namespace, address, timeout) -> whether an echo came back (:func:`libnet.kernel.probe.echo`)
        self.probe: Callable[[str | None, str, float], bool] = probe.echo
        self._incompatible: dict[str, str] = {}  # peer host -> why its tunnel cannot work with this one
        self._guarded: dict[int, int] = {}  # encrypted VNI served here -> its VXLAN port (its entry guard is set)
        self._guard_lock = threading.Lock()  # the guards change from threads (asyncio.to_thread)
        self._lock = asyncio.Lock()
        #: held while peers are set or a slot's interface is brought up (the supervision) or removed (a rotation)
        self.sync_lock = asyncio.Lock()
        self.rotation_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._up = False

    # --- the current slot -------------------------------------------------------------

    @property
    def address(self) -> str | None:
        """This host's tunnel address now (the VTEP of its encrypted overlays), None before :meth:`ensure`."""
        return self.slots[self.current].address or None

    @property
    def public_key(self) -> str:
        return self.slots[self.current].public

    @property
    def ifname(self) -> str:
        return self.slots[self.current].ifname

    def status(self, handshake_ages: dict[str, float | None] | None = None) -> dict[str, Any]:
        """What ``libnet agent status`` shows: backend and why, interface, key, address, peers,
        incompatible hosts, and ``handshake_ages`` when given (:meth:`handshake_ages`)."""
        out: dict[str, Any] = {
            "backend": self.backend.name if self.backend else None,
            "reason": self.reason,
            "interface": self.ifname,
            "up": self._up,
            "tunnel_address": self.address,
            "public_key": self.public_key or None,
            "peers": sorted(n for n in self.records if n != self.node and n not in self.revoked),
            "revoked": sorted(self.revoked),
            "incompatible": dict(sorted(self._incompatible.items())),
            "handshake_ages": handshake_ages,
            "restarts": self.restarts,
            "rotations": self.rotations,
        }
        if self.backend is not None:
            out.update({k: v for k, v in self.backend.describe(self.ifname).items() if k != "backend"})
        return out

    # --- bring up -------------------------------------------------------------------

    def need_backend(self) -> Backend:
        if self.backend is None:
            raise Unavailable(f"encrypted overlays are unavailable on this host: {self.reason}", node=self.node)
        return self.backend

    def _read_current(self) -> int:
        try:
            with open(os.path.join(self.dir, CURRENT_FILE)) as f:
                return 1 if f.read().strip() == "1" else 0
        except OSError:
            return 0

    def write_current(self, slot: int) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        tmp = os.path.join(self.dir, CURRENT_FILE + ".tmp")
        with open(tmp, "w") as f:
            f.write(f"{slot}\n")
        os.replace(tmp, os.path.join(self.dir, CURRENT_FILE))

    async def ensure(self) -> str:
        """The tunnel up (made on first use); returns this host's tunnel address.

        Order: guards (fence route, then rule), key, address, interface with its
        peers and the route, then the published record -- so nothing encrypted
        is ever sent without the guards.  A slot a crash left from a rotation half done is
        removed (its key was never the one peers were switched to)."""
        async with self._lock:
            if self._up and self.address is not None:
                return self.address
            backend = self.need_backend()
            await asyncio.to_thread(self._check_range)
            await asyncio.to_thread(self._guard)
            self.current = await asyncio.to_thread(self._read_current)
            slot, other = self.slots[self.current], self.slots[1 - self.current]
            slot.address = await claim_address(self.store, self.range, slot_owner(self.node, slot.index))
            slot.private, slot.public = await asyncio.to_thread(keys.load_or_make, self.dir, slot.index)
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._tasks.append(asyncio.create_task(self._watch(ready)))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(ready), 10)
            if await asyncio.to_thread(backend.alive, other.ifname):
                await asyncio.to_thread(backend.delete, other.ifname)
            # and the identity of that slot (a coming key never switched to, or a retired one a crash kept):
            # its private key file and its tunnel address claim, or they stay on disk and in the store for ever
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(os.unlink, os.path.join(self.dir, keys.key_file(other.index)))
            await release_address(self.store, self.node, other.index)
            other.address, other.private, other.public = "", "", ""
            self.live = {slot.index}
            await asyncio.to_thread(self.bring_up, backend, slot)
            await asyncio.to_thread(self.route_via, slot)
            await self.publish()
            self._tasks.append(asyncio.create_task(self._supervise()))
            self._up = True
            log.info("wireguard tunnel %s up (%s, %s): %s", slot.ifname, backend.name, self.reason, slot.address)
            return slot.address

    def _check_range(self) -> None:
        """The tunnel range must hold no address of this host but the tunnel's own: the route and
        guard into the range would cut the host off (e.g. a range over the underlay)."""
        net = tunnel_range(self.range)
        with self.kernel.netlink(self.host_ns) as nl:
            mine = {c for s in self.slots if nl.has_link(s.ifname) for c in nl.addresses(s.ifname)}
            for cidr in nl.addresses():
                iface = ipaddress.ip_interface(cidr.split("%", 1)[0])
                if cidr in mine or iface.version != net.version:
                    continue
                if iface.ip in net:
                    raise BadRequest(
                        f"encryption range {self.range} holds {iface.ip}, an address of this host: the tunnel's "
                        "route and guard would cut it off; choose a range of its own (--encryption-range)",
                        range=self.range,
                        address=str(iface.ip),
                    )
                if iface.network.overlaps(net):  # inside a network this host is on: its route would shadow it
                    raise BadRequest(
                        f"encryption range {self.range} lies in {iface.network}, a network this host is on "
                        f"({iface.ip}): the tunnel's route would take that network's hosts (peers' WireGuard "
                        "endpoints too) into the tunnel; choose a range of its own (--encryption-range)",
                        range=self.range,
                        address=str(iface.ip),
                    )

    def _guard(self) -> bool:
        """Both guards: the fence route (:meth:`_fence`), then the nftables rule; whether the
        fence was missing."""
        from libnet.ownership import firewall_table

        fenced = self._fence()
        fw = self.kernel.firewall(self.host_ns, firewall_table(self.instance))
        try:
            fw.add(GUARD_KEY, self._guard_rules())
        finally:
            fw.close()
        return fenced

    def _fence(self) -> bool:
        """The fail-closed route over the tunnel range (:mod:`~libnet.encryption.fence`); whether it
        was made now.  ``Conflict`` when another's route holds its place (it is left alone)."""
        with self.kernel.netlink(self.host_ns) as nl:
            return fence.ensure(nl, self.state_dir, self.range)

    def _unfence(self) -> str | None:
        with self.kernel.netlink(self.host_ns) as nl:
            return fence.remove(nl, self.state_dir)

    def _guard_rules(self) -> list[tuple[str, list[dict[str, Any]]]]:
        return firewall.tunnel_guard_rules(self.range, [s.ifname for s in self.slots])

    def _vni_rules(self, vni: int, port: int) -> list[tuple[str, list[dict[str, Any]]]]:
        return firewall.encrypted_vni_rules(vni, port, [s.ifname for s in self.slots])

    def guard_vni(self, vni: int, port: int) -> None:
        """Let VXLAN of encrypted network ``vni`` in only through the WireGuard devices
        (:func:`libnet.kernel.firewall.encrypted_vni_rules`); before its device exists."""
        from libnet.ownership import firewall_table

        with self._guard_lock:
            fw = self.kernel.firewall(self.host_ns, firewall_table(self.instance))
            try:
                fw.add(f"{GUARD_KEY}:vni:{vni}", self._vni_rules(vni, port))
                self._guarded[vni] = port
            finally:
                fw.close()

    def unguard_vni(self, vni: int) -> None:
        """The encrypted network ``vni`` is no longer served here (its device is gone)."""
        from libnet.ownership import firewall_table

        with self._guard_lock:
            self._guarded.pop(vni, None)
            fw = self.kernel.firewall(self.host_ns, firewall_table(self.instance))
            try:
                fw.remove(f"{GUARD_KEY}:vni:{vni}")
            finally:
                fw.close()

    def sweep_vni_guards(self, device_left: Callable[[int], bool]) -> list[int]:
        """Remove the entry guards of VNIs neither served here nor with an encrypted network's device
        left (``device_left``: e.g. an overlay namespace kept for attached containers); returns them.
        Those are what a network's teardown did not reach -- an agent killed in the middle of a join,
        or down while the network was deleted.  Left, such a guard would drop the VXLAN of a plain
        overlay that gets the VNI later."""
        from libnet.ownership import firewall_table

        prefix = f"{GUARD_KEY}:vni:"
        with self._guard_lock:
            fw = self.kernel.firewall(self.host_ns, firewall_table(self.instance))
            try:
                stale = sorted(
                    {int(k[len(prefix) :]) for r in fw.rules() if (k := r["key"]).startswith(prefix)}
                    - set(self._guarded)
                )
                stale = [vni for vni in stale if not device_left(vni)]
                for vni in stale:
                    fw.remove(f"{prefix}{vni}")
                return stale
            finally:
                fw.close()

    def restore_guards(self) -> list[str]:
        """Put back the fence route, the guard rule and the entry guard of each encrypted VNI served
        here where they are missing or incomplete -- a route deleted by hand, a ruleset flushed by
        hand or by a firewall service's reload (``nft flush ruleset``) -- and return what was.
        Called by the supervision every round: without them clear VXLAN from the underlay would
        enter an encrypted network, and a tunnel that went down would send clear VXLAN out of
        another route (the fence alone stops that one)."""
        from libnet.ownership import firewall_table

        with self._guard_lock:
            restored = [f"unreachable route {self.range}"] if self._fence() else []
            fw = self.kernel.firewall(self.host_ns, firewall_table(self.instance))
            try:
                have = Counter(r["key"] for r in fw.rules())
                wanted = {GUARD_KEY: self._guard_rules()}
                for vni, port in sorted(self._guarded.items()):
                    wanted[f"{GUARD_KEY}:vni:{vni}"] = self._vni_rules(vni, port)
                lost = [key for key, rules in wanted.items() if have[key] != len(rules)]
                for key in lost:
                    fw.add(key, wanted[key])
                return restored + lost
            finally:
                fw.close()

    def mtu(self) -> int:
        """The WireGuard interface's MTU: the underlay's minus WireGuard's overhead."""
        return self.underlay_mtu() - wireguard_overhead(self.vtep)

    def identity(self, slot: Slot) -> Identity:
        return (slot.public, endpoint(self.vtep, slot.port), slot.address)

    async def publish(self) -> None:
        """This host's record: the current slot's identity, and the other live one's."""
        cur = self.slots[self.current]
        others = tuple(self.identity(self.slots[i]) for i in sorted(self.live) if i != self.current)
        record = NodeKey(self.node, cur.public, endpoint(self.vtep, cur.port), cur.address, others, self.range)
        await self.store.put(nodes_prefix() + self.node, record.encode())
        for listener in self.publish_listeners:
            await listener(record)

    def config(self, slot: Slot) -> WgConfig:
        """``slot``'s configuration: its key and port, every identity of every other, unrevoked host."""
        own = {s.public for s in self.slots if s.public}
        peers = tuple(
            WgPeer(key, ep, (f"{tunnel}/{ipaddress.ip_address(tunnel).max_prefixlen}",))
            for name, r in sorted(self.records.items())
            if name != self.node and name not in self.revoked
            for key, ep, tunnel in r.identities()
            if key not in own
        )
        return WgConfig(slot.private, slot.port, peers)

    def _host_cidr(self, slot: Slot) -> str:
        return f"{slot.address}/{ipaddress.ip_address(slot.address).max_prefixlen}"

    def bring_up(self, backend: Backend, slot: Slot) -> None:
        """Make ``slot``'s interface exist with key, peers, MTU, address (a host route: /32 or /128); up."""
        backend.create(slot.ifname)
        backend.configure(slot.ifname, self.config(slot))
        mtu = self.mtu()
        deadline = time.monotonic() + 5
        with self.kernel.netlink(self.host_ns) as nl:
            while not nl.has_link(slot.ifname):
                if time.monotonic() > deadline:
                    raise Unavailable(f"the WireGuard interface {slot.ifname} did not appear", ifname=slot.ifname)
                time.sleep(0.02)
            if nl.link(slot.ifname).mtu != mtu:
                nl.set_mtu(slot.ifname, mtu)
            if self._host_cidr(slot) not in nl.addresses(slot.ifname):
                nl.add_address(slot.ifname, self._host_cidr(slot), nodad=True)
            nl.set_up(slot.ifname)
        if slot.index == self.current:
            self.route_via(slot)

    def route_via(self, slot: Slot) -> None:
        """The one route into the tunnel range: through ``slot``, from its address (one atomic replace)."""
        with self.kernel.netlink(self.host_ns) as nl:
            nl.add_route(self.range, dev=slot.ifname, src=slot.address)

    # --- peers ----------------------------------------------------------------------

    async def sync(self) -> None:
        """Set every live slot's WireGuard peers to exactly the other hosts' identities,
        then acknowledge the coming keys of other hosts' rotations."""
        if self.backend is None or not self._up:
            return
        async with self.sync_lock:
            for i in sorted(self.live):
                try:
                    await asyncio.to_thread(self.backend.configure, self.slots[i].ifname, self.config(self.slots[i]))
                except LibnetError as exc:  # the interface is gone: the supervisor brings it back, with peers
                    log.warning("wireguard peers of %s: %s", self.slots[i].ifname, exc)
                    return
        for name, rec in self.records.items():
            if name != self.node and name not in self.revoked:
                for key, _, _ in rec.others:
                    await self.store.put(acks_prefix(name) + self.node, key.encode())

    async def repair(self) -> list[str]:
        """The overlay's anti-entropy for the tunnel (called from the overlay driver's
        ``repair`` beside its own peers): the guards (fence route, rule) and the route into
        the tunnel put back, the records' watch restarted if it ended, and every live interface's
        peers set again from the records -- by difference, so only drift (a peer removed
        or changed by hand, a lost event) changes anything.  Returns what was repaired."""
        if self.backend is None or not self._up:
            return []
        repaired = []
        if await asyncio.to_thread(self._guard):
            repaired.append(f"wireguard fail-closed route over {self.range} put back")
        if not self.rotation_lock.locked():  # a rotation moves the route itself
            await asyncio.to_thread(self.route_via, self.slots[self.current])
        if not self._tasks or self._tasks[0].done():
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._tasks[:1] = [asyncio.create_task(self._watch(ready))]
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(ready), 10)
            repaired.append("wireguard record watch restarted")
        await self.sync()  # the backends change only what differs, and log nothing when nothing does
        if await self._republish():  # this host's record lost, and the watch's event of it too
            repaired.append("this host's wireguard key record published again")
        return repaired

    def _set(self, key: str, value: bytes | None) -> bool:
        """Apply one record of the encryption prefix; whether the peers changed."""
        node = key.rsplit("/", 1)[1]
        if key.startswith(acks_prefix(self.node)):
            self.acked()
            return False
        if key.startswith(revoked_prefix()):
            had = node in self.revoked
            if value is None:
                self.revoked.discard(node)
            else:
                self.revoked.add(node)
            return had != (value is not None)
        if not key.startswith(nodes_prefix()):
            return False  # address claims, other hosts' acknowledgements
        if value is None:
            self._incompatible.pop(node, None)
            return self.records.pop(node, None) is not None
        try:
            rec = NodeKey.decode(value)
            for public, _, _ in rec.identities():
                keys.check_key(public)
            why = rec.incompatible_with(self.range) if node != self.node else None
        except LibnetError as exc:
            log.warning("ignoring the wireguard record of %s: %s", node, exc)
            return self.records.pop(node, None) is not None
        if why is None:
            self._incompatible.pop(node, None)
        elif self._incompatible.get(node) != why:
            self._incompatible[node] = why
            log.error("wireguard peer %s cannot reach this host on encrypted overlays: %s", node, why)
        old = self.records.get(node)
        self.records[node] = rec
        return old != rec

    async def _missing_unrevoked(self) -> bool:
        """Whether the store holds neither this host's record nor a revocation of it (read from the store,
        not from the watch's view: the anti-entropy must notice a lost event too)."""
        for key in (nodes_prefix() + self.node, revoked_prefix() + self.node):
            try:
                await self.store.get(key)
            except KeyNotFound:
                continue
            return False
        return True

    async def _republish(self) -> bool:
        """This host's record back into the store when it is missing though the host is not revoked
        -- a revocation taken back (:func:`unrevoke`), or the record deleted by anyone else or lost
        with a store restored from an older backup -- so the other hosts take it as a peer again."""
        if not self._up or not await self._missing_unrevoked():
            return False
        slot = self.slots[self.current]
        if await claim_address(self.store, self.range, slot_owner(self.node, slot.index)) != slot.address:
            log.error(
                "wireguard: this host's tunnel address %s was given to another host; restart the agent", slot.address
            )
            return False
        log.info("wireguard: this host's key record is missing and it is not revoked: publishing it again")
        await self.publish()
        return True

    async def _watch(self, ready: asyncio.Future[None]) -> None:
        """Every host's record and every revocation: a full read, then every change from the revision before it."""
        while True:
            try:
                rev = await self.store.revision()
                pairs = await self.store.list(f"{P}/")
                self.records.clear()
                self.revoked.clear()
                self._incompatible.clear()
                for pair in pairs:
                    self._set(pair.key, pair.value)
                await self.sync()
                await self._republish()
                if not ready.done():
                    ready.set_result(None)
                async for event in self.store.watch_prefix(f"{P}/", start_revision=rev):
                    if self._set(event.key, event.value if event.kind == "put" else None):
                        await self.sync()
                    own = (revoked_prefix() + self.node, nodes_prefix() + self.node)
                    if event.key in own and event.kind != "put":  # unrevoked, or the record deleted or lost
                        await self._republish()
            except LibnetError as exc:
                log.warning("wireguard record watch: %s; re-reading", exc)
                await asyncio.sleep(1)

    # --- working tunnels ----------------------------------------------------------------

    def _latest_handshakes(self) -> dict[str, float]:
        """Public key -> latest handshake (Unix seconds) over every live slot (blocking: asks the backend)."""
        latest: dict[str, float] = {}
        if self.backend is not None and self._up:
            for i in sorted(self.live):
                try:
                    seen = self.backend.handshakes(self.slots[i].ifname)
                except LibnetError:  # the interface is gone: the supervisor brings it back
                    continue
                for key, when in seen.items():
                    latest[key] = max(latest.get(key, 0.0), when)
        return latest

    async def handshake_ages(self) -> dict[str, float | None]:
        """Each peer host (record, not revoked) -> seconds since its latest handshake with any
        live slot of this host, through any of its identities (None: never, or unreadable)."""
        latest = await asyncio.to_thread(self._latest_handshakes)
        now = time.time()
        out: dict[str, float | None] = {}
        for name, rec in self.records.items():
            if name == self.node or name in self.revoked:
                continue
            when = max((latest.get(key, 0.0) for key, _, _ in rec.identities()), default=0.0)
            out[name] = round(max(now - when, 0.0), 1) if when > 0 else None
        return out

    async def _not_working(self, nodes: set[str]) -> dict[str, str]:
        """Of the peer hosts ``nodes``, those without a working tunnel to this host now, and why:
        an echo to each one's tunnel address must come back (through WireGuard both ways)."""
        out, probed = {}, {}
        for node in sorted(nodes):
            if node == self.node or node in self.revoked or self.gone(node):
                continue  # a revoked host is refused on purpose; a gone host is no peer any more
            if node in self._incompatible:
                out[node] = self._incompatible[node]
            elif node not in self.records:
                out[node] = "published no WireGuard key (is its agent running, with a WireGuard backend?)"
            else:
                probed[node] = asyncio.to_thread(self.probe, self.host_ns, self.records[node].tunnel, 1.0)
        answers = await asyncio.gather(*probed.values())
        ages = await self.handshake_ages() if not all(answers) else {}
        for node, ok in zip(probed, answers, strict=True):
            if not ok:
                age = ages.get(node)
                seen = f"last handshake {age:g} s ago" if age is not None else "no handshake yet"
                out[node] = f"its tunnel address {self.records[node].tunnel} does not answer through WireGuard ({seen})"
        return out

    async def await_peers(self, nodes: set[str], network: str = "") -> None:
        """Return once this host has a working tunnel (an echo answered through WireGuard) to each
        host in ``nodes`` (the peer hosts with endpoints on an encrypted network being joined),
        waiting at most ``handshake_timeout`` s; revoked and gone hosts are not awaited.

        Raises ``IncompatibleTunnel`` at once for a host whose encryption range differs, and
        ``TunnelDown`` naming each host still without one after the wait."""
        deadline = time.monotonic() + self.handshake_timeout
        while True:
            bad = await self._not_working(nodes)
            if not bad:
                return
            incompatible = sorted(n for n in bad if n in self._incompatible)
            if incompatible:
                node = incompatible[0]
                raise IncompatibleTunnel(
                    f"host {node} cannot carry this host's encrypted overlays: {bad[node]}", node=node, network=network
                )
            if time.monotonic() >= deadline:
                why = "; ".join(f"{n}: {r}" for n, r in sorted(bad.items()))
                raise TunnelDown(
                    f"no working WireGuard tunnel to {', '.join(sorted(bad))} within {self.handshake_timeout:g} s "
                    f"({why}); encrypted traffic never goes in clear, so the join is refused",
                    nodes=sorted(bad),
                    network=network,
                )
            await asyncio.sleep(0.1)

    # --- supervision ----------------------------------------------------------------

    async def _supervise(self) -> None:
        backend = self.need_backend()
        while True:
            await asyncio.sleep(self.check_interval)
            try:  # the guards first: a flushed ruleset is put back within a round, not at the next anti-entropy
                if restored := await asyncio.to_thread(self.restore_guards):
                    log.warning("wireguard guards were missing (ruleset flushed?): put back %s", restored)
            except (LibnetError, OSError) as exc:
                log.warning("wireguard guard rules: %s", exc)
            except Exception:
                log.exception("wireguard guard rules could not be checked; the next round tries again")
            for i in sorted(self.live):
                slot = self.slots[i]
                try:
                    why = await asyncio.to_thread(self._unhealthy, backend, slot)
                    if why and i in self.live:
                        log.warning(
                            "wireguard interface %s (%s) %s: bringing it up again", slot.ifname, backend.name, why
                        )
                        async with self.sync_lock:
                            if i not in self.live:  # a rotation undid or retired it meanwhile: it stays gone
                                continue
                            await asyncio.to_thread(self.bring_up, backend, slot)
                        self.restarts += 1
                except (LibnetError, OSError) as exc:  # the next round tries again
                    log.warning("wireguard supervision of %s: %s", slot.ifname, exc)
                except Exception:  # anything else too: a supervision that ended would never bring a tunnel back
                    log.exception("wireguard supervision of %s failed; the next round tries again", slot.ifname)

    def _unhealthy(self, backend: Backend, slot: Slot) -> str | None:
        """Why ``slot``'s interface cannot carry traffic now (None: it can)."""
        if not backend.alive(slot.ifname):
            return "is gone"
        with self.kernel.netlink(self.host_ns) as nl:
            if not nl.has_link(slot.ifname):
                return "is gone"
            if not nl.link(slot.ifname).up:
                return "is down"
            if self._host_cidr(slot) not in nl.addresses(slot.ifname):
                return "lost its tunnel address"
        return None

    async def close(self, stop: bool = False, unfence: bool = True) -> None:
        """Stop supervising.  The interfaces stay -- encrypted traffic goes on while the
        agent is down, and the next agent adopts them (DESIGN.md, "Liveness") -- unless
        ``stop`` (the host leaves the cluster for good): then the fence route goes after them,
        unless not ``unfence`` (an encrypted network's VXLAN device is left here).
        The guard rule always stays."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if stop and self.backend is not None:  # both slots: also those an earlier agent left and this one never used
            for slot in self.slots:
                if slot.index in self.live or await asyncio.to_thread(self.backend.alive, slot.ifname):
                    await asyncio.to_thread(self.backend.delete, slot.ifname)
                    log.info("wireguard interface %s stopped", slot.ifname)
            self.live = set()
        # also a fence an earlier agent with a backend made
        if stop and unfence and (removed := await asyncio.to_thread(self._unfence)):
            log.info("wireguard fail-closed route over %s removed", removed)
        self._up = False
