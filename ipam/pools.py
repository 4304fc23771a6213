"""Pool arithmetic: validation, default pools, overlap detection, ULA prefixes.

Pure functions and small classes over ``ipaddress``; no store, no kernel.
"""

from __future__ import annotations

import bisect
import ipaddress
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from libnet.errors import InvalidSubnet

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class PoolSpec:
    """A default-pool range: ``base`` cut into subnets of prefix length ``size``.

    Same shape as Docker's ``default-address-pools`` entries.
    """

    base: str
    size: int

    def subnets(self) -> Iterator[Network]:
        net = ipaddress.ip_network(self.base)
        if self.size < net.prefixlen:
            raise InvalidSubnet(f"pool size /{self.size} is larger than its base {self.base}", pool=self.base)
        return net.subnets(new_prefix=self.size)


def _docker_local_v4() -> list[PoolSpec]:
    return [PoolSpec(f"172.{i}.0.0/16", 16) for i in range(17, 32)] + [PoolSpec("192.168.0.0/16", 20)]


@dataclass
class IpamConfig:
    """What IPAM hands out when no subnet is asked for.

    ``v6_pools`` empty means: the store's own ULA /48 (RFC 4193, random
    Global ID made once per store and kept there) cut into ``v6_size`` subnets.
    ``global_v6``: the IPv6 defaults of global (overlay) networks; empty means
    ``v6_pools``.  The two address spaces live in different stores and never
    see each other's pools: with one shared list an overlay and a local network
    (the gateway bridge its containers also join) get the same first subnet, so
    a cluster host that sets IPv6 pools sets both.
    ``host_routes`` returns the host's routes (CIDRs); local default pools
    that overlap one are skipped, so a network never shadows a real route.
    ``host_addresses`` returns the host's own interface addresses
    (:class:`HostAddress`); a local pool never contains one (see
    :func:`host_address_in`).
    """

    local_v4: list[PoolSpec] = field(default_factory=_docker_local_v4)
    global_v4: list[PoolSpec] = field(default_factory=lambda: [PoolSpec("10.0.0.0/8", 24)])
    v6_pools: list[PoolSpec] = field(default_factory=list)
    global_v6: list[PoolSpec] = field(default_factory=list)
    v6_size: int = 64
    host_routes: Callable[[], Iterable[str]] | None = None
    host_addresses: Callable[[], Iterable[HostAddress]] | None = None


@dataclass(frozen=True)
class HostAddress:
    """An address of an interface of the host (the agent's host namespace).

    ``owner`` is the network id in the interface's libnet mark (a network's
    bridge), "" for interfaces libnet did not make."""

    address: str  # plain address, no prefix length
    ifname: str
    owner: str = ""


def parse_subnet(cidr: object, v6: bool | None = None, what: str = "pool") -> Network:
    """A pool subnet, validated: CIDR syntax, no host bits, version, size."""
    if not isinstance(cidr, str):
        raise InvalidSubnet(f"{what} must be a CIDR string", pool=repr(cidr))
    if "%" in cidr:
        raise InvalidSubnet(f"{what} {cidr!r} has a zone index (%...): a subnet belongs to no interface", pool=cidr)
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise InvalidSubnet(f"{what} {cidr!r} is not a valid CIDR", pool=cidr) from None
    if "/" not in cidr:
        raise InvalidSubnet(f"{what} {cidr!r} needs a prefix length (ADDRESS/LEN)", pool=cidr)
    if net.network_address != ipaddress.ip_interface(cidr).ip:
        raise InvalidSubnet(f"{what} {cidr!r} has host bits set; did you mean {net}?", pool=cidr)
    if v6 is not None and (net.version == 6) != v6:
        want = "IPv6" if v6 else "IPv4"
        raise InvalidSubnet(f"{what} {cidr!r} is not {want} (v6={v6})", pool=cidr)
    if net.num_addresses <= 2:
        raise InvalidSubnet(
            f"{what} {cidr!r} is too small: /31, /32, /127 and /128 leave no usable addresses", pool=cidr
        )
    why = unusable(net)
    if why:
        raise InvalidSubnet(f"{what} {cidr} cannot carry containers: {why}", pool=cidr)
    return net


