"""The ``bridge`` driver: one Linux bridge per network on this host.

Per network: a bridge (``bridge_name`` option, else ``lnb-`` + id) holding the
IPv4 and IPv6 gateway addresses, marked with the alias ``libnet:net:<id>``;
nftables rules in libnet's table: masquerade of the subnets leaving through
any other device (not on internal networks), isolation from every other
libnet bridge, and for internal networks a drop of all forwarding in and out.
``icc=false`` isolates the bridge ports from each other (kernel bridge port
isolation), so containers reach only the gateway.

Per endpoint, at join: a veth whose host side (``lnv`` + id, alias
``libnet:ep:<id>``) is a port of the bridge and whose other side is created
directly inside the sandbox namespace under its final name (``eth0``...):
creating it in place costs a fraction of creating and moving it.  Inside the
sandbox: the MAC, IPv4 and IPv6 (DAD off, so it is usable at once) addresses
and the default routes via the gateways.  Published ports are DNAT rules.

A join is two batched kernel requests (:mod:`libnet.kernel.rtnl`): the veth,
up and enslaved, in one request on the host namespace's thread; addresses,
link state and routes in one batch on a socket opened inside the sandbox.
Host-side veths are named ``lnv`` + the endpoint id's first 12 hex digits,
which is how reconcile tells libnet's veths (and their owners) apart.  On
failure the done steps are undone: deleting the host side of the veth
removes both ends.  A leave unplugs the veth at once (down, out of the
bridge, into a "dead" link group), renames the sandbox side out of the
way, and lets a reaper thread delete the group in one request.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from libnet.driverapi import (
    Capabilities,
    EndpointInfo,
    NetworkInfo,
    ReconcileReport,
    SandboxInfo,
)
from libnet.errors import BadRequest, Conflict, InvalidOption, KernelObjectExists, LibnetError, NoSuchLink
from libnet.kernel import netns, rtnl, sysctl
from libnet.kernel.firewall import Firewall, internal_rules, isolation_rules, masquerade_rule, port_rules
from libnet.kernel.netlink import IFNAMSIZ, Netlink

T = TypeVar("T")
log = logging.getLogger("libnet.drivers.bridge")
_NETLINK = (socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)

NET_ALIAS = "libnet:net:"
#: the link group of unplugged veths waiting to be deleted together ("ln" in ASCII)
DEAD_GROUP = 0x6C6E
EP_ALIAS = "libnet:ep:"
DEFAULT_MTU = 1500

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
    return nw.options.get("bridge_name") or "lnb-" + nw.id[: IFNAMSIZ - 4]


def host_ifname(ep: EndpointInfo) -> str:
    """The host side of an endpoint's veth."""
    return "lnv" + ep.id[: IFNAMSIZ - 3]


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise InvalidOption(f"option {name!r} must be true or false", option=name, value=str(value))


