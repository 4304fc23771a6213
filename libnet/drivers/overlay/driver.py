"""The ``overlay`` driver: containers on different hosts share one L2/L3 network over VXLAN.

Per network and host -- only on hosts with endpoints on it -- a namespace
``<overlay_prefix><vni>`` holds a bridge ``br0`` with the gateway addresses and
the VXLAN device ``vxlan0`` (created from the host namespace directly inside
it, on the VTEP address, so its UDP socket stays on the underlay; see
``plumbing.py``).  Learning
is off, ARP/ND proxy on: the device is told every remote endpoint.  The VNI
is allocated from the cluster store (256 .. 2^24-1).  MTU: the underlay
device's minus 50 (IPv4 VTEP) or 70 (IPv6 VTEP), unless an ``mtu`` option
says otherwise.

Peer distribution: at join an endpoint's record (addresses, MAC, VTEP, host)
is written to the cluster store under ``libnet/v1/overlay/peers/<network>/``;
each host with endpoints on the network watches that prefix (after a full
read, which is also the anti-entropy path: on start, after a lost watch or
lost membership events, when a failed host returns, and every
``anti_entropy_interval`` seconds, default 30) into its :class:`PeerTable`, and the per-host
:class:`Programmer` turns the table into neighbour and FDB entries.

With cluster membership attached (:meth:`OverlayDriver.attach_membership`,
done by the agent in cluster mode) each join and leave is also gossiped as a
Serf user event -- usually the faster path -- and a host that failed or left
has its peers removed after a grace period (see ``events.py``).

Ownership (DESIGN.md, "Ownership"): the namespace is recorded in the
instance's namespace ledger (kind ``overlay``, owner the network id) before it
is created, and ``br0``/``vxlan0`` carry the network's ``net`` mark (endpoint
veths their ``ep`` mark).  Only namespaces the ledger records as this
instance's are ever deleted; one named like ours but unrecorded is reported
as foreign by reconcile and left alone.  A namespace that exists for the VNI
but is recorded for *another* network (a store that lost its VNI keys gave
its VNI out again) is a ``Conflict``, never joined; VNI allocation skips VNIs
this host's ledger shows in use by another network.  An existing device
whose kind, mark or settings (VNI, local VTEP address, UDP port, MTU,
learning off, proxy on) differ from the desired ones is deleted and built
again, then its neighbour/FDB entries are programmed anew -- never reused;
the bridge's MTU, mark and gateway addresses are corrected in place.  This
check runs whenever the network is set up on this host (first join, or
reconcile after a restart) and in every anti-entropy round.

Outbound connectivity for non-internal overlays comes from the controller:
such sandboxes are also connected to the host's gateway bridge network
(``libnet-gwbridge``, a bridge network with masquerade), which carries their
default route, as Docker's docker_gwbridge does.  Overlapping subnets on
different overlay networks work: each has its own namespace and its IPAM
pools are "isolated" (they may overlap other overlay networks' pools).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from libnet import model, ownership
from libnet.cluster.membership import Membership
from libnet.driverapi import Capabilities, EndpointInfo, NetworkInfo, ReconcileReport, SandboxInfo
from libnet.drivers.bridge import _NETLINK, _configure_sandbox, host_ifname
from libnet.drivers.overlay.events import DEFAULT_GRACE, PeerEvents
from libnet.drivers.overlay.peerdb import Entries, Peer, PeerTable
from libnet.drivers.overlay.plumbing import Plumbing
from libnet.drivers.overlay.programmer import Programmer
from libnet.errors import (
    BadRequest,
    Conflict,
    InvalidOption,
    KeyExists,
    KeyModified,
    KeyNotFound,
    LibnetError,
    Unavailable,
)
from libnet.kernel import netns, rtnl
from libnet.kernel.netlink import Netlink
from libnet.ownership import NamespaceLedger
from libnet.store.base import Store
from libnet.validation import check_int

log = logging.getLogger("libnet.drivers.overlay")
VNI_MIN, VNI_MAX = 256, (1 << 24) - 1
P = "libnet/v1/overlay"
PEER_KIND = "overlay_peer"
DEFAULT_ANTI_ENTROPY = 30.0  # seconds between full re-reads of the peers from the store


class _Devices:
    """The programmer's kernel side: ``vxlan0`` in each network's namespace."""

    def __init__(self, driver: OverlayDriver) -> None:
        self.driver = driver

    def dump(self, network_id: str) -> Entries:
        with Netlink(self.driver.ns_name(self.driver._vnis[network_id])) as nl:
            return Entries(set(nl.neighbours("vxlan0")), set(nl.fdb("vxlan0")))

    def apply(self, network_id: str, remove: Entries, add: Entries) -> None:
        with Netlink(self.driver.ns_name(self.driver._vnis[network_id])) as nl:
            nl.delete_neighbours("vxlan0", remove.neighbours)
            nl.delete_fdb("vxlan0", remove.fdb)
            nl.replace_neighbours("vxlan0", add.neighbours)
            nl.replace_fdb("vxlan0", add.fdb)


class OverlayDriver:
    """See the module docstring."""

    name = "overlay"

    def __init__(
        self,
        host_ns: str | None = None,
        default_mtu: int | None = None,
        cluster_store: Store | None = None,
        node: str = "",
        vtep: str | None = None,
        overlay_prefix: str = "lno-",
        anti_entropy_interval: float = DEFAULT_ANTI_ENTROPY,
        instance: str | None = None,
        state_dir: str | None = None,
        **_: Any,
    ) -> None:
        self.host_ns, self.default_mtu = host_ns, default_mtu
        self.instance, self.state_dir = instance, state_dir
        self._ledger: NamespaceLedger | None = None
        self._nets: dict[str, NetworkInfo] = {}  # networks set up on this host
        self.plumbing = Plumbing(host_ns, default_mtu, overlay_prefix, lambda: self.ledger)
        self.store, self.node, self.vtep, self.prefix = cluster_store, node, vtep, overlay_prefix
        self.table = PeerTable(node)
        self.programmer = Programmer(_Devices(self), self.table)
        self._vnis: dict[str, int] = {}
        self._local: dict[str, set[str]] = {}  # network id -> endpoint ids joined on this host
        self._watches: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.events: PeerEvents | None = None
        self.anti_entropy_interval = anti_entropy_interval
        #: called with a network id whenever its remote endpoints changed (the embedded DNS listens)
        self.peer_listeners: list[Callable[[str], None]] = []
        self._anti_entropy_task: asyncio.Task[None] | None = None

    @property
    def ledger(self) -> NamespaceLedger:
        """The instance's namespace ledger (an instance id missing from the
        configuration is read, or made, in the state dir on first use)."""
        if self._ledger is None:
            if self.state_dir is None:
                raise Unavailable("the overlay driver needs a state dir (it keeps its namespace ledger there)")
            if self.instance is None:
                self.instance = ownership.load_instance_id(self.state_dir)
            assert self.instance is not None
            self._ledger = NamespaceLedger(self.state_dir, self.instance)
        return self._ledger

    def attach_membership(self, membership: Membership, grace: float = DEFAULT_GRACE) -> None:
        """Use cluster membership: gossip peer events (the fast path) and drop the
        peers of hosts that failed or left, after ``grace`` seconds."""
        self.events = PeerEvents(membership, self.table, self._peers_changed, self._resync_all, grace)
        self.events.start()

    def _peer(self, ep: EndpointInfo, vtep: str) -> Peer:
        return Peer(ep.id, ep.network_id, ep.mac, vtep, self.node, ep.ipv4, ep.ipv6, ep.name, ep.aliases, ep.services)

    def _peers_changed(self, network_id: str) -> None:
        self.programmer.mark(network_id)
        for listener in self.peer_listeners:
            listener(network_id)

    def remote_endpoints(self, network_id: str) -> list[Peer]:
        """The other hosts' endpoints on a network this host has endpoints on."""
        return self.table.peers(network_id)

    def _start_watch(self, network_id: str) -> asyncio.Future[None]:
        """(Re)start the peer watch of a network; the future is done after its full read."""
        old = self._watches.get(network_id)
        if old is not None:
            old.cancel()
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._watches[network_id] = asyncio.create_task(self._watch(network_id, ready))
        return ready

    def _resync_all(self) -> list[asyncio.Future[None]]:
        """Anti-entropy: every programmed network's peers read again from the store.

        Done by restarting each network's watch, which reads the whole prefix
        and then watches from the revision before that read -- so no change
        made meanwhile is lost (a plain re-list racing the watch could put an
        older listing over a newer event)."""
        return [self._start_watch(nid) for nid in list(self._watches)]

    async def _anti_entropy(self) -> None:
        """Every ``anti_entropy_interval`` s: peers re-read from the store, then the
        devices compared with the peer table (repairs missed events and drift)."""
        while True:
            await asyncio.sleep(self.anti_entropy_interval)
            await self._repair()

    async def _repair(self) -> list[str]:
        """Check every set-up network's namespace and devices (rebuilding what
        differs from the desired state), re-read its peers, program them, then
        repair neighbour/FDB drift; returns what was repaired."""
        repaired = []
        for nid in list(self._watches):
            try:
                repaired += await self._verify(nid)
            except LibnetError as exc:  # the kernel said no, or the namespace is not ours: next round
                log.warning("overlay anti-entropy of %s: %s", nid[:12], exc)
        reading = self._resync_all()
        if reading:
            await asyncio.wait(reading, timeout=10)
        await self.programmer.settled()
        for nid in list(self._watches):
            try:
                if n := await self.programmer.reconcile(nid):
                    repaired.append(f"{n} neighbour/FDB entries of overlay network {nid[:12]}")
            except LibnetError as exc:  # the network went away meanwhile, or the kernel said no: next round
                log.warning("overlay anti-entropy of %s: %s", nid[:12], exc)
        return repaired

    def capabilities(self) -> Capabilities:
        return Capabilities(scope="global", own_addressing=True, external_via_gateway_bridge=True)

    def parse_network_options(self, options: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"vni": None, "mtu": None}
        for key, value in options.items():
            if key not in out:
                raise InvalidOption(f"unknown overlay option {key!r}; known: vni, mtu", option=key)
            lo, hi = (VNI_MIN, VNI_MAX) if key == "vni" else (1280, 65535)
            out[key] = check_int(value, key, lo, hi)
        return out

    def ns_name(self, vni: int) -> str:
        return f"{self.prefix}{vni}"

    def _need(self) -> tuple[Store, str]:
        if self.store is None or not self.vtep:
            raise Unavailable("overlay networks need a cluster store and this host's VTEP address (--advertise)")
        return self.store, self.vtep

    # --- networks -------------------------------------------------------------

    async def check_network(self, nw: NetworkInfo) -> None:
        """Refused before anything is written: no cluster store or no VTEP address (--advertise)."""
        self._need()

    async def create_network(self, nw: NetworkInfo) -> None:
        """Allocate the network's VNI in the cluster store.

        Besides the store's VNI keys, the VNIs this host's ledger shows in
        use by another network are never given out (a store that lost its
        keys must not hand a live network's VNI to a new one); asking for
        such a VNI explicitly is a ``Conflict``."""
        store, _ = self._need()
        wanted = nw.options.get("vni")
        here = await asyncio.to_thread(self.plumbing.local_vnis)
        other = here.get(wanted) if wanted else None
        if other is not None and other != nw.id:
            raise Conflict(
                f"VNI {wanted} is in use on this host by overlay network {other[:12]} "
                f"(namespace {self.ns_name(wanted)})",
                vni=wanted,
                netns=self.ns_name(wanted),
                other_network_id=other,
            )
        taken = {int(p.key.rsplit("/", 1)[1]) for p in await store.list(f"{P}/vni/")}
        taken |= {v for v, owner in here.items() if owner != nw.id}
        candidates = [wanted] if wanted else (v for v in range(VNI_MIN, VNI_MAX + 1) if v not in taken)
        for vni in candidates:
            try:
                await store.atomic_put(f"{P}/vni/{vni}", nw.id.encode(), None)
            except KeyExists:
                if wanted:
                    raise Conflict(f"VNI {vni} is in use by another overlay network", vni=vni) from None
                continue
            await store.put(f"{P}/networks/{nw.id}", str(vni).encode())
            self._vnis[nw.id] = vni
            return
        raise Unavailable("no free VNI left")

    async def delete_network(self, nw: NetworkInfo) -> None:
        await self._teardown_local(nw.id)
        if self.store is None:
            return
        with contextlib.suppress(KeyNotFound, KeyModified):
            vni = int((await self.store.get(f"{P}/networks/{nw.id}")).value)
            pair = await self.store.get(f"{P}/vni/{vni}")
            if pair.value == nw.id.encode():  # after a store loss the VNI may be another network's now
                await self.store.atomic_delete(pair.key, pair)
        await self.store.delete(f"{P}/networks/{nw.id}")
        self._vnis.pop(nw.id, None)

    async def _vni(self, network_id: str) -> int:
        """The network's VNI: from the cluster store, else (the store lost it)
        from this host's ledger, which then restores the store's keys."""
        if network_id not in self._vnis:
            store, _ = self._need()
            try:
                self._vnis[network_id] = int((await store.get(f"{P}/networks/{network_id}")).value)
            except KeyNotFound:
                here = await asyncio.to_thread(self.plumbing.local_vnis)
                vni = next((v for v, owner in here.items() if owner == network_id), None)
                if vni is None:
                    raise Unavailable(
                        "the overlay network has no VNI in the cluster store", network_id=network_id
                    ) from None
                await self._restore_vni(store, network_id, vni)
                self._vnis[network_id] = vni
        return self._vnis[network_id]

    @staticmethod
    async def _restore_vni(store: Store, network_id: str, vni: int) -> None:
        log.warning(
            "overlay network %s has no VNI in the cluster store; restoring VNI %d from this host's namespace ledger",
            network_id[:12],
            vni,
        )
        try:
            await store.atomic_put(f"{P}/vni/{vni}", network_id.encode(), None)
        except KeyExists:
            log.error("VNI %d of overlay network %s is allocated to another network too", vni, network_id[:12])
        with contextlib.suppress(KeyExists):
            await store.atomic_put(f"{P}/networks/{network_id}", str(vni).encode(), None)

    async def _ensure_local(self, nw: NetworkInfo, repairs: list[str] | None = None) -> str:
        """The network's namespace on this host, built (or checked and
        adopted) on first use; what had to be rebuilt goes to ``repairs``."""
        vni = await self._vni(nw.id)
        ns = self.ns_name(vni)
        async with self._locks.setdefault(nw.id, asyncio.Lock()):
            if nw.id not in self._watches:
                _, vtep = self._need()
                done = await asyncio.to_thread(self.plumbing.build, nw, vni, ns, vtep)
                if repairs is not None:
                    repairs += done
                self._nets[nw.id] = nw
                self.programmer.reset(nw.id)
                self.programmer.active.add(nw.id)
                self.programmer.start()
                self._start_watch(nw.id)
                if self._anti_entropy_task is None:
                    self._anti_entropy_task = asyncio.create_task(self._anti_entropy())
        return ns

    async def _verify(self, network_id: str) -> list[str]:
        """Check (and rebuild) a set-up network's namespace and devices; returns what was repaired."""
        nw, vni = self._nets.get(network_id), self._vnis.get(network_id)
        if nw is None or vni is None or not self.vtep:
            return []
        async with self._locks.setdefault(network_id, asyncio.Lock()):
            if network_id not in self._watches:
                return []
            done = await asyncio.to_thread(self.plumbing.build, nw, vni, self.ns_name(vni), self.vtep)
        if done:
            self.programmer.reset(network_id)  # a rebuilt device holds no entries
        return done

    async def _teardown_local(self, network_id: str) -> None:
        """This host stops serving the network; its namespace goes only if the
        ledger records it as this instance's for this network (after a store
        loss the VNI's namespace may be another network's)."""
        async with self._locks.setdefault(network_id, asyncio.Lock()):  # not while it is being checked
            task = self._watches.pop(network_id, None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self.programmer.forget(network_id)
            self.table.drop_network(network_id)
            for listener in self.peer_listeners:
                listener(network_id)
            self._local.pop(network_id, None)
            self._nets.pop(network_id, None)
            vni = self._vnis.get(network_id)
            if vni is not None:
                await asyncio.to_thread(self.plumbing.remove_namespace, self.ns_name(vni), network_id)

    async def _watch(self, network_id: str, ready: asyncio.Future[None] | None = None) -> None:
        """Peers of one network from the store: full read, then every change."""
        store, _ = self._need()
        prefix = f"{P}/peers/{network_id}/"
        while True:
            try:
                rev = await store.revision()
                peers = [Peer.from_data(model.decode(p.value, PEER_KIND)) for p in await store.list(prefix)]
                self.table.replace_network(network_id, peers)
                self._peers_changed(network_id)
                if ready is not None and not ready.done():
                    ready.set_result(None)
                async for ev in store.watch_prefix(prefix, start_revision=rev):
                    if ev.kind == "put":
                        changed = self.table.set(Peer.from_data(model.decode(ev.value, PEER_KIND)))
                    else:
                        changed = self.table.remove(network_id, ev.key.rsplit("/", 1)[1])
                    if changed:
                        self._peers_changed(network_id)
            except asyncio.CancelledError:
                if ready is not None:
                    ready.cancel()
                raise
            except LibnetError as exc:  # a lost watch: read everything again
                log.warning("overlay peer watch of %s: %s; re-reading", network_id[:12], exc)
                await asyncio.sleep(1)

    # --- endpoints ------------------------------------------------------------

    async def create_endpoint(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        if ep.ports:
            raise BadRequest("overlay endpoints cannot publish ports yet", endpoint_id=ep.id)

    async def delete_endpoint(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        # normally gone with the leave; a crash between join's announcement and
        # the endpoint's record leaves it behind, and the endpoint is then deleted
        if self.store is not None:
            await self.store.delete(f"{P}/peers/{nw.id}/{ep.id}")
        vni = self._vnis.get(nw.id)  # and a veth a crash left plugged in
        if vni is not None:
            await asyncio.to_thread(self._unplug, self.ns_name(vni), host_ifname(ep), ep.id, self.plumbing)

    async def join(self, nw: NetworkInfo, ep: EndpointInfo, sb: SandboxInfo) -> None:
        store, vtep = self._need()
        ns = await self._ensure_local(nw)
        host_if = host_ifname(ep)
        alias = self.plumbing.mark("ep", ep.id, ep.name)

        def plug() -> None:
            with Netlink(ns) as nl:
                nl.plug_veth(host_if, sb.ifname, sb.netns, "br0", mtu=nl.link("br0").mtu, peer_mac=ep.mac, alias=alias)

        await asyncio.to_thread(plug)
        try:
            sock = await asyncio.wrap_future(netns.open_socket_future(sb.netns, *_NETLINK))
            with rtnl.RtnlSocket(sock) as r:
                # no default route: outbound connectivity through a gateway bridge is not built yet
                _configure_sandbox(r, nw, ep, SandboxInfo(sb.id, sb.netns, sb.ifname, gateway=False))
            peer = self._peer(ep, vtep)
            await store.put(f"{P}/peers/{nw.id}/{ep.id}", model.encode(PEER_KIND, peer.to_data()))
        except BaseException:
            await asyncio.to_thread(self._unplug, ns, host_if, ep.id, self.plumbing)
            raise
        self._local.setdefault(nw.id, set()).add(ep.id)
        if self.events is not None:
            await self.events.announce("add", peer)

    @staticmethod
    def _unplug(ns: str, host_if: str, endpoint_id: str, plumbing: Plumbing) -> None:
        """Delete an endpoint's veth in ``ns`` if it is there and marked as this instance's."""
        with contextlib.suppress(LibnetError), Netlink(ns) as nl:
            if nl.has_link(host_if) and plumbing.owned_endpoint(nl.link(host_if).alias, endpoint_id):
                nl.delete_link(host_if)

    async def leave(self, nw: NetworkInfo, ep: EndpointInfo, sb: SandboxInfo) -> None:
        if self.store is not None:
            await self.store.delete(f"{P}/peers/{nw.id}/{ep.id}")
        if self.events is not None and self.vtep:
            await self.events.announce("del", self._peer(ep, self.vtep))
        vni = self._vnis.get(nw.id)
        if vni is not None:
            await asyncio.to_thread(self._unplug, self.ns_name(vni), host_ifname(ep), ep.id, self.plumbing)
        local = self._local.get(nw.id, set())
        local.discard(ep.id)
        if not local:  # the last local endpoint: this host stops programming the network
            await self._teardown_local(nw.id)

    async def set_gateway(self, nw: NetworkInfo, ep: EndpointInfo, sb: SandboxInfo, gateway: bool) -> None:
        return None

    async def program_external_connectivity(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        return None

    async def revoke_external_connectivity(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        return None

    # --- reconcile ------------------------------------------------------------

    async def reconcile(
        self, networks: list[NetworkInfo], endpoints: list[tuple[EndpointInfo, SandboxInfo | None]]
    ) -> ReconcileReport:
        """Adopt (after checking, or rebuilding) what a previous run built,
        re-announce local endpoints, remove this instance's namespaces no local
        endpoint needs, and repair the devices' entries.

        Removal is conservative: only namespaces the ledger records as this
        instance's overlay namespaces, and only while no container is
        attached to their bridge; an unrecorded namespace named like ours
        is reported as foreign and left alone."""
        report = ReconcileReport()
        if self.store is None or not self.vtep:
            return report
        nets = {nw.id: nw for nw in networks}
        for nw in networks:
            with contextlib.suppress(Unavailable):
                await self._vni(nw.id)
        wanted: set[str] = set()  # only networks with local endpoints keep their namespace
        for ep, sb in endpoints:
            if sb is None:
                continue
            nw = nets[ep.network_id]
            try:
                wanted.add(await self._ensure_local(nw, report.repaired))
            except (Conflict, Unavailable) as exc:
                report.missing.append(f"endpoint {ep.name} of overlay network {nw.name}: {exc}")
                continue
            self._local.setdefault(nw.id, set()).add(ep.id)
            peer = self._peer(ep, self.vtep)
            await self.store.put(f"{P}/peers/{nw.id}/{ep.id}", model.encode(PEER_KIND, peer.to_data()))
        joined = {ep.id for ep, sb in endpoints if sb is not None}
        report.removed += await self._sweep_peer_records(networks, joined)
        gone, kept = await asyncio.to_thread(self.plumbing.sweep_veths, joined, {ep.id for ep, _ in endpoints})
        report.removed += gone
        report.missing += [what for what, _ in kept]
        report.kept += [owner for _, owner in kept]
        remove, foreign, kept = await asyncio.to_thread(self.plumbing.sweep, wanted)
        report.foreign += [
            f"namespace {name}: named like an overlay namespace, not this instance's" for name in foreign
        ]
        report.missing += [
            f"overlay namespace {name}: no stored endpoint of this host needs it, but containers are attached; kept"
            for name, _ in kept
        ]
        report.kept += [owner for _, owner in kept]
        for name, owner in remove:
            if owner in self._watches:  # set up in this process: stop programming it too
                await self._teardown_local(owner)
            elif not await asyncio.to_thread(self.plumbing.remove_namespace, name, owner):
                continue
            report.removed.append(f"overlay namespace {name} of no local endpoint (network {owner[:12]})")
        report.repaired.extend(await self._repair())
        return report

    async def _sweep_peer_records(self, networks: list[NetworkInfo], joined: set[str]) -> list[str]:
        """Delete this host's peer records of endpoints not joined here (a crash
        between announcing a join and storing it); other hosts' are theirs."""
        assert self.store is not None
        gone = []
        for nw in networks:
            for pair in await self.store.list(f"{P}/peers/{nw.id}/"):
                try:
                    peer = Peer.from_data(model.decode(pair.value, PEER_KIND))
                except LibnetError:
                    continue
                if peer.node != self.node or peer.endpoint_id in joined:
                    continue
                with contextlib.suppress(KeyNotFound, KeyModified):
                    await self.store.atomic_delete(pair.key, pair)
                    if self.events is not None:
                        await self.events.announce("del", peer)
                    gone.append(f"overlay peer record of endpoint {peer.endpoint_id[:12]} not joined here")
        return gone

    async def close(self) -> None:
        tasks = [*self._watches.values(), *filter(None, [self._anti_entropy_task])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._watches.clear()
        self._anti_entropy_task = None
        if self.events is not None:
            await self.events.close()
        await self.programmer.close()


__all__ = ["OverlayDriver"]
