"""Published host ports: one holder per (protocol, host port, host address).

Docker refuses a second container on a host port that is taken; libnet did
not, and every connection went to the first container (issue 14).  The
registry is one document per (protocol, port) in the local store
(``libnet/v1/ports/<proto>/<port>``: host address -> endpoint id, ``"*"`` for
every address of the host), changed by compare-and-swap, so concurrent
requests cannot both win.  An address conflicts with itself and with ``"*"``.

A port a process of the host already listens on is refused too (checked by
binding it in the host namespace; not when the registry says the endpoint
holds it already: libnet's own ``[::1]`` relays listen on their ports), and
``host_port`` 0 asks for a free port from the registry's range (default
:data:`AUTO_RANGE`, the range Docker uses, above the kernel's usual ephemeral
ports; ``libnet-agent --port-range``), reported back in the endpoint's ports.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from libnet import model
from libnet.config import DEFAULT_PORT_RANGE
from libnet.driverapi import PortMapping
from libnet.errors import Conflict, InvalidOption, KeyNotFound, LibnetError, PortsExhausted
from libnet.kernel import netns
from libnet.model import Network
from libnet.store.base import Store

P = "libnet/v1/ports"
KIND = "port_holders"
ANY = "*"
#: host ports ``-p CONTAINER`` picks from, both ends included (Docker's default)
AUTO_RANGE = DEFAULT_PORT_RANGE


def parse_range(text: str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``"LO-HI"`` (or a pair) as a port range: integers, 1 <= LO <= HI <= 65535;
    ``InvalidOption`` saying what is wrong otherwise."""
    if isinstance(text, str):
        lo_text, sep, hi_text = text.strip().partition("-")
        parts = [lo_text.strip(), hi_text.strip()]
        if not sep or not all(p.isascii() and p.isdigit() for p in parts):
            raise InvalidOption(f"a port range is LOW-HIGH (e.g. 49153-65535), got {text!r}", port_range=text)
        lo, hi = int(parts[0]), int(parts[1])
    else:
        if len(text) != 2 or not all(isinstance(p, int) and not isinstance(p, bool) for p in text):
            raise InvalidOption(f"a port range is two integers, got {text!r}", port_range=str(text))
        lo, hi = text
    if not 1 <= lo <= hi <= 65535:
        raise InvalidOption(f"a port range needs 1 <= LOW <= HIGH <= 65535, got {lo}-{hi}", port_range=f"{lo}-{hi}")
    return lo, hi


def _key(protocol: str, port: int) -> str:
    return f"{P}/{protocol}/{port}"


def _addr(pm: PortMapping) -> str:
    return pm.host_ip or ANY


def _overlap(a: str, b: str) -> bool:
    """Whether two host addresses of a port share a socket address: equal, one is
    ``"*"`` (every address of both families), or one is the unspecified address
    of the other's family (``0.0.0.0``: every IPv4 address, ``::`` every IPv6
    one -- Docker's ``-p 0.0.0.0:80:80`` / ``-p [::]:80:80``)."""
    if a == b or ANY in (a, b):
        return True
    ia, ib = ipaddress.ip_address(a), ipaddress.ip_address(b)
    return ia.version == ib.version and (ia.is_unspecified or ib.is_unspecified)


def _clash(holders: dict[str, str], addr: str) -> str | None:
    """The holder ``addr`` collides with, if any."""
    return next((holder for held, holder in holders.items() if _overlap(held, addr)), None)


def _same_socket(a: PortMapping, b: PortMapping) -> bool:
    """Whether two mappings would publish the same (protocol, port, address)."""
    return a.protocol == b.protocol and a.host_port == b.host_port and _overlap(_addr(a), _addr(b))


