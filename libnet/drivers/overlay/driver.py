"""The ``overlay`` driver: containers on different hosts share one L2/L3 network over VXLAN.

Per network and host -- only on hosts with endpoints on it -- a namespace
``<overlay_prefix><vni>`` holds a bridge ``br0`` with the gateway addresses and
the VXLAN device ``vxlan0`` (created from the host namespace directly inside
it, on the VTEP address, so its UDP socket stays on the underlay; see
``plumbing.py``).  Learning
is off, ARP/ND proxy on: the device is told every remote endpoint.  The VNI
is allocated from the cluster store (256 .. 2^24-1).  MTU: the underlay
device's minus 50 (IPv4 VTEP) or 70 (IPv6 VTEP), unless an ``mtu`` option
says otherwise -- at most that (refused above it where the network is
created, lowered to it on hosts with a smaller underlay).

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

Encrypted networks (``encrypted`` option, Docker's ``-o encrypted``) carry
their VXLAN inside this host's WireGuard tunnel (:mod:`libnet.encryption`):
the tunnel comes up (guard rule first) before such a network is set up
here; this host's VTEP on it is its tunnel address, the VXLAN device sends
from the unspecified address (the source comes from the route into the
tunnel), and the MTU is the WireGuard interface's minus VXLAN's.  After a
key rotation the host's endpoints' peer records are rewritten with its new
tunnel address.  A join waits for a working tunnel to each other host with
endpoints on the network.  That part of the driver is
:mod:`~libnet.drivers.overlay.encrypted`.

The driver itself is orchestration: VNI allocation is
:mod:`~libnet.drivers.overlay.vni`, the namespace and devices
:mod:`~libnet.drivers.overlay.plumbing`, the store watch and anti-entropy
:mod:`~libnet.drivers.overlay.peerwatch`, gossip
:mod:`~libnet.drivers.overlay.events`, the kernel programming queue
:mod:`~libnet.drivers.overlay.programmer`; the sandbox side of a join is
shared with the bridge driver (:mod:`libnet.drivers.sandbox_config`).  The
kernel comes from a :class:`libnet.kernel.api.Kernel` (the host's by
default; an in-memory one in unit tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable
from typing import Any, Literal

from libnet import ownership
from libnet.cluster.membership import Membership
from libnet.config import (
    DEFAULT_ANTI_ENTROPY,
    DEFAULT_ENCRYPTION_JOIN_TIMEOUT,
    DEFAULT_ENCRYPTION_PORT,
    DEFAULT_ENCRYPTION_RANGE,
    DEFAULT_ENCRYPTION_ROTATION,
    DEFAULT_GRACE,
)
from libnet.driverapi import Capabilities, EndpointInfo, NetworkInfo, ReconcileReport, SandboxInfo
from libnet.drivers import sandbox_config
from libnet.drivers.bridge_model import host_ifname, host_ifname_of
from libnet.drivers.overlay.encrypted import EncryptedOverlays
from libnet.drivers.overlay.events import PeerEvents
from libnet.drivers.overlay.peerdb import Peer, PeerTable
from libnet.drivers.overlay.peerwatch import PeerWatch, decode, encode, peers_prefix
from libnet.drivers.overlay.plumbing import Plumbing, VxlanDevices
from libnet.drivers.overlay.programmer import Programmer
from libnet.drivers.overlay.vni import VNI_MAX, VNI_MIN, P, VniAllocator
from libnet.encryption.backend import Backend
from libnet.encryption.records import tunnel_range
from libnet.encryption.tunnel import Tunnel
from libnet.errors import BadRequest, Conflict, InvalidOption, KeyModified, KeyNotFound, LibnetError, Unavailable
from libnet.kernel.api import Kernel
from libnet.kernel.neighbours import Neighbour
from libnet.kernel.netlink import VXLAN_PORT
from libnet.model import address_of
from libnet.ownership import NamespaceLedger
from libnet.store.base import Store
from libnet.validation import check_int

log = logging.getLogger("libnet.drivers.overlay")
__all__ = ["DEFAULT_ANTI_ENTROPY", "VNI_MAX", "VNI_MIN", "OverlayDriver", "P"]


def _host_kernel() -> Kernel:
    from libnet.kernel.host import HostKernel

    return HostKernel()


def _flag(value: Any, key: str) -> bool:
    """An on/off option: Docker's ``-o encrypted`` comes as ``""`` (on)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("", "1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise InvalidOption(f"option {key} takes true or false, not {value!r}", option=key)


