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
out of the way, and lets a reaper thread delete the group in one request.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import re
import socket
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from libnet import ownership
from libnet.driverapi import Capabilities, EndpointInfo, NetworkInfo, ReconcileReport, SandboxInfo
from libnet.drivers.relay import Relays, Target
from libnet.errors import BadRequest, Conflict, InvalidOption, KernelObjectExists, LibnetError, NoSuchLink, NotFound
from libnet.kernel import netns, rtnl, sysctl
from libnet.kernel.firewall import (
    Firewall,
    internal_rules,
    isolation_rules,
    localhost_rules,
    masquerade_rule,
    port_rules,
)
from libnet.kernel.netlink import IFNAMSIZ, Link, Netlink
from libnet.ownership import Mark
from libnet.rollback import Rollback
from libnet.validation import check_int

T = TypeVar("T")
log = logging.getLogger("libnet.drivers.bridge")
_NETLINK = (socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)

#: names of libnet's links: a link named so without this instance's mark is reported as foreign
BRIDGE_PREFIX, VETH_PREFIX = "lnb-", "lnv"
#: the marks of libnet before instances; re-marked by reconcile when they match a stored object
LEGACY_NET, LEGACY_EP = "libnet:net:", "libnet:ep:"
DEFAULT_MTU = 1500
_IFNAME = re.compile(rf"[A-Za-z0-9_.@+-]{{1,{IFNAMSIZ}}}")
#: the names bridge_name() and host_ifname() derive; a bridge_name option may not take one
_DERIVED = re.compile(
    rf"{BRIDGE_PREFIX}[0-9a-f]{{{IFNAMSIZ - len(BRIDGE_PREFIX)}}}"
    rf"|{VETH_PREFIX}[0-9a-f]{{{IFNAMSIZ - len(VETH_PREFIX)}}}"
)
Rules = list[tuple[str, list[dict[str, Any]]]]

#: option name -> (canonical name); Docker's names are accepted too
_ALIASES = {
    "bridge_name": "bridge_name",
    "com.docker.network.bridge.name": "bridge_name",
    "mtu": "mtu",
    "com.docker.network.driver.mtu": "mtu",
    "icc": "icc",
    "com.docker.network.bridge.enable_icc": "icc",
}


def bridge_name(nw: NetworkInfo) -> str:
    """The bridge of a network."""
    return nw.options.get("bridge_name") or BRIDGE_PREFIX + nw.id[: IFNAMSIZ - len(BRIDGE_PREFIX)]


def host_ifname(ep: EndpointInfo) -> str:
    """The host side of an endpoint's veth."""
    return VETH_PREFIX + ep.id[: IFNAMSIZ - len(VETH_PREFIX)]


def link_mark(instance: str, kind: str, owner: str, name: str) -> str:
    """The mark of a link (the owner's name left out when it cannot be part of one)."""
    return ownership.mark(instance, kind, owner, name if ":" not in name and len(name) <= 63 else "")


def describe(link: Link) -> str:
    """What a link is, as far as its mark tells (for messages)."""
    m = Mark.parse(link.alias)
    what = f"{link.kind or 'interface'} {link.name}"
    if m is None:
        alias = link.alias if not link.alias or len(link.alias) <= 40 else link.alias[:37] + "..."
        return f"{what} (alias {alias!r}, no libnet mark)" if alias else f"{what} (not libnet's)"
    owner = f"{m.name} ({m.owner[:12]})" if m.name else m.owner[:12]
    kind = "network" if m.kind == "net" else "endpoint"
    return f"{what} (of libnet {kind} {owner}, instance {m.instance})"


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise InvalidOption(f"option {name!r} must be true or false", option=name, value=str(value))