def check_request(mappings: Iterable[PortMapping]) -> None:
    """One request must not publish a host port twice (``InvalidOption``)."""
    seen: dict[tuple[str, int], set[str]] = {}
    for pm in mappings:
        if not pm.host_port:
            continue
        addrs = seen.setdefault((pm.protocol, pm.host_port), set())
        addr = _addr(pm)
        if any(_overlap(addr, other) for other in addrs):
            raise InvalidOption(
                f"host port {pm.host_port}/{pm.protocol} is published twice in one request", port=pm.host_port
            )
        addrs.add(addr)


def _check_host_ip(host_ns: str | None, host_ip: str) -> None:
    """A specific host IP must be an address of one of the host's interfaces (or
    IPv4 loopback): the bind test alone passes any address where
    ``ip_nonlocal_bind=1`` (keepalived and HAProxy hosts)."""
    ip = ipaddress.ip_address(host_ip)
    if ip.is_unspecified or (ip.version == 4 and ip.is_loopback):
        return
    from libnet.kernel.netlink import Netlink

    with Netlink(host_ns) as nl:
        mine = {ipaddress.ip_address(cidr.split("/", 1)[0]) for cidr, _ in nl.addresses_by_link()}
    if ip not in mine:
        raise InvalidOption(f"host address {host_ip} is not an address of this host", host_ip=host_ip)


def _check_other_instances(host_ns: str | None, own_table: str, pm: PortMapping) -> None:
    """Another libnet agent on this host (its own store, its own registry) must not
    hold the port: its DNAT rule would take the traffic, or ours would take its."""
    from libnet.kernel.firewall import Firewall

    with Firewall(host_ns, own_table) as fw:
        others = fw.published_by_others(pm.protocol, pm.host_port)
    if others:
        raise Conflict(
            f"host port {pm.host_port}/{pm.protocol} is published by another libnet instance on this host "
            f"(nftables table inet {others[0]})",
            port=pm.host_port,
            protocol=pm.protocol,
            holder=others[0],
        )


