"""Checks of user input shared by the controller, the API and the CLI.

Subnets, gateways, ranges and auxiliary addresses are checked here (on top of
the pure address arithmetic of :mod:`ipam.pools`, which IPAM applies again to
every pool request), so the library, the agent's API and the CLI give one
answer with one reason.  What depends on the host (its routes and addresses)
and on other networks (pool overlaps) is IPAM's to check, in its store
transaction."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ipam import pools as P
from libnet.errors import InvalidName, InvalidOption, InvalidSubnet
from libnet.model import PROXY_MAC_PREFIX, Network, is_proxy_mac

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


def check_name(name: object, what: str) -> str:
    """A name must be a DNS label (RFC 1123): it becomes a DNS name later."""
    if not isinstance(name, str) or _LABEL.fullmatch(name) is None:
        raise InvalidName(
            f"{what} name {name!r} is not a DNS label: 1-63 letters, digits and '-', "
            "starting and ending with a letter or digit",
            name=str(name),
        )
    return name


def check_mac(mac: object) -> str:
    """An endpoint's own MAC address (Docker's ``--mac-address``): six hex octets joined by
    colons, unicast (IEEE 802: the first octet's low bit clear), not all zeros, not of the proxy
    legs' range (:func:`libnet.model.is_proxy_mac`); lower case."""
    text = mac.lower() if isinstance(mac, str) else ""
    if _MAC.fullmatch(text) is None or int(text[:2], 16) & 1 or text == "00:00:00:00:00:00":
        raise InvalidOption(f"MAC address {mac!r} is not a unicast MAC address like 02:42:c6:33:64:02", mac=str(mac))
    if is_proxy_mac(text):  # the host's bridges tell frames to a proxy by it
        raise InvalidOption(f"MAC addresses starting {PROXY_MAC_PREFIX} are libnet proxies'", mac=text)
    return text


#: bounds on labels, so one record stays small (every agent reads every network)
MAX_LABELS, MAX_LABEL_KEY, MAX_LABEL_VALUE = 256, 253, 4096


def check_ifname(ifname: object) -> str:
    """An interface name inside a sandbox: 1 to 15 characters (IFNAMSIZ), none of them ``/``,
    ``:`` or whitespace, not ``.`` or ``..`` (what Linux accepts)."""
    if (
        not isinstance(ifname, str)
        or not 0 < len(ifname) <= 15
        or ifname in (".", "..")
        or any(c in "/:" or c.isspace() for c in ifname)
    ):
        raise InvalidName(f"interface name {ifname!r}: 1-15 characters, none of '/', ':' or space", ifname=str(ifname))
    return ifname


def check_labels(labels: object) -> dict[str, str]:
    """Labels: a mapping of strings to strings, at most :data:`MAX_LABELS` of them,
    keys of 1-253 characters (a DNS name's length, as Kubernetes' label prefixes),
    values up to 4096 characters."""
    if labels is None:
        return {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise InvalidOption("labels must map strings to strings")
    if len(labels) > MAX_LABELS:
        raise InvalidOption(f"at most {MAX_LABELS} labels, got {len(labels)}")
    for k, v in labels.items():
        if not 0 < len(k) <= MAX_LABEL_KEY or len(v) > MAX_LABEL_VALUE:
            raise InvalidOption(
                f"label {k[:32]!r}: keys are 1-{MAX_LABEL_KEY} characters, values at most {MAX_LABEL_VALUE}",
                label=k[:64],
            )
    return dict(labels)


def check_options(options: object) -> dict[str, Any]:
    """Driver options: a mapping with string keys (values checked by the driver)."""
    if options is None:
        return {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise InvalidOption("options must be a mapping with string keys")
    return dict(options)


def check_bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidOption(f"{what} must be true or false", option=what, value=str(value))
    return value


def check_int(value: object, what: str, lo: int, hi: int, hint: str = "") -> int:
    """An integer in ``lo..hi``: an int, or a string of ASCII decimal digits (Docker's
    options are strings; ``"²"`` and other Unicode digits are refused).  Floats,
    booleans, ``"1e3"``, infinities are refused, never truncated."""
    if isinstance(value, bool):
        n = None
    elif isinstance(value, int):
        n = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value.strip()) <= 12:
        n = int(value.strip())
    else:
        n = None
    if n is None or not lo <= n <= hi:
        raise InvalidOption(f"{what} must be a whole number {lo}..{hi}{hint}", option=what, value=str(value)[:64])
    return n


@dataclass(frozen=True)
class Family:
    """The checked addressing of one IP version of a network create request."""

    subnet: str | None = None
    gateway: str | None = None  # plain address
    ip_range: str | None = None
    aux: dict[str, str] = field(default_factory=dict)


def check_addressing(
    *,
    ipv6: bool,
    ipv4_subnet: object = None,
    ipv4_gateway: object = None,
    ipv4_range: object = None,
    ipv6_subnet: object = None,
    ipv6_gateway: object = None,
    ipv6_range: object = None,
    aux_addresses: object = None,
) -> tuple[Family, Family]:
    """The (IPv4, IPv6) addressing of a network, checked before anything is
    written; every refusal says why.  Auxiliary addresses (``{name: IP}``, one
    mapping for both versions) go to the subnet of their version.

    Subnets: valid CIDR without host bits, not loopback, multicast,
    link-local, unspecified, IPv4-mapped or reserved (:func:`ipam.pools.parse_subnet`).
    Gateways and aux addresses: inside their subnet, not its network (IPv4:
    nor broadcast) address, aux never the gateway, no address twice.  Ranges:
    inside their subnet.  A gateway, range or aux address needs its subnet."""
    out: list[tuple[P.Network | None, ipaddress.IPv4Address | ipaddress.IPv6Address | None, P.Network | None]] = []
    for v6, subnet, gw, rng, flag in (
        (False, ipv4_subnet, ipv4_gateway, ipv4_range, "--subnet"),
        (True, ipv6_subnet, ipv6_gateway, ipv6_range, "--subnet6"),
    ):
        family = "IPv6" if v6 else "IPv4"
        if v6 and not ipv6 and (subnet or gw or rng):
            raise InvalidOption(f"an {family} subnet, gateway or ip range was given with ipv6 turned off")
        if not subnet:
            if gw:
                raise InvalidOption(
                    f"a gateway needs its subnet: {family} gateway {gw} without {flag}", gateway=str(gw)
                )
            if rng:
                raise InvalidOption(
                    f"an ip range needs its subnet: {family} range {rng} without {flag}", range=str(rng)
                )
            out.append((None, None, None))
            continue
        net = P.parse_subnet(subnet, v6, what=f"{family} subnet")
        gateway = P.parse_address(gw, net, "gateway") if gw else None
        sub = P.parse_range(rng, net) if rng else None
        out.append((net, gateway, sub))
    aux = _split_aux(aux_addresses, out[0][0], out[1][0])
    families = []
    for (subnet_, gateway_, sub_), mine in zip(out, aux, strict=True):
        if subnet_ is not None:
            first = gateway_ if gateway_ is not None else ipaddress.ip_address(P.usable_range(subnet_)[0])
            mine = P.check_aux(mine, subnet_, first)
        families.append(
            Family(
                str(subnet_) if subnet_ is not None else None,
                str(gateway_) if gateway_ is not None else None,
                str(sub_) if sub_ is not None else None,
                mine,
            )
        )
    return families[0], families[1]


def _split_aux(aux: object, v4: P.Network | None, v6: P.Network | None) -> tuple[dict[str, Any], dict[str, Any]]:
    if aux is None or aux == {}:
        return {}, {}
    if not isinstance(aux, dict):
        raise InvalidSubnet("aux_addresses must map names to IP addresses")
    if v4 is None and v6 is None:
        raise InvalidOption("aux addresses need an explicit subnet (--subnet or --subnet6) to be inside")
    split: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
    for name, value in aux.items():
        try:
            version = ipaddress.ip_address(value).version if isinstance(value, str) else 0
        except ValueError:
            version = 0
        if version == 0:
            raise InvalidSubnet(f"aux address {name}={value!r} is not an IP address", address=str(value)[:64])
        net = v4 if version == 4 else v6
        if net is None:
            flag = "--subnet" if version == 4 else "--subnet6"
            raise InvalidSubnet(
                f"aux address {name}={value} is IPv{version} but the network has no explicit IPv{version} subnet "
                f"({flag})",
                address=str(value),
            )
        split[version == 6][name] = value
    return split


def parse_aux_args(values: Iterable[str]) -> dict[str, str]:
    """``NAME=IP`` arguments (the CLI's ``--aux-address``) as a mapping; a name given twice is refused."""
    out: dict[str, str] = {}
    for v in values:
        name, sep, ip = v.partition("=")
        if not sep or not name or not ip:
            raise InvalidOption(f"an aux address must look like NAME=IP, got {v!r}")
        if name in out:
            raise InvalidOption(f"aux address {name} is given twice ({out[name]} and {ip})")
        out[name] = ip
    return out


def check_wanted(nw: Network, ipv4: object, ipv6: object) -> None:
    """An endpoint's requested addresses: plain addresses (as ``docker network connect
    --ip``, no prefix) of the right version inside the network's subnets (``InvalidOption``)."""
    for version, wanted, subnet in ((4, ipv4, nw.ipv4_subnet), (6, ipv6, nw.ipv6_subnet)):
        if wanted is None:
            continue
        what = "ipv4" if version == 4 else "ipv6"
        try:
            addr = ipaddress.ip_address(wanted) if isinstance(wanted, str) else None
        except ValueError:
            addr = None
        if addr is None or addr.version != version:
            raise InvalidOption(
                f"{what} {wanted!r} is not an IPv{version} address (give an address, without a prefix length)",
                option=what,
                value=str(wanted)[:64],
            )
        if subnet is not None and addr not in ipaddress.ip_network(subnet):
            raise InvalidOption(
                f"{what} {addr} is not inside network {nw.name}'s subnet {subnet}", option=what, network_id=nw.id
            )