class BridgeDriver:
    """See the module docstring."""

    name = "bridge"

    def __init__(self, host_ns: str | None = None, default_mtu: int | None = None, **_: Any) -> None:
        self.host_ns = host_ns
        self.default_mtu = default_mtu
        self._nl: Netlink | None = None
        self._fw: Firewall | None = None
        self._mtus: dict[str, int] = {}  # bridge -> MTU, read once
        self._reaper_nl: Netlink | None = None
        self._reap_queued = False

    def capabilities(self) -> Capabilities:
        return Capabilities(scope="local")

    def parse_network_options(self, options: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"bridge_name": None, "mtu": None, "icc": True}
        for key, value in options.items():
            canon = _ALIASES.get(key)
            if canon is None:
                raise InvalidOption(f"unknown bridge option {key!r}; known: bridge_name, mtu, icc", option=key)
            if canon == "bridge_name":
                if not isinstance(value, str) or not 0 < len(value) <= IFNAMSIZ or "/" in value or " " in value:
                    raise InvalidOption(
                        f"bridge_name must be an interface name of 1-{IFNAMSIZ} characters",
                        option=key,
                        value=str(value),
                    )
                out["bridge_name"] = value
            elif canon == "mtu":
                try:
                    mtu = int(value)
                except (TypeError, ValueError):
                    raise InvalidOption("mtu must be a number", option=key, value=str(value)) from None
                if isinstance(value, bool) or not 1280 <= mtu <= 65535:
                    raise InvalidOption(
                        "mtu must be 1280..65535 (IPv6 needs at least 1280)", option=key, value=str(value)
                    )
                out["mtu"] = mtu
            else:
                out["icc"] = _bool(key, value)
        return out

    # --- plumbing -------------------------------------------------------------

    @property
    def nl(self) -> Netlink:
        if self._nl is None:
            self._nl = Netlink(self.host_ns)
        return self._nl

    @property
    def reaper(self) -> Netlink:
        """A second host-namespace handle whose thread does the slow veth deletions."""
        if self._reaper_nl is None:
            self._reaper_nl = Netlink(self.host_ns)
        return self._reaper_nl

    @property
    def fw(self) -> Firewall:
        if self._fw is None:
            self._fw = Firewall(self.host_ns)
        return self._fw

    async def _host(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the host namespace's thread (netlink calls inside run inline)."""
        return await asyncio.wrap_future(self.nl.submit(fn))

    async def _firewall(self, fn: Callable[[Firewall], T]) -> T:
        return await asyncio.to_thread(fn, self.fw)

    async def close(self) -> None:
        for handle in (self._nl, self._reaper_nl, self._fw):
            if handle is not None:
                await asyncio.to_thread(handle.close)  # closing waits for queued deletions
        self._nl = self._reaper_nl = self._fw = None

    def _mtu(self, nw: NetworkInfo) -> int:
        return nw.options.get("mtu") or self.default_mtu or self.nl.uplink_mtu() or DEFAULT_MTU

    # --- networks -------------------------------------------------------------

    async def create_network(self, nw: NetworkInfo) -> None:
        br = bridge_name(nw)

        def build() -> None:
            nl = self.nl
            if nl.has_link(br):
                link = nl.link(br)
                if link.kind != "bridge" or link.alias not in (None, NET_ALIAS + nw.id):
                    raise Conflict(
                        f"interface {br} exists and is not this network's bridge", ifname=br, network_id=nw.id
                    )
            else:
                nl.add_bridge(br, mtu=self._mtu(nw))
            nl.set_alias(br, NET_ALIAS + nw.id)
            have = set(nl.addresses(br))
            for gw in (nw.ipv4_gateway, nw.ipv6_gateway):
                if gw and gw not in have:
                    nl.add_address(br, gw, nodad=True)
            nl.set_up(br)

        try:
            await self._host(build)
            await netns.run_in_async(self.host_ns, sysctl.set_forwarding, None, True)

            def rules(fw: Firewall) -> None:
                fw.add_bridge(br)
                fw.add(f"net:{nw.id}:isolate", isolation_rules(br))
                if nw.internal:
                    fw.add(f"net:{nw.id}:internal", internal_rules(br))
                else:
                    subnets = [s for s in (nw.ipv4_subnet, nw.ipv6_subnet) if s]
                    fw.add(f"net:{nw.id}:masq", [masquerade_rule(s, br) for s in subnets])

            await self._firewall(rules)
        except BaseException:
            await self.delete_network(nw)
            raise

    async def delete_network(self, nw: NetworkInfo) -> None:
        br = bridge_name(nw)

        def remove(fw: Firewall) -> None:
            fw.remove_prefix(f"net:{nw.id}:")
            fw.remove_bridge(br)

        await self._firewall(remove)

        def unbuild() -> None:
            if self.nl.has_link(br) and self.nl.link(br).alias in (None, NET_ALIAS + nw.id):
                self.nl.delete_link(br)

        await self._host(unbuild)

    # --- endpoints ------------------------------------------------------------

    async def create_endpoint(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        if ep.ports and nw.internal:
            raise BadRequest("internal networks cannot publish ports", network_id=nw.id, endpoint_id=ep.id)

    async def delete_endpoint(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        await self.revoke_external_connectivity(nw, ep)

    async def join(self, nw: NetworkInfo, ep: EndpointInfo, sb: SandboxInfo) -> None:
        br, host_if = bridge_name(nw), host_ifname(ep)

        def plug() -> None:
            nl = self.nl
            mtu = self._mtus.get(br) or nl.link(br).mtu
            self._mtus[br] = mtu
            try:
                nl.plug_veth(host_if, sb.ifname, sb.netns, br, mtu=mtu, peer_mac=ep.mac)
            except KernelObjectExists:
                raise Conflict(
                    f"{host_if} or {sb.ifname} in the sandbox exists already", ifname=host_if, sandbox_id=sb.id
                ) from None
            if not nw.options.get("icc", True):
                try:
                    nl.set_port_isolated(host_if)
                except BaseException:
                    nl.delete_link(host_if)
                    raise

        await self._host(plug)
        try:
            sock = await asyncio.wrap_future(netns.open_socket_future(sb.netns, *_NETLINK))
            with rtnl.RtnlSocket(sock) as r:
                _configure_sandbox(r, nw, ep, sb)
        except BaseException:
            await self._host(lambda: self.nl.delete_link(host_if))
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
        if await self._host(lambda: self.nl.unplug(host_if, group=DEAD_GROUP)):
            self._schedule_reaping()

    def _schedule_reaping(self) -> None:
        if self._reap_queued:
            return  # the queued pass will take this one too
        self._reap_queued = True

        def reap() -> None:
            self._reap_queued = False  # unplugged from now on: another pass
            self.reaper.delete_group(DEAD_GROUP)

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
        br = bridge_name(nw)
        rules = []
        for pm in ep.ports:
            for cidr in (ep.ipv4, ep.ipv6):
                if not cidr:
                    continue
                ip = str(ipaddress.ip_interface(cidr).ip)
                if pm.host_ip and ipaddress.ip_address(pm.host_ip).version != ipaddress.ip_address(ip).version:
                    continue
                rules += port_rules(pm.host_port, ip, pm.container_port, pm.protocol, br, pm.host_ip)
        await self._firewall(lambda fw: fw.add(f"ep:{ep.id}:ports", rules))

    async def revoke_external_connectivity(self, nw: NetworkInfo, ep: EndpointInfo) -> None:
        if ep.ports:  # no ports, no rules: spare the nftables round trip
            await self._firewall(lambda fw: fw.remove(f"ep:{ep.id}:ports"))

    # --- reconcile ------------------------------------------------------------

    async def reconcile(
        self, networks: list[NetworkInfo], endpoints: list[tuple[EndpointInfo, SandboxInfo | None]]
    ) -> ReconcileReport:
        report = ReconcileReport()
        nets = {nw.id: nw for nw in networks}
        links = await self._host(self.nl.links)
        by_name = {link.name: link for link in links}
        joined_ifs = {host_ifname(ep) for ep, sb in endpoints if sb is not None}
        for link in links:
            alias = link.alias or ""
            owner = alias.split(":", 2)[-1]
            if alias.startswith(NET_ALIAS) and owner not in nets:
                await self._host(lambda n=link.name: self.nl.delete_link(n))
                report.removed.append(f"bridge {link.name} of unknown network {owner[:12]}")
            elif link.kind == "veth" and link.name.startswith("lnv") and link.name not in joined_ifs:
                # veths are named after their endpoint: lnv + the first 12 hex digits of its id
                await self._host(lambda n=link.name: self.nl.delete_link(n))
                report.removed.append(f"veth {link.name} of no joined endpoint")
        for nw in networks:
            if bridge_name(nw) not in by_name:
                report.missing.append(f"network {nw.name} ({nw.id[:12]}): bridge {bridge_name(nw)} is missing")
        for ep, sb in endpoints:
            if sb is not None and host_ifname(ep) not in by_name:
                report.missing.append(f"endpoint {ep.name} ({ep.id[:12]}): veth {host_ifname(ep)} is missing")
        known = set(nets) | {ep.id for ep, _ in endpoints}
        bridges = {bridge_name(nw) for nw in networks}

        def clean(fw: Firewall) -> list[str]:
            gone = []
            for key in sorted(fw.keys()):
                kind, _, rest = key.partition(":")
                owner = rest.split(":", 1)[0]
                if kind in ("net", "ep") and owner not in known:
                    fw.remove(key)
                    gone.append(f"firewall rules {key}")
            for br in fw.bridges() - bridges:
                fw.remove_bridge(br)
                gone.append(f"bridge {br} in the isolation set")
            return gone

        report.removed += await self._firewall(clean)
        return report


def _configure_sandbox(r: rtnl.RtnlSocket, nw: NetworkInfo, ep: EndpointInfo, sb: SandboxInfo) -> None:
    """Inside the sandbox, in one batch: lo up, addresses (DAD off), up, default routes."""
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
    reqs.append((rtnl.RTM_NEWLINK, 0, rtnl.setlink_body(index, up=True), f"bring {sb.ifname} up"))
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