def bindable(host_ns: str | None, pm: PortMapping, own_table: str | None = None) -> bool:
    """Whether no process of the host listens on the port (bind test in the host
    namespace) and, given ``own_table``, no other libnet instance publishes it."""
    if pm.host_ip:
        _check_host_ip(host_ns, pm.host_ip)
    if own_table is not None:
        _check_other_instances(host_ns, own_table, pm)
    ips = [pm.host_ip] if pm.host_ip else ["0.0.0.0", "::"]
    kind = socket.SOCK_STREAM if pm.protocol == "tcp" else socket.SOCK_DGRAM

    def free(ip: str) -> bool:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        try:
            s = socket.socket(family, kind)
        except OSError:  # no IPv6 on this host
            return True
        with s:
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if kind == socket.SOCK_STREAM:
                # connections of the past (TIME_WAIT, e.g. of libnet's own [::1] relay) do not hold a port;
                # Linux still refuses this bind while any socket listens on it (socket(7))
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((ip, pm.host_port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return False
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise InvalidOption(
                        f"host address {pm.host_ip} is not an address of this host", host_ip=pm.host_ip
                    ) from None
                if exc.errno == errno.EAFNOSUPPORT and not pm.host_ip:
                    return True
                raise InvalidOption(
                    f"host address {pm.host_ip} cannot be published on: {exc.strerror}", host_ip=pm.host_ip
                ) from None
        return True

    return netns.run_in(host_ns, lambda: all(free(ip) for ip in ips))


class PortRegistry:
    """The host's published ports (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        host_ns: str | None,
        probe: Callable[[PortMapping], bool] | None = None,
        auto_range: tuple[int, int] = AUTO_RANGE,
        own_table: str | None = None,
        describe: Callable[[str], Awaitable[str | None]] | None = None,
        reserved: Mapping[tuple[str, int], str] | None = None,
    ) -> None:
        self.store = store
        #: (protocol, host port) -> what of libnet's own needs it (WireGuard of encrypted overlays): never
        #: published, also while nothing listens there (a rotation's second port; a tunnel restarting)
        self.reserved = dict(reserved or {})
        self.probe = probe or (lambda pm: bindable(host_ns, pm, own_table))
        self.auto_range = parse_range(auto_range)
        #: endpoint id -> what a user knows it by ("endpoint web on network front"), for messages
        self.describe = describe

    async def reserve(self, endpoint_id: str, mappings: list[PortMapping]) -> list[PortMapping]:
        """Reserve every mapping for ``endpoint_id`` (all or none); host port 0
        picks a free one.  Returns the mappings as reserved.  ``Conflict``
        naming the holder when a port is taken."""
        check_request(mappings)
        done: dict[int, PortMapping] = {}
        try:
            # explicit ports first, so a picked port never takes one a later mapping names
            for i in sorted(range(len(mappings)), key=lambda i: not mappings[i].host_port):
                done[i] = await self._reserve_one(endpoint_id, mappings[i], list(done.values()))
        except BaseException:
            await self.release(endpoint_id, done.values())
            raise
        return [done[i] for i in range(len(mappings))]

    async def _reserve_one(self, endpoint_id: str, pm: PortMapping, taken: list[PortMapping]) -> PortMapping:
        if pm.host_port:
            try:
                await self._claim(endpoint_id, pm)
            except Conflict as exc:
                raise await self._named(exc) from None
            return pm
        lo, hi = self.auto_range
        for port in range(lo, hi + 1):
            candidate = PortMapping(port, pm.container_port, pm.protocol, pm.host_ip)
            if any(_same_socket(candidate, t) for t in taken):  # held by this very request
                continue
            try:
                await self._claim(endpoint_id, candidate)
            except Conflict:
                continue
            return candidate
        raise PortsExhausted(
            f"no free host port left in {lo}-{hi} for {pm.protocol}: free one, or widen the range "
            "(libnet-agent --port-range)",
            protocol=pm.protocol,
            port_range=f"{lo}-{hi}",
        )

    async def _claim(self, endpoint_id: str, pm: PortMapping) -> None:
        addr = _addr(pm)
        if (why := self.reserved.get((pm.protocol, pm.host_port))) is not None:
            raise Conflict(
                f"host port {pm.host_port}/{pm.protocol} is reserved: {why}", port=pm.host_port, protocol=pm.protocol
            )

        def add(doc: dict[str, Any] | None) -> dict[str, Any]:
            holders = dict(doc or {})
            holder = _clash(holders, addr)
            if holder is not None and holder != endpoint_id:
                raise Conflict(
                    f"host port {pm.host_port}/{pm.protocol} is already published by endpoint {holder[:12]}",
                    port=pm.host_port,
                    protocol=pm.protocol,
                    holder=holder,
                )
            holders[addr] = endpoint_id
            return holders

        # probe only a port no endpoint holds: a holder's port may be bound by
        # libnet itself (a [::1] relay), and ``add`` names the holder anyway
        try:
            held = _clash(model.decode((await self.store.get(_key(pm.protocol, pm.host_port))).value, KIND), addr)
        except KeyNotFound:
            held = None
        if held is None and not self.probe(pm):
            raise Conflict(
                f"host port {pm.host_port}/{pm.protocol} is in use by a process on this host",
                port=pm.host_port,
                protocol=pm.protocol,
            )
        await model.update_json(self.store, _key(pm.protocol, pm.host_port), KIND, add)

    async def _named(self, exc: Conflict) -> Conflict:
        """``exc`` with the holding endpoint named as users know it (its name, network, sandbox)."""
        holder = exc.ids.get("holder", "")
        if self.describe is None or not holder or "published by endpoint" not in exc.message:
            return exc
        try:
            who = await self.describe(holder)
        except LibnetError:
            who = None
        if not who:
            return exc
        return Conflict(
            f"host port {exc.ids.get('port')}/{exc.ids.get('protocol')} is already published by {who}", **exc.ids
        )

    async def release(self, endpoint_id: str, mappings: Iterable[PortMapping]) -> None:
        """Free the mappings ``endpoint_id`` holds (others' entries stay)."""
        for pm in mappings:
            if not pm.host_port:
                continue

            def drop(doc: dict[str, Any] | None, addr: str = _addr(pm)) -> dict[str, Any] | None:
                holders = dict(doc or {})
                if holders.get(addr) == endpoint_id:
                    del holders[addr]
                return holders or None

            await model.update_json(self.store, _key(pm.protocol, pm.host_port), KIND, drop)

    async def orphans(self, endpoints: set[str]) -> list[tuple[str, int, str]]:
        """Free entries whose endpoint does not exist; returns (protocol, port, holder)."""
        gone = []
        for pair in await self.store.list(f"{P}/"):
            protocol, port = pair.key[len(P) + 1 :].split("/", 1)
            holders = model.decode(pair.value, KIND)
            for addr, holder in holders.items():
                if holder not in endpoints:
                    pm = PortMapping(int(port), 1, protocol, None if addr == ANY else addr)  # type: ignore[arg-type]
                    await self.release(holder, [pm])
                    gone.append((protocol, int(port), holder))
        return gone


def check_mapping(p: PortMapping | dict[str, Any]) -> PortMapping:
    """A published port as the user gave it (a PortMapping or its dict), checked
    and normalised (``InvalidOption``)."""
    if isinstance(p, PortMapping):
        pm = p
    else:
        if not isinstance(p, dict) or set(p) - {"host_port", "container_port", "protocol", "host_ip"}:
            raise InvalidOption("a port is {host_port, container_port, protocol, host_ip}", port=str(p))
        try:
            pm = PortMapping(**{"host_port": 0, **p})
        except TypeError:
            raise InvalidOption(
                "a port needs container_port (and host_port, 0 or left out: any free one)", port=str(p)
            ) from None
    for port, lowest in ((pm.host_port, 0), (pm.container_port, 1)):  # host port 0: pick a free one
        if isinstance(port, bool) or not isinstance(port, int) or not lowest <= port < 65536:
            raise InvalidOption(f"invalid port {port!r}: {lowest}..65535", port=str(port))
    if pm.protocol not in ("tcp", "udp"):
        raise InvalidOption("protocol must be tcp or udp", protocol=str(pm.protocol))
    if pm.host_ip is not None:
        try:
            hip = ipaddress.ip_address(pm.host_ip) if isinstance(pm.host_ip, str) else None
        except ValueError:
            hip = None
        if hip is None:
            raise InvalidOption(f"invalid host_ip {pm.host_ip!r}: give an IP address", host_ip=str(pm.host_ip))
        if hip.is_multicast or (hip.version == 4 and hip.is_reserved):  # 240/4 holds 255.255.255.255
            raise InvalidOption(
                f"host_ip {hip} is a multicast or broadcast address: ports are published on a unicast address",
                host_ip=str(hip),
            )
        if hip.version == 6 and (hip.scope_id or hip.is_link_local):
            raise InvalidOption(
                f"host_ip {pm.host_ip} is link-local or scoped: publish on a global or loopback address",
                host_ip=str(pm.host_ip),
            )
        if hip.version == 6 and hip.ipv4_mapped is not None:
            raise InvalidOption(f"host_ip {hip} is IPv4-mapped: give {hip.ipv4_mapped}", host_ip=str(hip))
        if str(hip) != pm.host_ip:  # one spelling per address: the registry compares strings
            pm = dataclasses.replace(pm, host_ip=str(hip))
    return pm


def check_families(nw: Network, mappings: list[PortMapping]) -> None:
    """A port published on a host address of one IP version needs a container
    address of that version to send it to (``InvalidOption``)."""
    for pm in mappings:
        if pm.host_ip is None:
            continue
        version = ipaddress.ip_address(pm.host_ip).version
        if not (nw.ipv4_subnet if version == 4 else nw.ipv6_subnet):
            raise InvalidOption(
                f"host_ip {pm.host_ip} is IPv{version} but network {nw.name} gives its endpoints no IPv{version} "
                "address to publish it to",
                host_ip=pm.host_ip,
                network_id=nw.id,
            )
