"""This host's part of an overlay network: its namespace, ``br0`` and ``vxlan0``, owned and checked.

Ownership (DESIGN.md, "Ownership"): a network's namespace
``<prefix><vni>`` is recorded in the instance's namespace ledger (kind
``overlay``, owner the network id) *before* it is created, and only
namespaces recorded so are ever deleted.  Everything inside a recorded
namespace is the network's; ``br0`` and ``vxlan0`` also carry its ``net``
mark.

Building is also checking (:meth:`Plumbing.build`, run whenever a network
is set up on this host and in every anti-entropy round):

- an existing namespace not recorded as ours, or recorded for *another*
  network (after the cluster store lost its VNI keys, a new network may get
  the VNI of one still running here), is a ``Conflict``: nothing is
  touched, the new network is never plugged into the live one;
- an existing ``vxlan0`` whose kind, mark or settings (VNI, local VTEP
  address -- changed by a restart with a new ``--advertise`` --, UDP port,
  MTU, learning off, ARP/ND proxy on) differ from the desired ones is
  deleted and made anew (the caller then programs its neighbour and FDB
  entries again), never silently reused;
- ``br0``: rebuilt if it is no bridge or carries another mark; its MTU and
  gateway addresses are corrected in place.

All methods block (netlink, files): call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from libnet import ownership
from libnet.driverapi import NetworkInfo
from libnet.drivers.overlay.peerdb import Entries
from libnet.errors import Conflict, LibnetError, Unavailable
from libnet.kernel.api import Kernel, LinkOps
from libnet.kernel.neighbours import Neighbour
from libnet.kernel.netlink import VXLAN_PORT, Vxlan
from libnet.kernel.wire import IFA_F_DADFAILED, IFA_F_TENTATIVE
from libnet.ownership import NamespaceLedger

T = TypeVar("T")

log = logging.getLogger("libnet.drivers.overlay")
VTEP_DAD_TIMEOUT = 10.0  # longer than DAD with several probes


def _local(address: str) -> str | None:
    """A VXLAN local address as the kernel reports it: None for the unspecified one."""
    ip = ipaddress.ip_address(address)
    return None if ip.is_unspecified else str(ip)


def label(name: str) -> str:
    """``name`` if a mark can carry it (no colon, short enough), else nothing."""
    return name if ":" not in name and len(name.encode()) <= 100 else ""


class Plumbing:
    """Namespaces and devices of the overlay networks on this host (see the module docstring)."""

    def __init__(
        self,
        host_ns: str | None,
        default_mtu: int | None,
        prefix: str,
        ledger: Callable[[], NamespaceLedger],
        kernel: Kernel,
    ) -> None:
        self.host_ns, self.default_mtu, self.prefix = host_ns, default_mtu, prefix
        self._ledger = ledger  # made on first use: the instance id may have to be read first
        self.kernel = kernel

    def ns_name(self, vni: int) -> str:
        """The namespace of the overlay network with VNI ``vni``."""
        return f"{self.prefix}{vni}"

    def unplug_endpoint(self, ns: str, host_if: str, endpoint_id: str) -> None:
        """Delete an endpoint's veth in ``ns`` if it is there and marked as this instance's."""
        with contextlib.suppress(LibnetError), self.kernel.netlink(ns) as nl:
            if nl.has_link(host_if) and self.owned_endpoint(nl.link(host_if).alias, endpoint_id):
                nl.delete_link(host_if)

    @property
    def ledger(self) -> NamespaceLedger:
        return self._ledger()

    def mark(self, kind: str, owner: str, name: str) -> str:
        """This instance's link mark for network or endpoint ``owner``."""
        return ownership.mark(self.ledger.instance, kind, owner, label(name))

    def owned(self, alias: str | None, network_id: str) -> bool:
        return ownership.owned_by(alias, self.ledger.instance, "net", network_id)

    def owned_endpoint(self, alias: str | None, endpoint_id: str) -> bool:
        return ownership.owned_by(alias, self.ledger.instance, "ep", endpoint_id)

    # --- the ledger -----------------------------------------------------------

    def local_vnis(self) -> dict[int, str]:
        """VNI -> network id of this instance's existing overlay namespaces."""
        out: dict[int, str] = {}
        for rec in self.ledger.records("overlay"):
            suffix = rec.name[len(self.prefix) :]
            if rec.name.startswith(self.prefix) and suffix.isdigit() and self.kernel.netns_exists(rec.name):
                out[int(suffix)] = rec.owner
        return out

    def remove_namespace(self, ns: str, network_id: str) -> bool:
        """Delete ``ns`` only if the ledger records it as this instance's for
        ``network_id``; False, nothing done, otherwise."""
        if not self.ledger.owns(ns, "overlay", network_id):
            return False
        self.kernel.netns_delete(ns)
        self.ledger.forget(ns)
        return True

    def sweep(self, wanted: set[str]) -> tuple[list[tuple[str, str]], list[str], list[tuple[str, str]]]:
        """Namespaces named ``<prefix><digits>`` that no local endpoint needs:
        (this instance's, as (name, network id), to remove; foreign ones, to
        report; this instance's with containers still attached, kept, as (name, network id)).

        Ledger records whose namespace is gone are dropped."""
        remove: list[tuple[str, str]] = []
        foreign: list[str] = []
        kept: list[tuple[str, str]] = []
        for name in self.kernel.netns_list(self.prefix):
            if name in wanted or not name[len(self.prefix) :].isdigit():
                continue
            rec = self.ledger.get(name)
            if rec is None or rec.kind != "overlay":
                foreign.append(name)
            elif self.attached(name):
                kept.append((name, rec.owner))
            else:
                remove.append((name, rec.owner))
        for rec in self.ledger.records("overlay"):
            if not self.kernel.netns_exists(rec.name):
                self.ledger.forget(rec.name)  # a crash between record and create, or deleted by hand
        return remove, foreign, kept

    def sweep_veths(self, joined: set[str], recorded: set[str]) -> tuple[list[str], list[tuple[str, str]]]:
        """Delete this instance's endpoint veths, in its overlay namespaces, whose
        endpoint is stored but not joined (a crash between plugging and storing a
        join), or that are unplugged already; (removed, kept as (what, endpoint id)).  A plugged veth
        of an endpoint the store does not know at all is kept and reported: the
        store may have lost the record (see ``bridge._unused``)."""
        gone: list[str] = []
        kept: list[tuple[str, str]] = []
        for rec in self.ledger.records("overlay"):
            if not self.kernel.netns_exists(rec.name):
                continue
            with contextlib.suppress(LibnetError), self.kernel.netlink(rec.name) as nl:
                for link in nl.links():
                    mark = ownership.Mark.parse(link.alias)
                    if mark is None or not mark.of(self.ledger.instance, "ep") or mark.owner in joined:
                        continue
                    if mark.owner not in recorded and (link.master is not None or link.up):
                        kept.append(
                            (
                                f"veth {link.name} in {rec.name}: the store does not know endpoint "
                                f"{mark.owner[:12]} but it is plugged in; kept (a lost store record?)",
                                mark.owner,
                            )
                        )
                        continue
                    nl.delete_link(link.name)
                    gone.append(f"veth {link.name} of endpoint {mark.owner[:12]} in {rec.name} (not joined)")
        return gone, kept

    def attached(self, ns: str) -> list[str]:
        """Ports of ``br0`` in ``ns`` other than ``vxlan0`` (containers' veths)."""
        with contextlib.suppress(LibnetError), self.kernel.netlink(ns) as nl:
            links = nl.links()
            bridge = next((link.index for link in links if link.name == "br0"), None)
            return [
                link.name for link in links if bridge is not None and link.master == bridge and link.name != "vxlan0"
            ]
        return []

    # --- the underlay -----------------------------------------------------------

    def underlay_mtu(self, vtep: str) -> int:
        with self.kernel.netlink(self.host_ns) as nl:
            for link in nl.links():
                if any(a.split("/")[0] == vtep for a in nl.addresses(link.index)):
                    return link.mtu
        return 1500

    def await_vtep(self, vtep: str, timeout: float = VTEP_DAD_TIMEOUT) -> None:
        """Return once ``vtep`` can carry traffic.

        A fresh IPv6 address stays "tentative" during duplicate address
        detection (about 1 s) and meanwhile ignores neighbour solicitations:
        a peer that sent its first packets then lost its first solicitation
        and waited a full retransmit second.  So a host only builds the
        device, and announces endpoints, once its VTEP address is usable.
        """
        deadline = time.monotonic() + timeout
        with self.kernel.netlink(self.host_ns) as nl:
            while True:
                flags = nl.address_flags(vtep)
                if flags is None:
                    raise Unavailable(f"the VTEP address {vtep} is not configured on this host", vtep=vtep)
                if flags & IFA_F_DADFAILED:
                    raise Unavailable(f"the VTEP address {vtep} failed duplicate address detection", vtep=vtep)
                if not flags & IFA_F_TENTATIVE:
                    return
                if time.monotonic() >= deadline:
                    log.warning("VTEP %s still tentative after %.0f s; using it anyway", vtep, timeout)
                    return
                time.sleep(0.05)

    # --- building is checking ---------------------------------------------------

    def build(self, nw: NetworkInfo, vni: int, ns: str, vtep: str, local: str | None = None) -> list[str]:
        """Make this host's part of ``nw`` what it should be; returns what was repaired.

        ``vtep``: this host's address on the network's path (its MTU and
        family size the network); ``local``: the VXLAN device's local address,
        ``vtep`` unless given -- encrypted networks give the unspecified
        address, so the source comes from the route into the WireGuard tunnel
        and changes with it (key rotation).  The namespace first
        (:meth:`claim_namespace`), then ``br0`` and ``vxlan0`` in it.  A
        namespace made here is removed again if a later step fails."""
        self.await_vtep(vtep)
        overhead = 70 if ipaddress.ip_address(vtep).version == 6 else 50
        limit = (self.default_mtu or self.underlay_mtu(vtep)) - overhead
        mtu = min(nw.options.get("mtu") or limit, limit)
        created, done = self.claim_namespace(nw, vni, ns)
        if created and mtu < (nw.options.get("mtu") or 0):  # made on a host with a larger underlay
            log.warning(
                "overlay network %s: mtu %s is more than this host's path carries; %s used here",
                nw.name,
                nw.options["mtu"],
                mtu,
            )
        try:
            with self.kernel.netlink(ns) as nl:
                nl.set_up("lo")
                done += self.ensure_bridge(nl, ns, nw, mtu, fresh=created)
                done += self.ensure_vxlan(nl, ns, nw, vni, local or vtep, mtu)
        except BaseException:
            if created:
                self.kernel.netns_delete(ns)
                self.ledger.forget(ns)
            raise
        return done

    def claim_namespace(self, nw: NetworkInfo, vni: int, ns: str) -> tuple[bool, list[str]]:
        """Make sure ``ns`` is this instance's namespace of ``nw``: (created now, repairs).

        An existing namespace must be recorded in the ledger for ``nw``;
        unrecorded (not ours) or recorded for another network (its VNI was
        given out again after a store loss) is a ``Conflict``, nothing
        touched.  A missing one is recorded first, then created."""
        rec = self.ledger.get(ns)
        if self.kernel.netns_exists(ns):
            if rec is None or rec.kind != "overlay":
                raise Conflict(
                    f"namespace {ns} for VNI {vni} exists but this libnet instance did not make it; left alone",
                    netns=ns,
                    vni=vni,
                    network_id=nw.id,
                )
            if rec.owner != nw.id:
                raise Conflict(
                    f"namespace {ns} for VNI {vni} belongs to overlay network {rec.owner[:12]} on this host, "
                    f"not to {nw.name}: the VNI was given out twice (did the cluster store lose its data?)",
                    netns=ns,
                    vni=vni,
                    network_id=nw.id,
                    other_network_id=rec.owner,
                )
            return False, []
        self.ledger.record(ns, "overlay", nw.id)
        try:
            self.kernel.netns_create(ns)
        except BaseException:
            self.ledger.forget(ns)  # nothing made (or the name just became someone else's)
            raise
        repaired = [f"overlay namespace {ns} of network {nw.name} was gone: made anew"] if rec else []
        return True, repaired

    def ensure_bridge(self, nl: LinkOps, ns: str, nw: NetworkInfo, mtu: int, fresh: bool) -> list[str]:
        """``br0``: rebuilt unless a bridge with this network's (or no) mark; MTU and gateways corrected."""
        done: list[str] = []
        link = nl.link("br0") if nl.has_link("br0") else None
        if link is not None:
            why = None
            if link.kind != "bridge":
                why = f"a {link.kind or 'non-bridge'} device"
            elif link.alias and not self.owned(link.alias, nw.id):
                why = f"marked {link.alias!r}"
            if why:
                nl.delete_link("br0")
                done.append(f"br0 of overlay network {nw.name} in {ns} was {why}: rebuilt")
                link = None
        if link is None:
            nl.add_bridge("br0", mtu=mtu, alias=self.mark("net", nw.id, nw.name))
            fresh = True
        else:
            if not link.alias:  # in our recorded namespace an unmarked br0 is ours
                nl.set_alias("br0", self.mark("net", nw.id, nw.name))
            if link.mtu != mtu:
                nl.set_mtu("br0", mtu)
                done.append(f"br0 of overlay network {nw.name} in {ns}: MTU {link.mtu} -> {mtu}")
        want = {ipaddress.ip_interface(gw) for gw in (nw.ipv4_gateway, nw.ipv6_gateway) if gw}
        have = {ipaddress.ip_interface(a) for a in nl.addresses("br0")}
        for gw in sorted(want - have, key=str):
            nl.add_address("br0", str(gw), nodad=True)
            if not fresh:
                done.append(f"br0 of overlay network {nw.name} in {ns}: gateway {gw} added")
        for addr in sorted(have - want, key=str):
            if not addr.ip.is_link_local:
                nl.delete_address("br0", str(addr))
                done.append(f"br0 of overlay network {nw.name} in {ns}: stray address {addr} removed")
        nl.set_up("br0")
        return done

    def vxlan_mismatch(self, vx: Vxlan | None, nw: NetworkInfo, vni: int, local: str, mtu: int) -> str | None:
        """Why an existing ``vxlan0`` cannot serve ``nw`` as it is, or None."""
        if vx is None:
            return "not a VXLAN device"
        if vx.link.alias and not self.owned(vx.link.alias, nw.id):
            return f"the mark {vx.link.alias!r}"
        wrong = [
            f"{what} {have}, not {want}"
            for what, have, want in (
                ("VNI", vx.vni, vni),
                ("local address", vx.local, _local(local)),
                ("UDP port", vx.port, VXLAN_PORT),
                ("MTU", vx.link.mtu, mtu),
                ("learning", vx.learning, False),
                ("ARP/ND proxy", vx.proxy, True),
            )
            if have != want
        ]
        if vx.link_netnsid is None:
            wrong.append("its UDP socket outside the underlay namespace")
        return ", ".join(wrong) or None

    def ensure_vxlan(self, nl: LinkOps, ns: str, nw: NetworkInfo, vni: int, local: str, mtu: int) -> list[str]:
        """``vxlan0``: kept only with the desired settings and mark, else deleted and made anew.

        It is made directly in the namespace from the host namespace (so its
        UDP socket stays on the underlay, and nothing is ever left in the host
        namespace) and marked right after: an unmarked ``vxlan0`` in our
        recorded namespace is ours."""
        done: list[str] = []
        if nl.has_link("vxlan0"):
            vx = nl.vxlan("vxlan0")
            why = self.vxlan_mismatch(vx, nw, vni, local, mtu)
            if why is None:
                assert vx is not None
                if not vx.link.alias:
                    nl.set_alias("vxlan0", self.mark("net", nw.id, nw.name))
                nl.set_master("vxlan0", "br0")
                nl.set_up("vxlan0")
                return done
            nl.delete_link("vxlan0")
            done.append(f"vxlan0 of overlay network {nw.name} in {ns} had {why}: rebuilt")
        with self.kernel.netlink(self.host_ns) as host:
            host.add_vxlan_in(ns, "vxlan0", vni, local, mtu=mtu, learning=False, proxy=True)
        nl.set_alias("vxlan0", self.mark("net", nw.id, nw.name))
        nl.set_master("vxlan0", "br0")
        nl.set_up("vxlan0")
        return done