class BridgeDriver:
    """See the module docstring."""

    name = "bridge"

    def __init__(
        self, host_ns: str | None = None, default_mtu: int | None = None, instance: str | None = None, **_: Any
    ) -> None:
        self.host_ns = host_ns
        self.default_mtu = default_mtu
        self.instance = instance
        self._nl: Netlink | None = None
        self._fw: Firewall | None = None
        self._mtus: dict[str, int] = {}  # bridge -> MTU, read once
        self._reaper_nl: Netlink | None = None
        self._reap_queued = False
        self._relays = Relays(host_ns)  # [::1] published ports (libnet.drivers.relay)

    def capabilities(self) -> Capabilities:
        return Capabilities(scope="local")

    def parse_network_options(self, options: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"bridge_name": None, "mtu": None, "icc": True}
        for key, value in options.items():
            canon = _ALIASES.get(key)
            if canon is None:
                raise InvalidOption(f"unknown bridge option {key!r}; known: bridge_name, mtu, icc", option=key)
            if canon == "bridge_name":
                if not isinstance(value, str) or not _IFNAME.fullmatch(value) or value in (".", ".."):
                    raise InvalidOption(
                        f"bridge_name must be an interface name of 1-{IFNAMSIZ} ASCII letters, digits and -_.@+ "
                        "(the kernel's rules: no '/', ':' or spaces)",
                        option=key,
                        value=str(value),
                    )
                if _DERIVED.fullmatch(value):
                    raise InvalidOption(
                        f"bridge_name {value!r} has the shape of libnet's own link names (lnb- + 11 hex digits, "
                        "lnv + 12 hex digits): another network's bridge or an endpoint's veth would collide with it",
                        option=key,
                        value=value,
                    )
                out["bridge_name"] = value
            elif canon == "mtu":
                out["mtu"] = check_int(value, "mtu", 1280, 65535, " (IPv6 needs at least 1280)")
            else:
                out["icc"] = _bool(key, value)
        return out

    # --- plumbing -------------------------------------------------------------

    @property
    def owner(self) -> str:
        """This instance's id; the kernel is never touched without it."""
        if self.instance is None:
            raise BadRequest("the bridge driver needs the libnet instance id (instance=...) to mark what it makes")
        return self.instance

    @property
    def nl(self) -> Netlink:
        if self._nl is None:
            self.owner  # noqa: B018 -- raises without an instance
            self._nl = Netlink(self.host_ns)
        return self._nl

    @property
    def reaper(self) -> Netlink:
        """A second host-namespace handle whose thread does the slow veth deletions."""
        if self._reaper_nl is None:
            self.owner  # noqa: B018
            self._reaper_nl = Netlink(self.host_ns)
        return self._reaper_nl

    @property
    def fw(self) -> Firewall:
        if self._fw is None:
            self._fw = Firewall(self.host_ns, table=ownership.firewall_table(self.owner))
        return self._fw

    async def _host(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the host namespace's thread (netlink calls inside run inline)."""
        return await asyncio.wrap_future(self.nl.submit(fn))

    async def _firewall(self, fn: Callable[[Firewall], T]) -> T:
        return await asyncio.to_thread(fn, self.fw)

    async def close(self) -> None:
        await self._relays.close()
        for handle in (self._nl, self._reaper_nl, self._fw):
            if handle is not None:
                await asyncio.to_thread(handle.close)  # closing waits for queued deletions
        self._nl = self._reaper_nl = self._fw = None

    def _mtu(self, nw: NetworkInfo) -> int:
        return nw.options.get("mtu") or self.default_mtu or self.nl.uplink_mtu() or DEFAULT_MTU

    def _find(self, name: str | int) -> Link | None:
        """The link called (or numbered) ``name``, or None; on the host thread."""
        try:
            return self.nl.link(name)
        except NotFound:  # NoSuchLink, or gone meanwhile
            return None

    def _delete_own(self, link: str | int, kind: str, owner: str) -> bool:
        """Delete ``link`` if it is marked as this instance's ``kind`` of ``owner``; on the host thread."""
        found = self._find(link)
        if found is None or not ownership.owned_by(found.alias, self.owner, kind, owner):
            return False
        self.nl.delete_link(found.index)
        return True

    # --- networks -------------------------------------------------------------

    def _check_bridge(self, br: str, nw: NetworkInfo) -> Link | None:
        """This network's bridge if it exists (to adopt), None if the name is
        free; ``Conflict`` naming the holder otherwise.  Changes nothing."""
        link = self._find(br)
        if link is None:
            return None
        if link.kind == "bridge" and ownership.owned_by(link.alias, self.owner, "net", nw.id):
            return link
        m = Mark.parse(link.alias)
        ids: dict[str, Any] = {"ifname": br, "network_id": nw.id}
        if m is not None and m.kind == "net":
            ids["owner_network_id"] = m.owner
            if m.name:
                ids["owner_network"] = m.name
        raise Conflict(
            f"interface {br} exists and is not the bridge of network {nw.name}: it is {describe(link)}; "
            "choose another bridge_name",
            **ids,
        )

    def _net_rules(self, nw: NetworkInfo, br: str) -> list[tuple[str, Rules]]:
        """The network's rule groups: (key, rules)."""
        groups = [(f"net:{nw.id}:isolate", isolation_rules(br))]
        if nw.internal:
            groups.append((f"net:{nw.id}:internal", internal_rules(br)))
        else:
            subnets = [s for s in (nw.ipv4_subnet, nw.ipv6_subnet) if s]
            groups.append((f"net:{nw.id}:masq", [masquerade_rule(s, br) for s in subnets]))
            if nw.ipv4_subnet:
                groups.append((f"net:{nw.id}:localhost", localhost_rules(br)))
        return groups

    def _route_localnet(self, nw: NetworkInfo, br: str) -> bool:
        """Let the bridge carry 127.0.0.1-sourced traffic (ports published on
        IPv4 localhost), as Docker does on its bridges: ``route_localnet``
        (kernel ip-sysctl: "Do not consider loopback addresses as martian
        source or destination while routing"), on this bridge only.  The
        ``localhost`` rule group masquerades those packets and keeps containers
        out of the host's 127.0.0.0/8.  True if it had to be set; on any thread."""
        if nw.internal or not nw.ipv4_subnet:
            return False
        key = ("net", "ipv4", "conf", br, "route_localnet")
        if sysctl.get(self.host_ns, key) == "1":
            return False
        sysctl.set(self.host_ns, key, 1)
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
                undo.push(lambda: self._host(lambda: self._delete_own(index, "net", nw.id)), f"delete bridge {br}")
            else:
                index = link.index
            have = set(await self._host(lambda: self.nl.addresses(index)))
            for gw in (nw.ipv4_gateway, nw.ipv6_gateway):
                if gw and gw not in have:
                    await self._host(lambda g=gw: self.nl.add_address(index, g, nodad=True))
                    undo.push(lambda g=gw: self._host(lambda: self.nl.delete_address(index, g)), f"remove {gw}")
            if link is None or not link.up:
                await self._host(lambda: self.nl.set_up(index))
                if link is not None:
                    undo.push(lambda: self._host(lambda: self.nl.set_down(index)), f"bring {br} down")
            await netns.run_in_async(self.host_ns, sysctl.set_forwarding, None, True)
            await asyncio.to_thread(self._route_localnet, nw, br)  # the bridge's own setting: goes with it
            if await self._firewall(lambda fw: fw.add_bridge(br)):
                undo.push(lambda: self._firewall(lambda fw: fw.remove_bridge(br)), f"take {br} out of the set")
            for key, rules in self._net_rules(nw, br):
                await self._firewall(lambda fw, k=key, r=rules: fw.add(k, r))
                undo.push(lambda k=key: self._firewall(lambda fw: fw.remove(k)), f"remove rules {key}")

    async def delete_network(self, nw: NetworkInfo) -> None:
        br = bridge_name(nw)

        def unbuild() -> Link | None:
            """The link holding the name if it is not this network's bridge; else deletes that bridge."""
            link = self._find(br)
            if link is None or not ownership.owned_by(link.alias, self.owner, "net", nw.id):
                return link
            self.nl.delete_link(link.index)
            return None

        other = await self._host(unbuild)
        self._mtus.pop(br, None)
        if other is not None:
            log.warning("network %s: %s is not its bridge: left alone", nw.name, describe(other))

        def remove(fw: Firewall) -> None:
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
        # its veth, if a crash left one plugged in (a join that never reached the
        # store): out of service now, deleted with the next reaping.  After a
        # normal leave this finds it unplugged already and changes nothing.
        group = ownership.dead_group(self.owner)
        if await self._host(lambda: self.nl.unplug(host_ifname(ep), group=group, owned=self._owns_veth(ep))):
            self._schedule_reaping()

    async def join(self, nw: NetworkInfo, ep: EndpointInfo, sb: SandboxInfo) -> None:
        br, host_if = bridge_name(nw), host_ifname(ep)
        mark = link_mark(self.owner, "ep", ep.id, ep.name)

        def plug() -> int:
            nl = self.nl
            mtu = self._mtus.get(br) or nl.link(br).mtu
            self._mtus[br] = mtu
            try:
                index = nl.plug_veth(host_if, sb.ifname, sb.netns, br, mtu=mtu, peer_mac=ep.mac, alias=mark)
            except KernelObjectExists:
                raise Conflict(
                    f"{host_if} or {sb.ifname} in the sandbox exists already", ifname=host_if, sandbox_id=sb.id
                ) from None
            try:
                nl.set_hairpin(index)  # a container reaching itself via its published port (br_netfilter)
                if not nw.options.get("icc", True):
                    nl.set_port_isolated(index)
            except BaseException:
                nl.delete_link(index)  # made just now, by this call
                raise
            return index

        index = await self._host(plug)
        try:
            sock = await asyncio.wrap_future(netns.open_socket_future(sb.netns, *_NETLINK))
            with rtnl.RtnlSocket(sock) as r:
                _configure_sandbox(r, nw, ep, sb, alias=mark)
        except BaseException:
            await self._host(lambda: self._delete_own(index, "ep", ep.id))
            raise

    async def leave(self, nw: NetworkInfo, ep: EndpointInfo, sb: SandboxInfo) -> None:
        host_if = host_ifname(ep)
        # Deleting a veth costs the kernel an RCU grace period (15-25 ms).  So:
        # free the sandbox's interface name now (down + renamed, so a new join
        # can take ethN again at once), unplug the host side now (down, out of
        # the bridge, into the "dead" link group), and let the reaper delete
        # the whole group in one request later -- one grace period for many.
        if sb.netns:
            with contextlib.suppress(LibnetError, OSError):
                sock = await asyncio.wrap_future(netns.open_socket_future(sb.netns, *_NETLINK))
                with rtnl.RtnlSocket(sock) as r:
                    index = r.link_index(sb.ifname)
                    if index is not None:
                        msg = rtnl.setlink_body(index, up=False, name="lnx" + ep.id[: IFNAMSIZ - 3])
                        r.request([(rtnl.RTM_NEWLINK, 0, msg, "retire interface")], ignore=frozenset({19}))
        group = ownership.dead_group(self.owner)
        if await self._host(lambda: self.nl.unplug(host_if, group=group, owned=self._owns_veth(ep))):
            self._schedule_reaping()

    def _owns_veth(self, ep: EndpointInfo) -> Callable[[str | None], bool]:
        def owned(alias: str | None) -> bool:
            return ownership.owned_by(alias, self.owner, "ep", ep.id) or alias == LEGACY_EP + ep.id

        return owned

    def _schedule_reaping(self) -> None:
        if self._reap_queued:
            return  # the queued pass will take this one too
        self._reap_queued = True
        group = ownership.dead_group(self.owner)

        def reap() -> None:
            self._reap_queued = False  # unplugged from now on: another pass
            self.reaper.delete_group(group)

        self.reaper.submit(reap).add_done_callback(_log_failure("delete unplugged veths"))

    async def set_gateway(self, nw: NetworkInfo, ep: EndpointInfo, sb: SandboxInfo, gateway: bool) -> None:
        sock = await asyncio.wrap_future(netns.open_socket_future(sb.netns, *_NETLINK))
        with rtnl.RtnlSocket(sock) as r:
            index = r.link_index(sb.ifname)
            if index is None:
                raise NoSuchLink("the endpoint's interface is not in the sandbox", ifname=sb.ifname, sandbox_id=sb.id)
            reqs = _route_requests(nw, index, add=gateway and not nw.internal)
            r.request(reqs, ignore=frozenset({errno.ESRCH, errno.ENOENT}))

    async def program_external_connectivity(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        if not ep.ports:
            return
        if nw.internal:
            raise BadRequest("internal networks cannot publish ports", network_id=nw.id, endpoint_id=ep.id)
        rules = _port_rules(nw, ep)
        await self._firewall(lambda fw: fw.add(f"ep:{ep.id}:ports", rules))
        try:
            await self._relays.start(ep.id, _relay_targets(ep))
        except BaseException:
            await self._firewall(lambda fw: fw.remove(f"ep:{ep.id}:ports"))
            raise

    async def revoke_external_connectivity(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        if ep.ports:  # no ports, no rules: spare the nftables round trip
            await self._relays.stop(ep.id)
            await self._firewall(lambda fw: fw.remove(f"ep:{ep.id}:ports"))

    # --- reconcile ------------------------------------------------------------

    async def reconcile(
        self, networks: list[NetworkInfo], endpoints: list[tuple[EndpointInfo, SandboxInfo | None]]
    ) -> ReconcileReport:
        report = ReconcileReport()
        me = self.owner
        nets = {nw.id: nw for nw in networks}
        joined = {ep.id: ep for ep, sb in endpoints if sb is not None}
        recorded = {ep.id for ep, _ in endpoints}
        legacy = {LEGACY_NET + nw.id: ("net", nw.id, nw.name, bridge_name(nw)) for nw in networks}
        legacy |= {LEGACY_EP + ep.id: ("ep", ep.id, ep.name, host_ifname(ep)) for ep in joined.values()}

        def sweep() -> tuple[list[str], list[str], dict[str, str], dict[str, Link]]:
            """Links: re-mark legacy ones, report foreign ones, delete this instance's orphans."""
            removed, repaired, foreign = [], [], {}
            links = self.nl.links()
            ports = Counter(link.master for link in links if link.master)
            for link in links:
                m = Mark.parse(link.alias)
                old = legacy.get(link.alias or "")
                if m is None and old is not None and old[3] == link.name:
                    self.nl.set_alias(link.index, link_mark(me, *old[:3]))
                    repaired.append(f"{describe(link)}: re-marked as this instance's")
                elif m is None:
                    if link.name.startswith((BRIDGE_PREFIX, VETH_PREFIX)) or (link.alias or "").startswith("libnet:"):
                        foreign[link.name] = f"{describe(link)}: named like libnet's, no mark of this instance"
                elif m.instance != me:
                    foreign[link.name] = f"{describe(link)}: another libnet instance's"
                elif not _orphan(link, m, nets, joined):
                    continue
                elif not _unused(link, m, ports, recorded):
                    kept_ids.add(m.owner)
                    if m.kind == "net":
                        kept_bridges.add(link.name)
                    kept.append(
                        f"{describe(link)}: the store does not know its {'network' if m.kind == 'net' else 'endpoint'}"
                        " but containers use it; kept (a lost store record? libnet-agent --adopt rebuilds it)"
                    )
                elif self._delete_own(link.index, m.kind, m.owner):
                    removed.append(
                        f"{describe(link)}: of no stored {'network' if m.kind == 'net' else 'joined endpoint'}"
                    )
            return removed, repaired, foreign, {link.name: link for link in self.nl.links()}

        kept: list[str] = []
        kept_ids: set[str] = set()  # networks/endpoints the store lost whose links are kept: so are their rules
        kept_bridges: set[str] = set()
        report.removed, report.repaired, foreign, by_name = await self._host(sweep)
        report.missing += kept
        report.kept += sorted(kept_ids)
        report.foreign = list(foreign.values())
        own: dict[str, NetworkInfo] = {}  # bridge -> network, for the bridges that are there and ours
        for nw in networks:
            br, link = bridge_name(nw), by_name.get(bridge_name(nw))
            if link is None:
                report.missing.append(f"network {nw.name} ({nw.id[:12]}): bridge {br} is missing")
            elif not ownership.owned_by(link.alias, me, "net", nw.id):
                if br not in foreign:
                    report.foreign.append(f"network {nw.name} ({nw.id[:12]}): {describe(link)} is not its bridge")
            else:
                own[br] = nw
        for ep in joined.values():
            link = by_name.get(host_ifname(ep))
            if link is None:
                report.missing.append(f"endpoint {ep.name} ({ep.id[:12]}): veth {host_ifname(ep)} is missing")
            elif not ownership.owned_by(link.alias, me, "ep", ep.id) and link.name not in foreign:
                report.foreign.append(f"endpoint {ep.name} ({ep.id[:12]}): {describe(link)} is not its veth")
        known = set(nets) | {ep.id for ep, _ in endpoints} | kept_ids
        names = {bridge_name(nw) for nw in networks} | kept_bridges
        want = [(key, rules) for br, nw in own.items() for key, rules in self._net_rules(nw, br)]
        want += [
            (f"ep:{ep.id}:ports", _port_rules(nets[ep.network_id], ep))
            for ep in joined.values()
            if ep.ports and ep.network_id in nets and not nets[ep.network_id].internal
        ]

        def fix(fw: Firewall) -> tuple[list[str], list[str]]:
            removed, repaired = [], []
            count = Counter(rule["key"] for rule in fw.rules())
            for key in sorted(count):
                kind, _, rest = key.partition(":")
                if kind in ("net", "ep") and rest.split(":", 1)[0] not in known:
                    fw.remove(key)
                    removed.append(f"firewall rules {key}")
            present = fw.bridges()
            for br in sorted(present - names):
                fw.remove_bridge(br)
                removed.append(f"bridge {br} in the isolation set")
            for br in sorted(set(own) - present):
                fw.add_bridge(br)
                repaired.append(f"bridge {br} back in the isolation set")
            for key, rules in want:
                if count.get(key, 0) != len(rules):
                    fw.add(key, rules)
                    repaired.append(f"firewall rules {key}")
            return removed, repaired

        removed, repaired = await self._firewall(fix)
        report.removed += removed
        report.repaired += repaired
        report.repaired += await self._repair_local_paths(own, joined, by_name)
        return report

    async def _repair_local_paths(
        self, own: dict[str, NetworkInfo], joined: dict[str, EndpointInfo], by_name: dict[str, Link]
    ) -> list[str]:
        """``route_localnet`` on this instance's bridges, hairpin mode on its
        endpoints' ports, and the ``[::1]`` relays of joined endpoints."""
        repaired = []
        for br, nw in own.items():
            if await asyncio.to_thread(self._route_localnet, nw, br):
                repaired.append(f"bridge {br}: route_localnet back on")
        mine = [
            host_ifname(ep)
            for ep in joined.values()
            if host_ifname(ep) in by_name
            and ownership.owned_by(by_name[host_ifname(ep)].alias, self.owner, "ep", ep.id)
        ]

        def hairpin() -> list[str]:
            ports = self.nl.hairpin_ports()
            off = [name for name in mine if ports.get(name) is False]
            for name in off:
                self.nl.set_hairpin(name)
            return [f"veth {name}: hairpin mode back on" for name in off]

        repaired += await self._host(hairpin)
        nets = {nw.id for nw in own.values() if not nw.internal}
        relayed = {ep.id: _relay_targets(ep) for ep in joined.values() if ep.network_id in nets}
        for key in self._relays.keys() - set(relayed):
            await self._relays.stop(key)
        for key, targets in relayed.items():
            if self._relays.targets(key) != set(targets):
                try:
                    await self._relays.start(key, targets)
                except LibnetError as exc:
                    log.warning("endpoint %s: [::1] published ports: %s", key[:12], exc)
                    continue
                repaired.append(f"endpoint {key[:12]}: relays of ports published on [::1] started")
        return repaired


def _orphan(link: Link, m: Mark, nets: dict[str, NetworkInfo], joined: dict[str, EndpointInfo]) -> bool:
    """Whether a link marked by this instance belongs to no stored network / joined endpoint of this driver.

    Only the driver's own kinds of link count: a bridge marked ``net``, an
    ``lnv`` veth marked ``ep`` (another driver's marked devices are its own)."""
    if m.kind == "net":
        return link.kind == "bridge" and m.owner not in nets
    return link.kind == "veth" and link.name.startswith(VETH_PREFIX) and m.owner not in joined


def _unused(link: Link, m: Mark, ports: Counter, recorded: set[str]) -> bool:
    """Whether an orphaned link of this instance may go: nothing depends on it.

    The store may have lost a record (a lost SQLite -wal, an older backup, a
    deleted key): "the store does not know it" alone is no proof.  A bridge
    goes only without ports; a veth only if the store still holds its
    endpoint, unjoined (a join cut short), or it is already unplugged (a
    leave cut short before its deletion)."""
    if m.kind == "net":
        return not ports.get(link.index)
    return m.owner in recorded or (link.master is None and not link.up)


def _port_rules(nw: NetworkInfo, ep: EndpointInfo) -> Rules:
    """DNAT rules publishing the endpoint's ports (both address families)."""
    br = bridge_name(nw)
    rules: Rules = []
    for pm in ep.ports:
        for cidr in (ep.ipv4, ep.ipv6):
            if not cidr:
                continue
            ip = str(ipaddress.ip_interface(cidr).ip)
            if pm.host_ip and ipaddress.ip_address(pm.host_ip).version != ipaddress.ip_address(ip).version:
                continue
            rules += port_rules(pm.host_port, ip, pm.container_port, pm.protocol, br, pm.host_ip)
    return rules


#: host IPs whose mappings include ``[::1]``: loopback itself and "every IPv6 address"
RELAYED_HOST_IPS = frozenset({"::1", "::"})


def _relay_targets(ep: EndpointInfo) -> list[Target]:
    """The endpoint's ports published on IPv6 loopback (host IP ``::1`` or
    none), served by relays: the kernel cannot route replies to ``::1``."""
    if not ep.ipv6:
        return []
    ip = str(ipaddress.ip_interface(ep.ipv6).ip)
    return [
        Target(pm.protocol, pm.host_port, ip, pm.container_port)
        for pm in ep.ports
        if pm.host_port and (not pm.host_ip or pm.host_ip in RELAYED_HOST_IPS)
    ]


def _configure_sandbox(
    r: rtnl.RtnlSocket, nw: NetworkInfo, ep: EndpointInfo, sb: SandboxInfo, alias: str | None = None
) -> None:
    """Inside the sandbox, in one batch: lo up, addresses (DAD off), up (and the
    ``alias``, the endpoint's mark, when given), default routes."""
    index = r.link_index(sb.ifname)
    if index is None:
        raise NoSuchLink("the new interface is not in the sandbox", ifname=sb.ifname, sandbox_id=sb.id)
    reqs = [(rtnl.RTM_NEWLINK, 0, rtnl.setlink_body(1, up=True), "bring lo up")]
    for cidr in (ep.ipv4, ep.ipv6):
        if cidr:
            reqs.append(
                (
                    rtnl.RTM_NEWADDR,
                    rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE,
                    rtnl.addr_body(index, cidr, nodad=True),
                    f"add address {cidr}",
                )
            )
    reqs.append((rtnl.RTM_NEWLINK, 0, rtnl.setlink_body(index, up=True, alias=alias), f"bring {sb.ifname} up"))
    if sb.gateway and not nw.internal:
        reqs += _route_requests(nw, index, add=True)
    r.request(reqs)


def _route_requests(nw: NetworkInfo, index: int, add: bool) -> list[tuple[int, int, bytes, str]]:
    reqs = []
    for gw in (nw.ipv4_gateway, nw.ipv6_gateway):
        if gw:
            via = str(ipaddress.ip_interface(gw).ip)
            if add:
                reqs.append(
                    (
                        rtnl.RTM_NEWROUTE,
                        rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE,
                        rtnl.default_route_body(via, index),
                        f"default route via {via}",
                    )
                )
            else:
                reqs.append((rtnl.RTM_DELROUTE, 0, rtnl.default_route_body(via, index), f"delete route via {via}"))
    return reqs


def _log_failure(what: str) -> Callable[[Any], None]:
    def done(fut: Any) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            log.warning("%s failed: %s", what, fut.exception())

    return done