def unusable(net: Network) -> str | None:
    """Why a subnet cannot be a network's (None if it can): addresses the kernel
    or the protocols reserve for something else (RFC 6890's special ranges)."""
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(ipaddress.IPv6Network("::ffff:0:0/96")):
        return "IPv4-mapped IPv6 addresses (::ffff:0:0/96) are not routable; use the IPv4 subnet"
    if net.prefixlen == 0:
        return "it is the whole address space (a default route), not a network"
    checks = (
        ("is_unspecified", "it holds the unspecified address (0.0.0.0, ::)"),
        ("is_loopback", "it is loopback (127.0.0.0/8, ::1): the host's own, never forwarded"),
        ("is_multicast", "it is multicast (224.0.0.0/4, ff00::/8): group addresses, not an interface's"),
        ("is_link_local", "it is link-local (169.254.0.0/16, fe80::/10): never forwarded by routers"),
    )
    for attr, why in checks:
        first, last = net.network_address, net.broadcast_address
        if getattr(first, attr) or getattr(last, attr) or getattr(net, attr):
            return why
    if net.version == 4 and net.overlaps(ipaddress.ip_network("0.0.0.0/8")):
        return "0.0.0.0/8 means 'this network' (RFC 1122), never a destination"
    if net.version == 4 and net.overlaps(ipaddress.ip_network("240.0.0.0/4")):
        return "240.0.0.0/4 is reserved (and 255.255.255.255 is broadcast)"
    return None


