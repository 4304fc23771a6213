"""Network proxies: tie two networks together without merging them.

A proxy (:class:`libnet.model.Proxy`) is a libnet-managed sandbox with a
*front* endpoint on the clients' network (``source``, NET_A) and a *back*
endpoint on the backends' network (``target``, NET_B).  For each service
``ALIAS:PORT/PROTO`` it forwards connections to its front address on the
listen port to the endpoints on ``target`` named or aliased ``ALIAS`` --
those of this host and, on an overlay, the remote ones the driver's peer table
knows -- by kernel NAT in its own namespace (:mod:`libnet.kernel.proxy_nat`);
nothing else crosses.  The front endpoint carries ``ALIAS`` as a DNS alias and
the service as an SRV record, so on ``source`` the alias resolves to the
proxy; on ``target`` no name changes: the back endpoint is not in DNS
(``dns=False``) and its name, ``NAME.proxy``, is none a user's endpoint can
have (:func:`back_leg_name`).

The backend set follows joins and leaves on this host (the controller calls
:meth:`Proxies.refresh`; a leaving backend is dropped *before* it is
unplugged) and remote peers (the overlay driver's peer listeners), and is
rebuilt by every reconcile.  Each change replaces the proxy's whole table in
one nftables transaction; established connections keep their conntrack NAT
(but UDP ones to a backend gone, also while the agent was down: :meth:`ProxyPlane.forget`).

Life cycle: the record is written first, marked ``creating`` by this instance,
then the sandbox, its legs and its table; the mark goes last.  A crash part way
leaves a marked record, which this instance's next reconcile rolls back
(``removing`` is rolled forward likewise).  A proxy lives on the host that made
it (``node``); only that host's agent programs it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, Protocol

from libnet.driverapi import ReconcileReport, RemotePeers
from libnet.drivers.bridge_model import host_ifname as bridge_host_ifname
from libnet.drivers.registry import Drivers
from libnet.errors import BadRequest, Conflict, InvalidOption, LibnetError, NameInUse, NotFound
from libnet.info import ep_info
from libnet.joins import Joins
from libnet.kernel.proxy_nat import Forward, ProxyTable
from libnet.model import Endpoint, Network, Proxy, Sandbox, is_proxy_mac
from libnet.repository import Repository
from libnet.rollback import Rollback
from libnet.validation import check_name

log = logging.getLogger("libnet.proxies")
PROTOCOLS = ("tcp", "udp")
#: the back leg is named NAME + this: no endpoint name (a DNS label) has a dot, so it never
#: takes a name from the backends' network, and ``endpoint ls`` shows whose it is
BACK_SUFFIX = ".proxy"


def back_leg_name(proxy_name: str) -> str:
    """The endpoint name of proxy ``proxy_name``'s leg on its target network."""
    return proxy_name + BACK_SUFFIX


class ProxyPlane(Protocol):
    """The kernel side of proxies (real: :class:`libnet.kernel.proxy_plane.KernelProxyPlane`)."""

    async def prepare(self, netns: str) -> None:
        """Set the proxy namespace's sysctls (forwarding, ARP) before its legs are plugged in."""
        ...

    async def apply(self, netns: str, table: ProxyTable) -> None:
        """Replace the proxy's nftables table in one transaction."""
        ...

    async def forget(self, netns: str, keep: Iterable[str]) -> int:
        """Drop the proxy's UDP conntrack entries NATed to an address not in ``keep`` (bare
        addresses: the current UDP backends), so a client's next datagram goes to a current
        backend; how many."""
        ...

    async def rules(self, netns: str) -> list[dict[str, Any]]:
        """The rules of the proxy's table (``chain``, ``expr``), for inspection."""
        ...

    async def untrack(self, ports: Sequence[str], macs: Sequence[str]) -> None:
        """Replace the host namespace's list of proxy legs whose bridged frames skip the
        host's conntrack: the host sides of their veths and their MACs (none: removed)."""
        ...