class VxlanDevices:
    """The peer programmer's kernel side: ``vxlan0`` in each network's namespace
    (:class:`libnet.drivers.overlay.programmer.DeviceOps`).

    Each network's netlink handle (a thread in its namespace, with its
    sockets) is kept from one batch to the next: opening one costs more than
    the batch of a peer change (~2.5 ms against ~0.5 ms on a 2-core VM), and
    every host pays it on every change of a converging overlay.  A handle
    lives in the namespace it was opened in, so :meth:`release` drops it
    whenever the namespace may be another (rebuilt, or torn down: the
    programmer's ``reset`` and ``forget``); a failed batch drops it too.

    ``ports``: the host-side veth names of this host's endpoints on a network
    (in its namespace), where :meth:`announce` sends."""

    def __init__(
        self,
        plumbing: Plumbing,
        vni: Callable[[str], int | None],
        ports: Callable[[str], Sequence[str]] = lambda network_id: (),
    ) -> None:
        self.plumbing, self._vni, self._ports = plumbing, vni, ports
        self._handles: dict[str, tuple[str, LinkOps]] = {}  # network id -> (namespace, handle)
        self._lock = threading.Lock()  # batches run on worker threads; release on the event loop

    def _ns(self, network_id: str) -> str:
        vni = self._vni(network_id)
        if vni is None:
            raise Unavailable("the overlay network is not set up on this host", network_id=network_id)
        return self.plumbing.ns_name(vni)

    def _handle(self, network_id: str) -> LinkOps:
        ns = self._ns(network_id)
        with self._lock:
            held = self._handles.get(network_id)
            if held is not None and held[0] == ns:
                return held[1]
        handle = self.plumbing.kernel.netlink(ns)
        with self._lock:
            stale = self._handles.get(network_id)
            self._handles[network_id] = (ns, handle)
        if stale is not None:
            stale[1].close()
        return handle

    def _with(self, network_id: str, fn: Callable[[LinkOps], T]) -> T:
        handle = self._handle(network_id)
        try:
            return fn(handle)
        except BaseException:
            self.release(network_id)  # the namespace may be gone or another: open it anew next time
            raise

    def dump(self, network_id: str) -> Entries:
        return self._with(network_id, lambda nl: Entries(set(nl.neighbours("vxlan0")), set(nl.fdb("vxlan0"))))

    def apply(self, network_id: str, remove: Entries, add: Entries) -> None:
        def batch(nl: LinkOps) -> None:
            # new entries first: a peer whose VTEP moved (a key rotation) never has a moment without one;
            # each call is a round trip to the namespace thread: none for an empty part
            if add.neighbours:
                nl.replace_neighbours("vxlan0", add.neighbours)
            if add.fdb:
                nl.replace_fdb("vxlan0", add.fdb)
            if remove.neighbours:
                nl.delete_neighbours("vxlan0", remove.neighbours)
            if remove.fdb:
                nl.delete_fdb("vxlan0", remove.fdb)

        self._with(network_id, batch)

    def announce(self, network_id: str, entries: set[Neighbour]) -> None:
        """Gratuitous ARP / unsolicited NA for ``entries`` into each local container's port of the
        network -- its veth, never ``br0``, which would flood them to every remote VTEP -- from the
        network's namespace (on the handle's thread, which lives there)."""
        ports = self._ports(network_id)
        if ports:
            self._handle(network_id).announce(ports, entries)

    def release(self, network_id: str) -> None:
        """Close the network's handle, if one is held (its namespace was rebuilt or removed)."""
        with self._lock:
            held = self._handles.pop(network_id, None)
        if held is not None:
            held[1].close()

    def close(self) -> None:
        """Close every handle."""
        for network_id in list(self._handles):
            self.release(network_id)