def parse_address(value: object, net: Network, what: str = "address") -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A usable address of ``net`` (a gateway, an auxiliary address), validated
    with the reason for a refusal: syntax, version, inside the subnet, not its
    network address (nor, for IPv4, its broadcast address)."""
    if not isinstance(value, str):
        raise InvalidSubnet(f"{what} must be an IP address string", address=repr(value)[:64], pool=str(net))
    text, _, prefix = value.partition("/")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidSubnet(f"{what} {value!r} is not an IP address", address=value[:64], pool=str(net)) from None
    if prefix and prefix != str(net.prefixlen):  # "ADDR/LEN" (as stored) only with the subnet's own length
        raise InvalidSubnet(
            f"{what} {value!r} has prefix length /{prefix[:8]}, the subnet is {net}: give the address alone",
            address=value[:64],
            pool=str(net),
        )
    if ip.version != net.version:
        raise InvalidSubnet(
            f"{what} {ip} is IPv{ip.version} but subnet {net} is IPv{net.version}", address=str(ip), pool=str(net)
        )
    if ip not in net:
        raise InvalidSubnet(f"{what} {ip} is outside subnet {net}", address=str(ip), pool=str(net))
    if ip == net.network_address:
        name = "network address" if net.version == 4 else "subnet-router anycast address"
        raise InvalidSubnet(f"{what} {ip} is the subnet's {name} ({net})", address=str(ip), pool=str(net))
    if net.version == 4 and ip == net.broadcast_address:
        raise InvalidSubnet(f"{what} {ip} is the subnet's broadcast address ({net})", address=str(ip), pool=str(net))
    return ip


def parse_range(value: object, net: Network, what: str = "ip range") -> Network:
    """An allocation range (Docker's ``--ip-range``): a CIDR inside ``net``
    that leaves at least one address to hand out (dynamic addresses come from
    the range without its own first and last address)."""
    if not isinstance(value, str):
        raise InvalidSubnet(f"{what} must be a CIDR string", sub_pool=repr(value)[:64], pool=str(net))
    try:
        rng = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise InvalidSubnet(f"{what} {value!r} is not a valid CIDR", sub_pool=value[:64], pool=str(net)) from None
    if "/" not in value:
        raise InvalidSubnet(f"{what} {value!r} needs a prefix length (ADDRESS/LEN)", sub_pool=value, pool=str(net))
    if rng.network_address != ipaddress.ip_interface(value).ip:
        raise InvalidSubnet(f"{what} {value!r} has host bits set; did you mean {rng}?", sub_pool=value, pool=str(net))
    if rng.version != net.version:
        raise InvalidSubnet(
            f"{what} {rng} is IPv{rng.version} but subnet {net} is IPv{net.version}", sub_pool=value, pool=str(net)
        )
    if not rng.subnet_of(net):  # type: ignore[arg-type]
        raise InvalidSubnet(f"{what} {rng} is outside subnet {net}", sub_pool=value, pool=str(net))
    lo, hi = usable_range(rng)
    plo, phi = usable_range(net)
    if max(lo, plo) > min(hi, phi):
        raise InvalidSubnet(
            f"{what} {rng} is too small: without its first and last address nothing is left to hand out",
            sub_pool=value,
            pool=str(net),
        )
    return rng


def check_aux(
    aux: object, net: Network, gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None
) -> dict[str, str]:
    """Auxiliary addresses (Docker's ``--aux-address name=IP``) of one subnet,
    validated: names are non-empty strings, each address is a usable address
    of ``net``, none is the gateway, no address is named twice."""
    if not isinstance(aux, dict):
        raise InvalidSubnet("aux addresses must map names to addresses", pool=str(net))
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for name, value in aux.items():
        if (
            not isinstance(name, str)
            or not 0 < len(name) <= 64
            or not name.isprintable()
            or any(c in name for c in "=/")
        ):
            raise InvalidSubnet(
                f"aux address name {name!r} must be 1-64 printable characters without '=' or '/'", pool=str(net)
            )
        ip = parse_address(value, net, f"aux address {name}")
        if gateway is not None and ip == gateway:
            raise InvalidSubnet(
                f"aux address {name}={ip} is the gateway of {net}; the gateway is reserved already",
                address=str(ip),
                pool=str(net),
            )
        if str(ip) in seen:
            raise InvalidSubnet(
                f"aux addresses {seen[str(ip)]} and {name} are both {ip}; each reserved address once",
                address=str(ip),
                pool=str(net),
            )
        seen[str(ip)] = name
        out[name] = str(ip)
    return out


def host_address_in(net: Network, addresses: Iterable[HostAddress], owner: str = "") -> HostAddress | None:
    """The first host address inside ``net``, or None.  Addresses on the
    interfaces of network ``owner`` itself (its own bridge, when a lost pool
    is reserved again or a network adopted) do not count."""
    for a in addresses:
        if owner and a.owner == owner:
            continue
        try:
            ip = ipaddress.ip_address(a.address.split("/", 1)[0].split("%", 1)[0])
        except ValueError:
            continue
        if ip.version == net.version and ip in net:
            return a
    return None


def usable_range(net: Network) -> tuple[int, int]:
    """The allocatable integers of a subnet.

    IPv4: without the network and broadcast addresses.  IPv6: without the
    subnet-router anycast address (the all-zero one); there is no broadcast.
    """
    first = int(net.network_address)
    last = int(net.broadcast_address)
    return (first + 1, last - 1) if net.version == 4 else (first + 1, last)


def random_ula48(rand: Callable[[int], bytes] = os.urandom) -> str:
    """An RFC 4193 ULA /48: ``fd`` + a random 40-bit Global ID."""
    gid = rand(5)
    return str(ipaddress.IPv6Network((b"\xfd" + gid + bytes(10), 48)))


class OverlapIndex:
    """Pools of one address space, to find which (if any) a subnet overlaps."""

    def __init__(self, entries: Iterable[tuple[Network, str]] = ()) -> None:
        self._starts: list[tuple[int, int, int, str]] = []  # (version, start, end, holder)
        for net, holder in entries:
            self.add(net, holder)

    def add(self, net: Network, holder: str) -> None:
        bisect.insort(self._starts, (net.version, int(net.network_address), int(net.broadcast_address), holder))

    def find(self, net: Network) -> str | None:
        """The holder of a pool overlapping ``net``, or None.

        Pools in one space never overlap each other, so sorted by start they
        are sorted by end too: only the last pool starting at or before the
        end of ``net`` can reach into it.
        """
        lo, hi = int(net.network_address), int(net.broadcast_address)
        i = bisect.bisect_right(self._starts, (net.version, hi, float("inf"), ""))
        if i == 0:
            return None
        version, _start, end, holder = self._starts[i - 1]
        return holder if version == net.version and end >= lo else None

    def discard(self, holder: str) -> None:
        self._starts = [e for e in self._starts if e[3] != holder]


#: routes shorter than this are a default route in disguise, not a claim on a pool:
#: full-tunnel VPNs install 0.0.0.0/1 + 128.0.0.0/1 (and ::/1 + 8000::/1) to win over
#: the default route without replacing it (the trade-off of moby#46615)
MIN_CLAIMING_PREFIX = 8


def route_networks(routes: Iterable[str]) -> list[Network]:
    """Host routes that claim address space, as networks: without default routes
    and without routes shorter than /8 (see :data:`MIN_CLAIMING_PREFIX`)."""
    out = []
    for r in routes:
        try:
            net = ipaddress.ip_network(r, strict=False)
        except ValueError:
            continue
        if net.prefixlen >= MIN_CLAIMING_PREFIX:
            out.append(net)
    return out
