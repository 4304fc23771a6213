"""The ``bridge`` driver: one Linux bridge per network on this host.

Per network: a bridge (``bridge_name`` option, else ``lnb-`` + id) holding the
IPv4 and IPv6 gateway addresses; nftables rules in the instance's own table
(``inet libnet-<instance>``): masquerade of the subnets leaving through any
other device (not on internal networks), isolation from every other bridge
of the instance (the ``bridges`` set), and for internal networks a drop of
all forwarding in and out.  ``icc=false`` isolates the bridge ports from
each other (kernel bridge port isolation), so containers reach only the
gateway.

Per endpoint, at join: a veth whose host side (``lnv`` + the endpoint id's
first 12 hex digits) is a port of the bridge and whose other side is created
directly inside the sandbox namespace under its final name (``eth0``...):
creating it in place costs a fraction of creating and moving it.  Inside the
sandbox: the MAC, IPv4 and IPv6 (DAD off, so it is usable at once) addresses
and the default routes via the gateways.  Published ports are DNAT rules.

**Marks** (:mod:`libnet.ownership`).  A bridge carries the alias
``libnet:<instance>:net:<network id>:<name>``, both ends of a veth
``libnet:<instance>:ep:<endpoint id>:<name>``.  The host-side mark is set in
the same rtnetlink batch that creates the link, so no crash leaves a libnet
link unmarked; the sandbox side gets its mark in the sandbox's configure
batch (informational, for ``--adopt``).  The driver deletes only links
carrying this instance's mark for the object at hand:

- ``create_network`` refuses (``Conflict`` naming the interface, and its
  network when it is another libnet network's bridge) a ``bridge_name`` held
  by any link that is not this network's bridge, before changing anything,
  and on a later failure undoes only the steps it did (``Rollback``): it
  never deletes ``eth0`` or ``lo``, nor another network's set element;
- ``delete_network`` deletes the bridge (and its set element) only when it
  is marked as this network's; rule groups ``net:<id>:*`` of the own table
  always go;
- ``reconcile`` deletes this instance's bridges of unknown networks and its
  veths of no joined endpoint; links named like libnet's (``lnb-*``,
  ``lnv*``) without the instance's mark, or marked by another instance, are
  reported in ``foreign`` and left alone.  It repairs the firewall: every
  stored network's bridge back in the set, missing rule groups and joined
  endpoints' port rules re-added.  Links with the marks of libnet before
  instances (``libnet:net:<id>``, ``libnet:ep:<id>``) that match a stored
  object are re-marked.

A join is two batched kernel requests (:mod:`libnet.kernel.rtnl`): the veth,
up, enslaved and marked, in one request on the host namespace's thread;
addresses, link state, mark and routes in one batch on a socket opened inside
the sandbox.  On failure the done steps are undone: deleting the host side of
the veth removes both ends.  A leave unplugs the veth at once (down, out of
the bridge, into the instance's "dead" link group), renames the sandbox side
out of the way, and lets a reaper thread delete the group in one request, at
most once every ``reap_delay`` seconds: deleting links holds the kernel's rtnl
lock for an RCU grace period (15-25 ms, longer on a busy machine) whatever
their number, and every other link, address or route request of every
process waits meanwhile; one pass a second for all the veths unplugged in it,
not one per leave, and while operations keep coming, not until they pause
(:data:`REAP_IDLE`) or :data:`REAP_MAX_DELAY` has passed.  Unplugged veths are down and out of their bridge: they
carry nothing while they wait.

The driver is orchestration only: what it makes, by name, is in
:mod:`libnet.drivers.bridge_model`; published ports in
:mod:`libnet.drivers.publish`; the sandbox side of a join in
:mod:`libnet.drivers.sandbox_config`; reconcile in
:mod:`libnet.drivers.bridge_reconcile`.  The kernel comes from a
:class:`libnet.kernel.api.Kernel` (the host's by default; an in-memory one in
unit tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from libnet import gate, ownership
from libnet.driverapi import Capabilities, EndpointInfo, NetworkInfo, ReconcileReport, SandboxInfo
from libnet.drivers import sandbox_config
from libnet.drivers.bridge_model import (
    DEFAULT_MTU,
    LEGACY_EP,
    bridge_name,
    describe,
    host_ifname,
    link_mark,
    network_rules,
    orphan,
    parse_options,
    retired_ifname,
    unused,
)
from libnet.drivers.bridge_reconcile import reconcile
from libnet.drivers.publish import Publisher, RelayOps
from libnet.drivers.relay import Relays
from libnet.errors import BadRequest, Conflict, KernelObjectExists, LibnetError, NotFound
from libnet.kernel.api import FirewallOps, Kernel, LinkOps, RuleList, SandboxOps
from libnet.kernel.netlink import Link
from libnet.ownership import Mark
from libnet.rollback import Rollback

T = TypeVar("T")
log = logging.getLogger("libnet.drivers.bridge")

#: seconds an unplugged veth waits for the reaper's pass when the agent is idle (module docstring)
REAP_DELAY = 1.0

#: seconds without operations the reaper waits for (deleting links stalls everyone's netlink
#: requests for a grace period: not in the middle of a burst of them) ...
REAP_IDLE = 0.25

#: ... but no more than this many seconds after the first veth of the pass was unplugged
REAP_MAX_DELAY = 10.0

# the names tests and other modules import from here
_orphan, _unused = orphan, unused
__all__ = ["BridgeDriver", "bridge_name", "describe", "host_ifname", "link_mark"]


def _host_kernel() -> Kernel:
    from libnet.kernel.host import HostKernel

    return HostKernel()


class BridgeDriver:
    """See the module docstring."""

    name = "bridge"

    def __init__(
        self,
        host_ns: str | None = None,
        default_mtu: int | None = None,
        instance: str | None = None,
        kernel: Kernel | None = None,
        relays: RelayOps | None = None,
        reap_delay: float = REAP_DELAY,
    ) -> None:
        self.host_ns = host_ns
        self.default_mtu = default_mtu
        self.instance = instance
        self.kernel = kernel if kernel is not None else _host_kernel()
        self._nl: LinkOps | None = None
        self._fw: FirewallOps | None = None
        self._mtus: dict[str, int] = {}  # bridge -> MTU, read once
        self._reaper_nl: LinkOps | None = None
        self._reap_queued = False
        self.reap_delay = reap_delay
        self._reap_timer: asyncio.TimerHandle | None = None
        self._reaping: Future[None] | None = None  # the last pass handed to the reaper thread
        # endpoints whose veth this process's leave unplugged: their delete has nothing left to unplug
        self._unplugged: set[str] = set()
        # endpoint -> the index of the host side of the veth this process made for it (Netlink.unplug's ``made``)
        self._made: dict[str, int] = {}
        # [::1] published ports (libnet.drivers.relay)
        self.publisher = Publisher(lambda: self.fw, relays if relays is not None else Relays(host_ns))

    def capabilities(self) -> Capabilities:
        return Capabilities(scope="local")

    def parse_network_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return parse_options(options)

    # --- plumbing -------------------------------------------------------------

    @property
    def owner(self) -> str:
        """This instance's id; the kernel is never touched without it."""
        if self.instance is None:
            raise BadRequest("the bridge driver needs the libnet instance id (instance=...) to mark what it makes")
        return self.instance

    @property
    def nl(self) -> LinkOps:
        if self._nl is None:
            self.owner  # noqa: B018 -- raises without an instance
            self._nl = self.kernel.netlink(self.host_ns)
        return self._nl

    @property
    def reaper(self) -> LinkOps:
        """A second host-namespace handle whose thread does the slow veth deletions."""
        if self._reaper_nl is None:
            self.owner  # noqa: B018
            self._reaper_nl = self.kernel.netlink(self.host_ns)
        return self._reaper_nl

    @property
    def fw(self) -> FirewallOps:
        if self._fw is None:
            self._fw = self.kernel.firewall(self.host_ns, ownership.firewall_table(self.owner))
        return self._fw

    async def _host(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the host namespace's thread (netlink calls inside run inline)."""
        return await asyncio.wrap_future(self.nl.submit(fn))

    async def _host_with(
        self, links: SandboxOps, fn: Callable[[SandboxOps], T], abandoned: Callable[[T], object] | None = None
    ) -> T:
        """``fn(links)`` on the host thread, which closes ``links`` when done: a wait cancelled
        here never closes the socket under the thread's feet (or one never run: closed then).

        ``abandoned``: run with ``fn``'s result, on the host thread, when the caller was cancelled
        while the thread was already at it (the kernel work is done, for nobody: a join's veth
        stayed plugged and configured, its ``ethN`` taken in the sandbox until the reaper's pass,
        up to REAP_MAX_DELAY under load, and the next connect there a ``Conflict``)."""

        def body() -> T:
            try:
                return fn(links)
            finally:
                links.close()

        fut = self.nl.submit(body)
        fut.add_done_callback(lambda f: links.close() if f.cancelled() else None)
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            if abandoned is not None and not fut.cancelled():  # running, or done before the waiter woke
                fut.add_done_callback(lambda f: self._abandoned(f, abandoned))
            raise

    def _abandoned(self, fut: Future[T], then: Callable[[T], object]) -> None:
        """``then(result)`` of a host-thread call whose caller is gone, on the host thread (any thread)."""
        if fut.cancelled() or fut.exception() is not None:
            return
        result = fut.result()
        try:
            self.nl.submit(lambda: then(result)).add_done_callback(_log_failure("undo a cancelled operation"))
        except RuntimeError as exc:  # the host thread closed: reconcile removes what it left
            log.warning("undo a cancelled operation: %s", exc)

    async def _firewall(self, fn: Callable[[FirewallOps], T]) -> T:
        return await asyncio.to_thread(fn, self.fw)

    async def close(self) -> None:
        if self._reap_timer is not None:  # the waiting pass now: closing waits for it below
            self._reap_timer.cancel()
            self._reap_timer = None
            self._reap_now()
        await self.publisher.relays.close()
        for handle in (self._nl, self._reaper_nl, self._fw):
            if handle is not None:
                await asyncio.to_thread(handle.close)  # closing waits for queued deletions
        self._nl = self._reaper_nl = self._fw = None

    def _mtu(self, nw: NetworkInfo) -> int:
        mtu: int = nw.options.get("mtu") or self.default_mtu or self.nl.uplink_mtu() or DEFAULT_MTU
        return mtu

    def find(self, name: str | int) -> Link | None:
        """The link called (or numbered) ``name``, or None; on the host thread."""
        try:
            return self.nl.link(name)
        except NotFound:  # NoSuchLink, or gone meanwhile
            return None

    def _delete_unplugged(self, name: str, endpoint_id: str) -> bool:
        """Delete ``name`` if it is this instance's veth of ``endpoint_id`` as a leave left it
        (down, in no bridge); on the host thread.  Whether the name is free now: deleted here,
        or gone already (the reaper's pass, on its own thread, took it between the join's
        clash and this look: the join tries once more rather than fail with a Conflict)."""
        found = self.find(name)
        if found is None:
            return True
        if found.up or found.master is not None:
            return False
        if not ownership.owned_by(found.alias, self.owner, "ep", endpoint_id):
            return False
        self.nl.delete_link(found.index)
        return True

    def delete_own(self, link: str | int, kind: str, owner: str) -> bool:
        """Delete ``link`` if it is marked as this instance's ``kind`` of ``owner``; on the host thread."""
        found = self.find(link)
        if found is None or not ownership.owned_by(found.alias, self.owner, kind, owner):
            return False
        self.nl.delete_link(found.index)
        return True

    # --- networks -------------------------------------------------------------

    def _check_bridge(self, br: str, nw: NetworkInfo) -> Link | None:
        """This network's bridge if it exists (to adopt), None if the name is
        free; ``Conflict`` naming the holder otherwise.  Changes nothing."""
        link = self.find(br)
        if link is None:
            return None
        if link.kind == "bridge" and ownership.owned_by(link.alias, self.owner, "net", nw.id):
            return link
        found = Mark.parse(link.alias)
        ids: dict[str, Any] = {"ifname": br, "network_id": nw.id}
        if found is not None and found.kind == "net":
            ids["owner_network_id"] = found.owner
            if found.name:
                ids["owner_network"] = found.name
        raise Conflict(
            f"interface {br} exists and is not the bridge of network {nw.name}: it is {describe(link)}; "
            "choose another bridge_name",
            **ids,
        )

    def route_localnet(self, nw: NetworkInfo, br: str) -> bool:
        """Let the bridge carry 127.0.0.1-sourced traffic (ports published on
        IPv4 localhost), as Docker does on its bridges: ``route_localnet``
        (kernel ip-sysctl: "Do not consider loopback addresses as martian
        source or destination while routing"), on this bridge only.  The
        ``localhost`` rule group masquerades those packets and keeps containers
        out of the host's 127.0.0.0/8.  True if it had to be set; on any thread."""
        if nw.internal or not nw.ipv4_subnet:
            return False
        key = ("net", "ipv4", "conf", br, "route_localnet")
        if self.kernel.sysctl_get(self.host_ns, key) == "1":
            return False
        self.kernel.sysctl_set(self.host_ns, key, 1)
        return True

    async def check_network(self, nw: NetworkInfo) -> None:
        """``Conflict`` if the bridge's name is held by a link that is not this network's bridge."""
        await self._host(lambda: self._check_bridge(bridge_name(nw), nw))

    async def create_network(self, nw: NetworkInfo) -> None:
        br = bridge_name(nw)
        mark = link_mark(self.owner, "net", nw.id, nw.name)
        async with Rollback() as undo:
            link = await self._host(lambda: self._check_bridge(br, nw))  # nothing touched before this
            if link is None:
                index = await self._host(lambda: self.nl.add_bridge(br, mtu=self._mtu(nw), alias=mark))
                undo.push(lambda: self._host(lambda: self.delete_own(index, "net", nw.id)), f"delete bridge {br}")
            else:
                index = link.index
            have = set(await self._host(lambda: self.nl.addresses(index)))
            for gw in sandbox_config.gateways(nw):
                if gw not in have:
                    await self._host(self._adds_address(index, gw))
                    undo.push(self._removes_address(index, gw), f"remove {gw}")
            if link is None or not link.up:
                await self._host(lambda: self.nl.set_up(index))
                if link is not None:
                    undo.push(lambda: self._host(lambda: self.nl.set_down(index)), f"bring {br} down")
            await self.kernel.enable_forwarding(self.host_ns)
            await asyncio.to_thread(self.route_localnet, nw, br)  # the bridge's own setting: goes with it
            if await self._firewall(lambda fw: fw.add_bridge(br)):
                undo.push(lambda: self._firewall(lambda fw: fw.remove_bridge(br)), f"take {br} out of the set")
            for key, rules in network_rules(nw, br):
                await self._firewall(_adds_rules(key, rules))
                undo.push(self._removes_rules(key), f"remove rules {key}")

    def _adds_address(self, index: int, cidr: str) -> Callable[[], None]:
        return lambda: self.nl.add_address(index, cidr, nodad=True)

    def _removes_address(self, index: int, cidr: str) -> Callable[[], Awaitable[None]]:
        return lambda: self._host(lambda: self.nl.delete_address(index, cidr))

    def _removes_rules(self, key: str) -> Callable[[], Awaitable[None]]:
        return lambda: self._firewall(lambda fw: fw.remove(key))

    async def delete_network(self, nw: NetworkInfo) -> None:
        br = bridge_name(nw)

        def unbuild() -> Link | None:
            """The link holding the name if it is not this network's bridge; else deletes that bridge."""
            link = self.find(br)
            if link is None or not ownership.owned_by(link.alias, self.owner, "net", nw.id):
                return link
            self.nl.delete_link(link.index)
            return None

        other = await self._host(unbuild)
        self._mtus.pop(br, None)
        if other is not None:
            log.warning("network %s: %s is not its bridge: left alone", nw.name, describe(other))

        def remove(fw: FirewallOps) -> None:
            fw.remove_prefix(f"net:{nw.id}:")
            if other is None:  # the name is free now: its element isolates nothing of anyone's
                fw.remove_bridge(br)

        await self._firewall(remove)

    # --- endpoints ------------------------------------------------------------

    async def create_endpoint(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        if ep.ports and nw.internal:
            raise BadRequest("internal networks cannot publish ports", network_id=nw.id, endpoint_id=ep.id)

    async def delete_endpoint(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        await self.revoke_external_connectivity(nw, ep)
        if ep.id in self._unplugged:  # left through this process: unplugged already (a host-thread hop spared)
            self._unplugged.discard(ep.id)
            return
        # its veth, if a crash left one plugged in (a join that never reached the
        # store): out of service now, deleted with the next reaping.  After a
        # normal leave this finds it unplugged already and changes nothing.
        group = ownership.dead_group(self.owner)
        made = self._made.pop(ep.id, None)
        unplug = self.nl.unplug
        if await self._host(lambda: unplug(host_ifname(ep), group=group, owned=self._owns_veth(ep), made=made)):
            self._schedule_reaping()

    async def join(self, nw: NetworkInfo, ep: EndpointInfo, sb: SandboxInfo) -> None:
        self._unplugged.discard(ep.id)
        br, host_if = bridge_name(nw), host_ifname(ep)
        mark = link_mark(self.owner, "ep", ep.id, ep.name)
        isolated = not nw.options.get("icc", True)

        def plug() -> int:
            nl = self.nl
            mtu = self._mtus.get(br) or nl.link(br).mtu
            self._mtus[br] = mtu
            index = nl.plug_veth(host_if, sb.ifname, sb.netns, br, mtu=mtu, peer_mac=ep.mac, alias=mark)
            try:
                nl.set_hairpin(index)  # a container reaching itself via its published port (br_netfilter)
                if isolated:
                    nl.set_port_isolated(index)
            except BaseException:
                nl.delete_link(index)  # made just now, by this call
                raise
            return index

        def plug_configured(links: SandboxOps) -> tuple[int, BaseException | None]:
            """plug, then the sandbox side (on the host thread): the veth and the configure's
            error, if it failed (the veth deleted again)."""
            index = plug()
            try:
                sandbox_config.configure_links(links, nw, ep, sb, alias=mark)
            except BaseException as exc:
                self.delete_own(index, "ep", ep.id)
                return index, exc
            return index, None

        def undo_plug(made: tuple[int, BaseException | None]) -> None:
            """A join cancelled while the host thread plugged and configured: deleted again."""
            index, failed = made
            if failed is None:
                self.delete_own(index, "ep", ep.id)

        async def make() -> tuple[int, bool, BaseException | None]:
            """The veth plugged in; whether the sandbox side was configured too, and how that
            failed (raised by the caller: a refused default route is no name clash)."""
            mtu = self._mtus.get(br)
            if mtu is not None and gate.in_flight() <= 1:
                # alone: on this thread (the hand-over to the host thread and back costs more than
                # the kernel's work)
                index = self.nl.plug_veth_here(
                    host_if, sb.ifname, sb.netns, br, mtu, ep.mac, mark, hairpin=True, isolated=isolated
                )
                return index, False, None
            # with other operations in flight: the kernel's work of plug and configure on the
            # host thread in one hand-over, the event loop serving the others meanwhile (the
            # kernel answers inside each send: moving a veth, addresses, routes and link state
            # are ~1 ms of the loop's time per attach, issue 22)
            index, failed = await self._host_with(
                await self.kernel.open_sandbox(sb.netns), plug_configured, abandoned=undo_plug
            )
            return index, True, failed

        try:
            try:
                index, configured, failed = await make()
            except KernelObjectExists:
                # this endpoint's own veth of an earlier join, unplugged and waiting for the
                # reaper (a leave and a join within reap_delay): deleted now, then made afresh
                if not await self._host(lambda: self._delete_unplugged(host_if, ep.id)):
                    raise
                index, configured, failed = await make()
        except KernelObjectExists:
            raise Conflict(
                f"{host_if} or {sb.ifname} in the sandbox exists already", ifname=host_if, sandbox_id=sb.id
            ) from None
        if failed is not None:
            raise failed
        if not configured:
            try:
                await sandbox_config.configure_sandbox(self.kernel, nw, ep, sb, alias=mark)
            except BaseException:
                await self._host(lambda: self.delete_own(index, "ep", ep.id))
                raise
        self._made[ep.id] = index

    async def leave(self, nw: NetworkInfo, ep: EndpointInfo, sb: SandboxInfo) -> None:
        host_if = host_ifname(ep)
        # Deleting a veth costs the kernel an RCU grace period (15-25 ms).  So:
        # free the sandbox's interface name now (down + renamed, so a new join
        # can take ethN again at once), unplug the host side now (down, out of
        # the bridge, into the "dead" link group), and let the reaper delete
        # the whole group in one request later -- one grace period for many.
        # both at once: the host side on the host thread while this thread renames the sandbox side
        # With other operations in flight both go to the host thread in one hand-over, the event
        # loop serving the others meanwhile (the rename takes the kernel ~0.5 ms, issue 22).
        group = ownership.dead_group(self.owner)
        made = self._made.pop(ep.id, None)
        owned = self._owns_veth(ep)
        if gate.in_flight() > 1 and sb.netns:
            links: SandboxOps | None = None
            with contextlib.suppress(LibnetError, OSError):  # gone already: nothing to rename
                links = await self.kernel.open_sandbox(sb.netns)

            def both(links: SandboxOps | None) -> bool:
                if links is not None:
                    sandbox_config.retire_links(links, sb, retired_ifname(ep))
                return self.nl.unplug(host_if, group=group, owned=owned, made=made)

            loop = asyncio.get_running_loop()

            def reap_later(found: bool) -> None:  # cancelled while unplugging: the veth still goes
                if found:
                    loop.call_soon_threadsafe(self._schedule_reaping)

            found = await (
                self._host(lambda: both(None)) if links is None else self._host_with(links, both, abandoned=reap_later)
            )
        else:
            unplugged = asyncio.wrap_future(  # queued on the host thread now, not at the first await
                self.nl.submit(lambda: self.nl.unplug(host_if, group=group, owned=owned, made=made))
            )
            try:
                await sandbox_config.retire_interface(self.kernel, sb, retired_ifname(ep))
            finally:
                found = await unplugged
        if found:
            self._schedule_reaping()
        self._unplugged.add(ep.id)

    def _owns_veth(self, ep: EndpointInfo) -> Callable[[str | None], bool]:
        def owned(alias: str | None) -> bool:
            return ownership.owned_by(alias, self.owner, "ep", ep.id) or alias == LEGACY_EP + ep.id

        return owned

    def _schedule_reaping(self) -> None:
        """A reaper pass within ``reap_delay`` seconds (module docstring), if none is queued."""
        if self._reap_queued:
            return  # the queued pass will take this one too
        self._reap_queued = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or self.reap_delay <= 0:
            self._reap_now()
        else:
            self._reap_timer = loop.call_later(self.reap_delay, self._reap_when_idle, loop.time())

    def _reap_when_idle(self, first: float) -> None:
        """The pass queued at loop time ``first``: now if no operation ran for REAP_IDLE seconds
        or REAP_MAX_DELAY has passed, else looked at again shortly.  Under a burst of connects
        and disconnects the pass every second stalled every request in flight for the kernel's
        grace period (p99 of api_bench 81-85 ms without it, 112-121 ms with, issue 22)."""
        loop = asyncio.get_running_loop()
        idle = gate.idle_for()
        if idle >= REAP_IDLE or loop.time() - first >= REAP_MAX_DELAY:
            self._reap_now()
        else:
            wait = REAP_IDLE - idle if idle else REAP_IDLE
            self._reap_timer = loop.call_later(wait, self._reap_when_idle, first)

    def _reap_now(self) -> None:
        self._reap_timer = None
        group = ownership.dead_group(self.owner)

        def reap() -> None:
            self._reap_queued = False  # unplugged from now on: another pass
            self.reaper.delete_group(group)

        self._reaping = self.reaper.submit(reap)
        self._reaping.add_done_callback(_log_failure("delete unplugged veths"))

    async def _reap_waiting(self) -> None:
        """The waiting reaper pass now, and done: what this process unplugged is gone."""
        if self._reap_timer is not None:
            self._reap_timer.cancel()
            self._reap_now()
        if self._reaping is not None:
            with contextlib.suppress(Exception):  # logged by its callback
                await asyncio.wrap_future(self._reaping)

    async def set_gateway(self, nw: NetworkInfo, ep: EndpointInfo, sb: SandboxInfo, gateway: bool) -> None:
        await sandbox_config.set_default_routes(self.kernel, nw, sb, gateway)

    async def program_external_connectivity(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        if not ep.ports:
            return
        if nw.internal:
            raise BadRequest("internal networks cannot publish ports", network_id=nw.id, endpoint_id=ep.id)
        await self.publisher.publish(nw, ep)

    async def revoke_external_connectivity(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        if ep.ports:  # no ports, no rules: spare the nftables round trip
            await self.publisher.withdraw(ep)

    # --- reconcile ------------------------------------------------------------

    async def reconcile(
        self, networks: list[NetworkInfo], endpoints: list[tuple[EndpointInfo, SandboxInfo | None]]
    ) -> ReconcileReport:
        # this process's unplugged veths go first: waiting for the reaper is no drift to report
        await self._reap_waiting()
        return await reconcile(self, networks, endpoints)


def _adds_rules(key: str, rules: RuleList) -> Callable[[FirewallOps], None]:
    return lambda fw: fw.add(key, rules)


def _log_failure(what: str) -> Callable[[Future[Any]], None]:
    def done(fut: Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            log.warning("%s failed: %s", what, fut.exception())

    return done