class ProxyOperations(Protocol):
    """The controller operations a proxy is built from."""

    async def create_sandbox(self, id: str | None = None, *, hostname: str | None = None) -> Sandbox: ...  # noqa: A002
    async def remove_sandbox(self, sandbox_id: str) -> None: ...
    async def create_proxy_leg(
        self,
        network: str,
        name: str,
        proxy: str,
        *,
        dns: bool,
        aliases: Iterable[str] = (),
        services: Iterable[str] = (),
        families: tuple[str, ...] = ("ipv4", "ipv6"),
    ) -> Endpoint: ...
    async def delete_proxy_leg(self, endpoint_id: str) -> None: ...


def parse_services(specs: Sequence[str], listen_port: int | None = None) -> list[dict[str, Any]]:
    """``["db:5432/tcp", "dns:53/udp"]`` -> service dicts (``alias``, ``port``,
    ``protocol``, ``listen``).  The protocol defaults to tcp; ``listen_port``
    (the port on the proxy's front address, default the service's port) needs
    exactly one service.  ``InvalidOption`` for anything else, e.g. the same
    listen port and protocol twice."""
    if isinstance(specs, str) or not isinstance(specs, (list, tuple)) or not specs:
        raise InvalidOption("a proxy needs at least one service ALIAS:PORT[/tcp|udp]", services=str(specs))
    if listen_port is not None:
        if isinstance(listen_port, bool) or not isinstance(listen_port, int) or not 0 < listen_port < 65536:
            raise InvalidOption(f"invalid listen port {listen_port!r}", listen_port=str(listen_port))
        if len(specs) != 1:
            raise InvalidOption(
                f"--listen-port (listen_port) needs exactly one service, not {len(specs)}: each service listens "
                "on its own port; make one proxy per service whose port clients must not use",
                services=list(map(str, specs)),
            )
    out: list[dict[str, Any]] = []
    seen: set[tuple[int, str]] = set()
    for spec in specs:
        alias, sep, rest = spec.partition(":") if isinstance(spec, str) else ("", "", "")
        port_text, slash, proto = rest.partition("/")
        proto = proto.lower() or ("" if slash else "tcp")  # "db:5432/": a protocol forgotten, not tcp
        valid = sep and port_text.isascii() and port_text.isdigit()
        if not valid or not 0 < int(port_text) < 65536 or proto not in PROTOCOLS:
            raise InvalidOption(f"invalid service {spec!r}: ALIAS:PORT[/tcp|udp], e.g. db:5432/tcp", service=str(spec))
        check_name(alias, "service alias")
        port = int(port_text)
        listen = listen_port or port
        if (listen, proto) in seen:
            raise InvalidOption(f"two services listen on {listen}/{proto}", service=spec)
        seen.add((listen, proto))
        out.append({"alias": alias.lower(), "port": port, "protocol": proto, "listen": listen})
    return out


def service_text(svc: dict[str, Any]) -> str:
    tail = f" (listen {svc['listen']})" if svc["listen"] != svc["port"] else ""
    return f"{svc['alias']}:{svc['port']}/{svc['protocol']}{tail}"


def _udp_backends(table: ProxyTable) -> set[str]:
    return {b for fw in table.forwards if fw.protocol == "udp" for b in fw.backends}


def _bare(cidr: str | None) -> str | None:
    return str(ipaddress.ip_interface(cidr).ip) if cidr else None