def _device_local(nw: NetworkInfo, vtep: str) -> str | None:
    """The VXLAN device's local address: on encrypted networks the unspecified one
    (the source comes from the route into the WireGuard tunnel, which a key
    rotation replaces in one step), else None (the VTEP)."""
    if not nw.options.get("encrypted"):
        return None
    return "::" if ipaddress.ip_address(vtep).version == 6 else "0.0.0.0"


class OverlayDriver(EncryptedOverlays):
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
        kernel: Kernel | None = None,
        encryption_range: str = DEFAULT_ENCRYPTION_RANGE,
        encryption_port: int = DEFAULT_ENCRYPTION_PORT,
        encryption_rotation: float = DEFAULT_ENCRYPTION_ROTATION,
        encryption_join_timeout: float = DEFAULT_ENCRYPTION_JOIN_TIMEOUT,
        wireguard: Backend | Literal["auto"] | None = "auto",
    ) -> None:
        self.host_ns, self.default_mtu = host_ns, default_mtu
        self.instance, self.state_dir = instance, state_dir
        self.kernel = kernel if kernel is not None else _host_kernel()
        self._ledger: NamespaceLedger | None = None
        self._nets: dict[str, NetworkInfo] = {}  # networks set up on this host
        self.plumbing = Plumbing(host_ns, default_mtu, overlay_prefix, lambda: self.ledger, self.kernel)
        self.store, self.node, self.vtep, self.prefix = cluster_store, node, vtep, overlay_prefix
        self.vnis = VniAllocator(self.plumbing.local_vnis, self.plumbing.ns_name)
        self.table = PeerTable(node)
        self.devices = VxlanDevices(self.plumbing, self.vnis.cached, self._ports)
        self.programmer = Programmer(self.devices, self.table)
        self.watch = PeerWatch(self.table, self._peers_changed, P)
        self._local: dict[str, set[str]] = {}  # network id -> endpoint ids joined on this host
        self._telling: set[asyncio.Future[None]] = set()  # announcements of local joins under way
        self._locks: dict[str, asyncio.Lock] = {}
        self.events: PeerEvents | None = None
        self.anti_entropy_interval = anti_entropy_interval
        #: called with a network id whenever its remote endpoints changed (the embedded DNS listens)
        self.peer_listeners: list[Callable[[str], None]] = []
        self.encryption_range, self.encryption_port = encryption_range, encryption_port
        self.encryption_rotation, self.encryption_join_timeout = encryption_rotation, encryption_join_timeout
        self._wireguard = wireguard
        self._tunnel: Tunnel | None = None
        self._rotating: asyncio.Task[None] | None = None
        self._membership: Membership | None = None

    @property
    def ledger(self) -> NamespaceLedger:
        """The instance's namespace ledger (an instance id missing from the
        configuration is read, or made, in the state dir on first use)."""
        if self._ledger is None:
            if self.state_dir is None:
                raise Unavailable("the overlay driver needs a state dir (it keeps its namespace ledger there)")
            instance = self.instance or ownership.load_instance_id(self.state_dir)
            if instance is None:  # not made with create=True; kept for the type checker
                raise Unavailable("no libnet instance id in the state dir", state_dir=self.state_dir)
            self.instance = instance
            self._ledger = NamespaceLedger(self.state_dir, instance)
        return self._ledger

    # --- membership and DNS hooks -------------------------------------------------

    def attach_membership(self, membership: Membership, grace: float = DEFAULT_GRACE) -> None:
        """Use cluster membership: gossip peer events (the fast path) and drop the
        peers of hosts that failed or left, after ``grace`` seconds."""
        self.events = PeerEvents(membership, self.table, self._peers_changed, self._resync_all, grace)
        self.events.start()
        self._membership = membership

    def _ports(self, network_id: str) -> list[str]:
        """The host side of the veths of this host's endpoints on ``network_id`` (in its namespace),
        where new neighbours are announced; called on the programmer's worker thread (a snapshot)."""
        return [host_ifname_of(eid) for eid in tuple(self._local.get(network_id, ()))]

    def host_gone(self, node: str) -> bool:
        """See :class:`libnet.driverapi.ClusterAware` (host names compare without case)."""
        return node.lower() in {n.lower() for n in self.table.blocked}

    def remote_endpoints(self, network_id: str) -> list[Peer]:
        """The other hosts' endpoints on a network this host has endpoints on."""
        return self.table.peers(network_id)

    def _peers_changed(self, network_id: str) -> None:
        self.programmer.mark(network_id)
        for listener in self.peer_listeners:
            listener(network_id)

    def _peer(self, ep: EndpointInfo, vtep: str) -> Peer:
        if not ep.dns:  # not published (a proxy's back leg): the other hosts learn no name for it
            return Peer(ep.id, ep.network_id, ep.mac, vtep, self.node, ep.ipv4, ep.ipv6)
        return Peer(ep.id, ep.network_id, ep.mac, vtep, self.node, ep.ipv4, ep.ipv6, ep.name, ep.aliases, ep.services)

    async def _announce(self, kind: str, peer: Peer) -> None:
        if self.events is not None:
            await self.events.announce(kind, peer)

    # --- anti-entropy ---------------------------------------------------------------

    def _resync_all(self) -> None:
        """Every programmed network's peers read again from the store (restarted watches)."""
        if self.store is not None:
            self.watch.resync_all(self.store)

    async def repair(self) -> list[str]:
        """Check every set-up network's namespace and devices (rebuilding what
        differs from the desired state), re-read its peers, program them, then
        repair neighbour/FDB drift; returns what was repaired."""
        repaired = []
        if self._tunnel is not None:  # encrypted overlays: the WireGuard side of the same anti-entropy
            try:
                repaired += await self._tunnel.repair()
            except LibnetError as exc:
                log.warning("wireguard anti-entropy: %s", exc)
        for nid in self.watch.networks():
            try:
                repaired += await self._verify(nid)
            except LibnetError as exc:  # the kernel said no, or the namespace is not ours: next round
                log.warning("overlay anti-entropy of %s: %s", nid[:12], exc)
        reading = self.watch.resync_all(self.store) if self.store is not None else []
        if reading:
            await asyncio.wait(reading, timeout=10)
        await self.programmer.settled()
        for nid in self.watch.networks():
            try:
                if count := await self.programmer.reconcile(nid):
                    repaired.append(f"{count} neighbour/FDB entries of overlay network {nid[:12]}")
            except LibnetError as exc:  # the network went away meanwhile, or the kernel said no: next round
                log.warning("overlay anti-entropy of %s: %s", nid[:12], exc)
        return repaired

    def start_anti_entropy(self) -> None:
        """Run :meth:`repair` every ``anti_entropy_interval`` seconds (started with
        the first network set up here; idempotent)."""
        self.watch.start_anti_entropy(self.anti_entropy_interval, self.repair)

    # --- the driver -------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        return Capabilities(scope="global", own_addressing=True, external_via_gateway_bridge=True)

    def parse_network_options(self, options: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"vni": None, "mtu": None, "encrypted": False}
        for key, value in options.items():
            if key not in out:
                raise InvalidOption(f"unknown overlay option {key!r}; known: vni, mtu, encrypted", option=key)
            if key == "encrypted":
                out[key] = _flag(value, key)
                continue
            low, high = (VNI_MIN, VNI_MAX) if key == "vni" else (1280, 65535)
            out[key] = check_int(value, key, low, high)
        return out

    def ns_name(self, vni: int) -> str:
        return self.plumbing.ns_name(vni)

    def _need(self) -> tuple[Store, str]:
        if self.store is None or not self.vtep:
            raise Unavailable("overlay networks need a cluster store and this host's VTEP address (--advertise)")
        return self.store, self.vtep

    # --- networks -------------------------------------------------------------

    async def check_network(self, nw: NetworkInfo) -> None:
        """Refused before anything is written: no cluster store or no VTEP address
        (--advertise); an encrypted network on a host without a WireGuard backend."""
        _, vtep = self._need()
        if nw.options.get("encrypted"):
            tunnel = self.tunnel()
            if tunnel.backend is None:
                raise Unavailable(f"encrypted overlays are unavailable on this host: {tunnel.reason}", network=nw.name)
        if (mtu := nw.options.get("mtu")) and mtu > (limit := await asyncio.to_thread(self.mtu_limit, nw, vtep)):
            kind, overheads = (
                ("encrypted", "VXLAN's and WireGuard's") if nw.options.get("encrypted") else ("plain", "VXLAN's")
            )
            raise InvalidOption(
                f"mtu {mtu} is more than this host's path carries on a {kind} overlay: at most {limit} "
                f"(the underlay's MTU minus {overheads} overhead)",
                option="mtu",
                network=nw.name,
            )

    async def create_network(self, nw: NetworkInfo) -> None:
        """Allocate the network's VNI in the cluster store (:mod:`~libnet.drivers.overlay.vni`)."""
        store, _ = self._need()
        await self.vnis.allocate(store, nw)

    async def delete_network(self, nw: NetworkInfo) -> None:
        await self._teardown_local(nw.id)
        if self.store is not None:
            await self.vnis.release(self.store, nw.id)

    async def _ensure_local(self, nw: NetworkInfo, repairs: list[str] | None = None) -> str:
        """The network's namespace on this host, built (or checked and
        adopted) on first use; what had to be rebuilt goes to ``repairs``."""
        store, _ = self._need()
        vni = await self.vnis.get(store, nw.id)
        ns = self.ns_name(vni)
        vtep = await self._vtep_of(nw)  # on encrypted networks: never before the tunnel (and its guard) is up
        if nw.options.get("encrypted"):  # and its VXLAN comes in only out of WireGuard: before the device exists
            await asyncio.to_thread(self.tunnel().guard_vni, vni, VXLAN_PORT)
            # and goes out only to tunnel addresses (covered by the fence route), whatever a peer announces
            self.table.confined[nw.id] = tunnel_range(self.encryption_range)
        async with self._locks.setdefault(nw.id, asyncio.Lock()):
            if not self.watch.watching(nw.id):
                done = await asyncio.to_thread(self.plumbing.build, nw, vni, ns, vtep, _device_local(nw, vtep))
                if repairs is not None:
                    repairs += done
                self._nets[nw.id] = nw
                self.programmer.reset(nw.id)
                self.programmer.active.add(nw.id)
                self.programmer.start()
                self.watch.start(store, nw.id)
                self.start_anti_entropy()
        return ns

    async def _verify(self, network_id: str) -> list[str]:
        """Check (and rebuild) a set-up network's namespace and devices; returns what was repaired."""
        nw, vni = self._nets.get(network_id), self.vnis.cached(network_id)
        if nw is None or vni is None or not self.vtep:
            return []
        vtep = await self._vtep_of(nw)
        if nw.options.get("encrypted"):
            await asyncio.to_thread(self.tunnel().guard_vni, vni, VXLAN_PORT)
        async with self._locks.setdefault(network_id, asyncio.Lock()):
            if not self.watch.watching(network_id):
                return []
            done = await asyncio.to_thread(
                self.plumbing.build, nw, vni, self.ns_name(vni), vtep, _device_local(nw, vtep)
            )
        if done:
            self.programmer.reset(network_id)  # a rebuilt device holds no entries
        return done

    async def _teardown_local(self, network_id: str) -> None:
        """This host stops serving the network; its namespace goes only if the
        ledger records it as this instance's for this network (after a store
        loss the VNI's namespace may be another network's)."""
        async with self._locks.setdefault(network_id, asyncio.Lock()):  # not while it is being checked
            await self.watch.stop(network_id)
            self.programmer.forget(network_id)
            self.table.drop_network(network_id)
            for listener in self.peer_listeners:
                listener(network_id)
            self._local.pop(network_id, None)
            self._nets.pop(network_id, None)
            vni = self.vnis.cached(network_id)
            if vni is not None:
                await asyncio.to_thread(self.plumbing.remove_namespace, self.ns_name(vni), network_id)
                if self._tunnel is not None:  # its device is gone: so is its entry guard
                    await asyncio.to_thread(self._tunnel.unguard_vni, vni)

    # --- endpoints ------------------------------------------------------------

    async def create_endpoint(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        if ep.ports:
            raise BadRequest("overlay endpoints cannot publish ports yet", endpoint_id=ep.id)

    async def _unplug(self, network_id: str, ep: EndpointInfo) -> None:
        vni = self.vnis.cached(network_id)
        if vni is None:  # not seen by this process (a restart's reconcile rolling back a connect's
            # join that never reached the store): the network's namespace on this host, if any
            here = await asyncio.to_thread(self.plumbing.local_vnis)
            vni = next((v for v, owner in here.items() if owner == network_id), None)
        if vni is not None:
            await asyncio.to_thread(self.plumbing.unplug_endpoint, self.ns_name(vni), host_ifname(ep), ep.id)

    async def delete_endpoint(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        # normally gone with the leave; a crash between join's announcement and
        # the endpoint's record leaves it behind, and the endpoint is then deleted
        if self.store is not None:
            await self.store.delete(peers_prefix(P, nw.id) + ep.id)
        await self._unplug(nw.id, ep)  # and a veth a crash left plugged in

    async def join(self, nw: NetworkInfo, ep: EndpointInfo, sb: SandboxInfo) -> None:
        store, _ = self._need()
        ns = await self._ensure_local(nw)
        vtep = await self._vtep_of(nw)
        if nw.options.get("encrypted"):
            await self._await_tunnels(store, nw)
        host_if = host_ifname(ep)
        alias = self.plumbing.mark("ep", ep.id, ep.name)

        def plug() -> None:
            with self.kernel.netlink(ns) as nl:
                nl.plug_veth(host_if, sb.ifname, sb.netns, "br0", mtu=nl.link("br0").mtu, peer_mac=ep.mac, alias=alias)

        await asyncio.to_thread(plug)
        try:
            # no default route: outbound connectivity comes through the gateway bridge network
            no_routes = SandboxInfo(sb.id, sb.netns, sb.ifname, gateway=False)
            await sandbox_config.configure_sandbox(self.kernel, nw, ep, no_routes)
            peer = self._peer(ep, vtep)
            await store.put(peers_prefix(P, nw.id) + ep.id, encode(peer))
        except BaseException:
            await asyncio.to_thread(self.plumbing.unplug_endpoint, ns, host_if, ep.id)
            raise
        self._local.setdefault(nw.id, set()).add(ep.id)
        await self._announce("add", peer)
        await self._tell_local_containers(nw.id, ep)

    async def _tell_local_containers(self, network_id: str, ep: EndpointInfo) -> None:
        """The new local endpoint's addresses, announced into this host's other containers' ports
        of the network (gratuitous ARP, unsolicited NA: :mod:`libnet.kernel.announce`), as the
        programmer does for new remote peers.  One of them may hold an address of it with an old
        MAC: the address's former endpoint's (it left here or on another host; an IPv6 address given
        out again comes with a new MAC), which neither the bridge nor ``vxlan0`` knows any more --
        and the container would use it until its neighbour entry fails, tens of seconds later.
        Never into the endpoint's own port, nor ``br0``; best effort, and the join does not wait
        for it (a hand-over to the network's thread: ~10 ms p50 of a join's latency on a loaded
        2-core VM with 20-40 local containers)."""
        own = host_ifname(ep)
        others = [port for port in self._ports(network_id) if port != own]
        news = {Neighbour(address_of(cidr), ep.mac) for cidr in (ep.ipv4, ep.ipv6) if cidr}
        if not others or not news or not ep.mac:
            return
        # handed to a worker thread now (to_thread would start it at the event loop's next turn)
        task = asyncio.get_running_loop().run_in_executor(None, self.devices.announce_into, network_id, others, news)
        self._telling.add(task)
        task.add_done_callback(self._told)

    def _told(self, task: asyncio.Future[None]) -> None:
        self._telling.discard(task)
        if not task.cancelled() and task.exception() is not None:  # only saves a container a stale entry
            log.debug("announcing a local endpoint to its neighbours: %s", task.exception())

    async def told(self) -> None:
        """Wait until the announcements of local joins made so far are sent (tests)."""
        while self._telling:
            await asyncio.wait(set(self._telling))

    async def leave(self, nw: NetworkInfo, ep: EndpointInfo, sb: SandboxInfo) -> None:
        if self.store is not None:
            await self.store.delete(peers_prefix(P, nw.id) + ep.id)
        if self.vtep:
            await self._announce("del", self._peer(ep, self.vtep))
        await self._unplug(nw.id, ep)
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
        store = self.store
        nets = {nw.id: nw for nw in networks}
        for nw in networks:
            with contextlib.suppress(Unavailable):
                await self.vnis.get(store, nw.id)
        wanted: set[str] = set()  # only networks with local endpoints keep their namespace
        for ep, sb in endpoints:
            if sb is None:
                continue
            nw = nets[ep.network_id]
            try:
                wanted.add(await self._ensure_local(nw, report.repaired))
            except (Conflict, Unavailable, BadRequest) as exc:  # BadRequest: e.g. a refused encryption range
                report.missing.append(f"endpoint {ep.name} of overlay network {nw.name}: {exc}")
                continue
            self._local.setdefault(nw.id, set()).add(ep.id)
            await store.put(peers_prefix(P, nw.id) + ep.id, encode(self._peer(ep, await self._vtep_of(nw))))
        joined = {ep.id for ep, sb in endpoints if sb is not None}
        report.removed += await self._sweep_peer_records(store, networks, joined)
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
            if self.watch.watching(owner):  # set up in this process: stop programming it too
                await self._teardown_local(owner)
            elif not await asyncio.to_thread(self.plumbing.remove_namespace, name, owner):
                continue
            report.removed.append(f"overlay namespace {name} of no local endpoint (network {owner[:12]})")
        # and the entry guards of encrypted VNIs no longer here (their namespace went without a teardown)
        plain = {self.vnis.cached(nid) for nid, nw in self._nets.items() if not nw.options.get("encrypted")}

        def device_left(vni: int) -> bool:  # a namespace of an encrypted network kept (containers attached)
            return vni not in plain and self.kernel.netns_exists(self.ns_name(vni))

        for vni in await asyncio.to_thread(self.tunnel().sweep_vni_guards, device_left):
            report.removed.append(f"entry guard of encrypted VNI {vni}, not served here")
        report.repaired.extend(await self.repair())
        return report

    async def _sweep_peer_records(self, store: Store, networks: list[NetworkInfo], joined: set[str]) -> list[str]:
        """Delete this host's peer records of endpoints not joined here (a crash
        between announcing a join and storing it); other hosts' are theirs."""
        gone = []
        for nw in networks:
            for pair in await store.list(peers_prefix(P, nw.id)):
                try:
                    peer = decode(pair.value)
                except LibnetError:
                    continue
                if peer.node != self.node or peer.endpoint_id in joined:
                    continue
                with contextlib.suppress(KeyNotFound, KeyModified):
                    await store.atomic_delete(pair.key, pair)
                    await self._announce("del", peer)
                    gone.append(f"overlay peer record of endpoint {peer.endpoint_id[:12]} not joined here")
        return gone

    async def close(self) -> None:
        if self._rotating is not None:
            self._rotating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rotating
        if self._tunnel is not None:
            await self._tunnel.close()
        await self.watch.close()
        if self.events is not None:
            await self.events.close()
        await self.told()  # before the handles they use are closed
        await self.programmer.close()