class Proxies:
    """This host's view of the proxies (see the module docstring).  ``dns_sync``
    publishes a sandbox's records (the controller's embedded DNS binding)."""

    def __init__(
        self,
        instance: str,
        node: str,
        repo: Repository,
        drivers: Drivers,
        joins: Joins,
        plane: ProxyPlane,
        ops: ProxyOperations,
        dns_sync: Callable[[str], Awaitable[None]],
    ) -> None:
        self.instance, self.node, self.repo, self.drivers, self.joins = instance, node, repo, drivers, joins
        self.plane, self.ops, self.dns_sync = plane, ops, dns_sync
        self._applied: dict[str, ProxyTable] = {}
        self._lock = asyncio.Lock()
        self._untrack_lock = asyncio.Lock()
        self._leaving: set[str] = set()  # endpoints being unplugged: no backends (see :meth:`leaving`)
        self._tasks: set[asyncio.Task[None]] = set()
        #: whether this host may have proxies (None: not known).  Only this host's controller makes
        #: them, so once a read found none, joins and leaves skip the store until a create or reconcile
        self._maybe_local: bool | None = None

    # --- create, list, delete -------------------------------------------------------

    async def create(
        self, name: str, source: str, target: str, services: Sequence[str], listen_port: int | None = None
    ) -> Proxy:
        """Make a proxy; every check comes before the first write, and a failure
        later undoes the done steps (see the module docstring)."""
        check_name(name, "proxy")
        parsed = parse_services(services, listen_port)
        src, dst = await self.repo.network(source), await self.repo.network(target)
        if src.id == dst.id:
            raise BadRequest("a proxy ties two different networks", network_id=src.id)
        for nw in (src, dst):
            if nw.removing:
                raise Conflict(f"network {nw.name} is being deleted", network_id=nw.id)
        named = {ep.name.lower(): ep for ep in await self.repo.endpoints(src.id)}
        for alias in sorted({svc["alias"] for svc in parsed} & set(named)):
            ep = named[alias]  # the alias would share its name: clients would reach either, in turn
            raise NameInUse(
                f"service alias {alias!r} is the name of endpoint {ep.id[:12]} on network {src.name}",
                name=alias,
                holder=ep.id,
                network_id=src.id,
            )
        scope = "global" if src.scope == dst.scope == "global" else "local"
        px = Proxy(
            secrets.token_hex(32),
            name,
            scope,
            src.id,
            dst.id,
            parsed,
            node=self.node,
            created=time.time(),
            instance=self.instance,
            creating=self.instance,
        )
        store = self.repo.store(scope)
        self._maybe_local = True
        async with Rollback() as undo:
            await self.repo.reserve_name(store, self.repo.proxy_name_key(name), px.id, "proxy", name, self.instance)
            undo.push(lambda: store.delete(self.repo.proxy_name_key(name)), "free proxy name")
            await self.repo.add_proxy(px)
            undo.push(lambda: self._teardown(px.id), "tear the proxy down")
            px = await self._build(px, src, dst)
            px = await self.repo.update_proxy(px, lambda p: setattr(p, "creating", ""))
        log.info(
            "proxy %s (%s): %s -> %s: %s", name, px.id[:12], src.name, dst.name, ", ".join(map(service_text, parsed))
        )
        return px

    async def _build(self, px: Proxy, src: Network, dst: Network) -> Proxy:
        """The sandbox, its two legs, the DNS records, the table; the caller undoes on failure."""
        sb = await self.ops.create_sandbox(px.id, hostname=px.name)
        await self.plane.prepare(sb.netns)
        # the front leg has only the families the backends' network has: an address the proxy
        # cannot forward from would be published (A/AAAA) and every connection to it refused
        families = tuple(f for f, pool in (("ipv4", dst.ipv4_pool), ("ipv6", dst.ipv6_pool)) if pool)
        front = await self.ops.create_proxy_leg(
            src.id,
            px.name,
            px.id,
            dns=True,
            families=families,
            aliases=sorted({s["alias"] for s in px.services} - {px.name.lower()}),
            services=[f"{s['alias']}:{s['listen']}/{s['protocol']}" for s in px.services],
        )
        px = await self.repo.update_proxy(px, lambda p: setattr(p, "front_endpoint", front.id))
        await self.joins.join(front.id, sb.id, overlap=True)
        back = await self.ops.create_proxy_leg(dst.id, back_leg_name(px.name), px.id, dns=False)  # no name on NET_B
        px = await self.repo.update_proxy(px, lambda p: setattr(p, "back_endpoint", back.id))
        await self.joins.join(back.id, sb.id, overlap=True)
        await self.dns_sync(sb.id)
        await self._apply(px, force=True)
        try:
            await self._untrack()
        except (LibnetError, OSError) as exc:  # e.g. a kernel without nftables' bridge family: the host tracks it
            log.warning("proxy %s: its frames keep the host's conntrack: %s", px.name, exc)
        return px

    async def _teardown(self, proxy_id: str) -> None:
        """Remove the sandbox (with its joined legs) and any leg left unjoined; gone is fine."""
        self._applied.pop(proxy_id, None)
        with suppress(NotFound):
            await self.ops.remove_sandbox(proxy_id)
        px = None
        with suppress(NotFound):
            px = await self.repo.proxy(proxy_id)
        if px is not None:
            await self._delete_legs(px)
            await self.repo.delete_proxy(px)
        try:
            await self._untrack()
        except (LibnetError, OSError) as exc:  # the legs are gone: a stale entry matches nothing; reconcile redoes it
            log.warning("proxy %s: host notrack list not updated: %s", proxy_id[:12], exc)

    async def _untrack(self) -> None:
        """The host's notrack list (:meth:`ProxyPlane.untrack`) made again from the store: the
        joined legs on bridge networks of this host's proxies -- the host side of each leg's
        veth and its MAC.  Legs on an overlay (their bridge is in the overlay's namespace)
        and legs made before proxy legs had MACs of their own (:func:`libnet.model.proxy_leg_mac`;
        a derived one may be another network's container's too) keep the host's conntrack."""
        async with self._untrack_lock:
            ports: list[str] = []
            macs: list[str] = []
            for px in await self.repo.proxies():
                if px.node != self.node or px.removing:
                    continue
                for eid in (px.front_endpoint, px.back_endpoint):
                    try:
                        ep = await self.repo.endpoint(eid) if eid else None
                        nw = await self.repo.network(ep.network_id) if ep is not None else None
                    except NotFound:
                        continue
                    if ep is None or nw is None or nw.driver != "bridge" or not ep.sandbox_id:
                        continue
                    if is_proxy_mac(ep.mac):
                        ports.append(bridge_host_ifname(ep_info(ep)))
                        macs.append(ep.mac)
            await self.plane.untrack(ports, macs)

    async def _legs(self, px: Proxy) -> list[str]:
        """The ids of ``px``'s legs: those its record names, and any endpoint of its two
        networks carrying its id in ``proxy`` -- a leg made just before a crash or a failed
        store write, which the record never got to name."""
        found = {eid for eid in (px.front_endpoint, px.back_endpoint) if eid}
        for network_id in (px.source, px.target):
            with suppress(NotFound):
                found |= {ep.id for ep in await self.repo.endpoints(network_id) if ep.proxy == px.id}
        return sorted(found)

    async def _delete_legs(self, px: Proxy) -> None:
        for eid in await self._legs(px):
            with suppress(NotFound):
                await self.ops.delete_proxy_leg(eid)

    async def all(self) -> list[Proxy]:
        return await self.repo.proxies()

    async def get(self, ref: str) -> Proxy:
        return await self.repo.proxy(ref)

    async def delete(self, ref: str) -> None:
        """Remove a proxy: marked first (a crash is rolled forward), then its sandbox,
        legs and record.  Only on its own host (``Conflict`` elsewhere)."""
        px = await self.repo.proxy(ref)
        if px.node != self.node:
            raise Conflict(f"proxy {px.name} runs on host {px.node}; remove it there", proxy_id=px.id, node=px.node)
        if px.removing != self.instance:
            px = await self.repo.update_proxy(px, lambda p: setattr(p, "removing", self.instance))
        await self._teardown(px.id)
        log.info("proxy %s (%s) removed", px.name, px.id[:12])

    async def forget_node(self, node: str) -> list[str]:
        """Drop the records of the proxies of a host that is gone for good (their
        legs went with its endpoints; their sandboxes with the host).  Their ids."""
        gone = []
        for px in await self.repo.proxies():
            if px.node == node and node != self.node:
                await self.repo.delete_proxy(px)
                gone.append(px.id)
                log.info("proxy %s (%s) of removed host %s forgotten", px.name, px.id[:12], node)
        return gone

    async def owns_sandbox(self, sandbox_id: str) -> Proxy | None:
        """The proxy whose sandbox this is, if any."""
        if self._maybe_local is False:
            return None
        try:
            px = await self.repo.proxy(sandbox_id)
        except NotFound:
            return None
        return px if px.id == sandbox_id else None

    async def owns_endpoint(self, ep: Endpoint) -> Proxy | None:
        """The proxy whose leg ``ep`` is, if any (by its ``proxy`` field, or as an endpoint
        joined to a proxy's sandbox: legs stored before the field existed)."""
        for ref in (ep.proxy, ep.sandbox_id):
            if ref:
                with suppress(NotFound):
                    px = await self.repo.proxy(ref)
                    if px.id == ref:
                        return px
        return None

    # --- backends and the table -----------------------------------------------------

    async def backends(self, px: Proxy) -> dict[str, list[str]]:
        """Per alias, the bare addresses (v4 and v6) of its current backends on the
        target network: this host's joined endpoints named or aliased so (but those
        :meth:`leaving`), and the remote ones of the driver's peer table."""
        nw = await self.repo.network(px.target)
        aliases = {s["alias"] for s in px.services}
        out: dict[str, list[str]] = {a: [] for a in aliases}

        def add(names: Iterable[str], addrs: Iterable[str | None]) -> None:
            for alias in aliases & {n.lower() for n in names}:
                out[alias] += [a for a in map(_bare, addrs) if a]

        endpoints = await self.repo.endpoints(nw.id)
        # no proxy's leg is a backend: a back leg has no name there, and a front leg (another
        # proxy's, named or aliased like the service) would make proxies both ways with one
        # alias forward to each other in a loop; remote ones too, by their records in the store
        legs = {ep.id for ep in endpoints if ep.proxy} | {px.back_endpoint}
        for ep in endpoints:
            if ep.node != self.node or not ep.sandbox_id or ep.leaving or ep.removing or ep.id in self._leaving:
                continue
            if ep.id not in legs and ep.dns:
                add([ep.name, *ep.aliases], [ep.ipv4, ep.ipv6])
        drv = self.drivers.driver(nw.driver)
        if isinstance(drv, RemotePeers):
            for peer in drv.remote_endpoints(nw.id):
                if peer.endpoint_id not in legs and peer.endpoint_id not in self._leaving:
                    add([peer.name, *peer.aliases], [peer.ipv4, peer.ipv6])
        return out

    async def table(self, px: Proxy) -> tuple[Sandbox, ProxyTable]:
        """The proxy's sandbox and the table it should have now."""
        sb = await self.repo.sandbox(px.id)
        front = await self.repo.endpoint(px.front_endpoint)
        back = await self.repo.endpoint(px.back_endpoint)
        if front.sandbox_id != sb.id or back.sandbox_id != sb.id or not front.ifname or not back.ifname:
            raise NotFound(f"proxy {px.name}: a leg is not plugged in", proxy_id=px.id)
        found = await self.backends(px)
        src, dst = await self.repo.network(px.source), await self.repo.network(px.target)
        forwards = tuple(
            Forward(s["listen"], s["protocol"], s["port"], tuple(found.get(s["alias"], ())), s["alias"])
            for s in px.services
        )
        return sb, ProxyTable(
            front.ifname,
            back.ifname,
            _bare(front.ipv4),
            _bare(front.ipv6),
            _bare(back.ipv4),
            _bare(back.ipv6),
            forwards,
            tuple(n for n in (src.ipv4_subnet, src.ipv6_subnet) if n),
            tuple(n for n in (dst.ipv4_subnet, dst.ipv6_subnet) if n),
        )

    async def _apply(self, px: Proxy, *, force: bool = False) -> bool:
        """Program the table if it changed (or ``force``); True if it was written."""
        async with self._lock:
            sb, table = await self.table(px)
            before = self._applied.get(px.id)
            if not force and before == table:
                return False
            await self.plane.apply(sb.netns, table)
            self._applied[px.id] = table
            now = _udp_backends(table)
            # one dropped out, or the first table since this agent started (one may have gone
            # meanwhile); after the new table: a datagram meanwhile makes its entry to a current one
            if any(fw.protocol == "udp" for fw in table.forwards) and (before is None or _udp_backends(before) - now):
                await self.plane.forget(sb.netns, now)
            return True

    async def refresh(self, network_id: str | None = None) -> None:
        """Follow a change of ``network_id``'s endpoints (every network: None):
        reprogram this host's ready proxies whose backends are there.  Failures are
        logged, never raised: the caller's join or leave went through."""
        if self._maybe_local is False:
            return  # none here: no store read on every join and leave
        try:
            proxies = await self.repo.proxies()
        except LibnetError as exc:
            log.warning("proxies not refreshed: %s", exc)
            return
        if any(px.node == self.node for px in proxies):
            self._maybe_local = True
        elif self._maybe_local is None:  # not True: a create that began meanwhile set it
            self._maybe_local = False
        for px in proxies:
            if px.node != self.node or px.creating or px.removing:
                continue
            if network_id is not None and network_id != px.target:
                continue
            try:
                await self._apply(px)
            except (LibnetError, OSError) as exc:
                log.warning("proxy %s: backends not updated: %s", px.name, exc)

    @asynccontextmanager
    async def leaving(self, network_id: str, endpoint_id: str) -> AsyncIterator[None]:
        """Around the unplugging of endpoint ``endpoint_id`` of ``network_id``: it stops being a
        backend first, and stays out for every refresh meanwhile -- one for a join or a remote
        peer, reading the store where it is still joined, would put it back, to stay after it
        is gone.  Afterwards the tables follow the store again (still joined if the leave failed)."""
        self._leaving.add(endpoint_id)
        try:
            await self.refresh(network_id)
            yield
        finally:
            self._leaving.discard(endpoint_id)
            await self.refresh(network_id)

    def peers_changed(self, network_id: str) -> None:
        """A peer listener (:class:`libnet.driverapi.RemotePeers`): remote endpoints of
        ``network_id`` changed; refreshed on the running loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a driver's synchronous test): the next reconcile catches up
        task = loop.create_task(self.refresh(network_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Cancel refreshes still queued by peer listeners (the controller is closing)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with suppress(asyncio.CancelledError):
                await task

    async def inspect(self, ref: str) -> dict[str, Any]:
        """The proxy's record, its legs' addresses and (on its host) its current backends."""
        px = await self.repo.proxy(ref)
        out: dict[str, Any] = {**px.to_data(), "front": None, "back": None}
        for key, eid in (("front", px.front_endpoint), ("back", px.back_endpoint)):
            with suppress(NotFound):
                ep = await self.repo.endpoint(eid) if eid else None
                out[key] = None if ep is None else {"endpoint": ep.id, "ipv4": ep.ipv4, "ipv6": ep.ipv6}
        if px.node == self.node and not px.creating:
            out["backends"] = await self.backends(px)
        return out

    # --- reconcile ------------------------------------------------------------------

    async def reconcile(self, report: ReconcileReport) -> None:
        """This instance's unfinished creates are rolled back, removes rolled forward;
        this host's proxies get their table again (whole, in one transaction), and
        one whose sandbox or legs are gone is built again."""
        self._maybe_local = None  # the store may have been replaced (adopt, purge): read it again
        for px in await self.repo.proxies():
            try:
                await self._reconcile_one(px, report)
            except (LibnetError, OSError) as exc:
                report.missing.append(f"proxy {px.name} ({px.id[:12]}): not repaired: {exc}")
        try:
            await self._untrack()
        except (LibnetError, OSError) as exc:
            report.missing.append(f"proxies: host notrack list not written: {exc}")

    async def _reconcile_one(self, px: Proxy, report: ReconcileReport) -> None:
        if px.creating == self.instance:
            await self._teardown(px.id)
            with suppress(NotFound):
                await self.repo.store(px.scope).delete(self.repo.proxy_name_key(px.name))
            report.repaired.append(f"rolled back the unfinished proxy {px.name} ({px.id[:12]})")
            return
        if px.removing == self.instance:
            await self._teardown(px.id)
            report.repaired.append(f"finished removing proxy {px.name} ({px.id[:12]})")
            return
        if px.node != self.node or px.creating or px.removing:
            return
        try:
            await self._apply(px, force=True)
            return
        except NotFound as exc:
            report.missing.append(f"proxy {px.name} ({px.id[:12]}): {exc}; building it again")
        await self._rebuild(px)
        report.repaired.append(f"proxy {px.name} ({px.id[:12]}) built again")

    async def _rebuild(self, px: Proxy) -> None:
        """Tear the remains down and build the proxy again under the same id and name."""
        self._applied.pop(px.id, None)
        with suppress(NotFound):
            await self.ops.remove_sandbox(px.id)
        await self._delete_legs(px)

        def cleared(p: Proxy) -> None:
            p.front_endpoint, p.back_endpoint = "", ""

        px = await self.repo.update_proxy(px, cleared)
        src, dst = await self.repo.network(px.source), await self.repo.network(px.target)
        await self._build(px, src, dst)
