"""What the bridge driver makes, by name -- pure, no kernel: its options, the
names and marks of its links, and the firewall rule groups of a network.

See :mod:`libnet.drivers.bridge` for how these are used.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from libnet import ownership
from libnet.driverapi import EndpointInfo, NetworkInfo
from libnet.errors import InvalidOption
from libnet.kernel.api import RuleList
from libnet.kernel.firewall import internal_rules, isolation_rules, localhost_rules, masquerade_rule
from libnet.kernel.netlink import IFNAMSIZ, Link
from libnet.ownership import Mark
from libnet.validation import check_int

#: names of libnet's links: a link named so without this instance's mark is reported as foreign
BRIDGE_PREFIX, VETH_PREFIX = "lnb-", "lnv"
#: the sandbox side of a veth on its way out (renamed so its name is free at once)
RETIRED_PREFIX = "lnx"
#: the marks of libnet before instances; re-marked by reconcile when they match a stored object
LEGACY_NET, LEGACY_EP = "libnet:net:", "libnet:ep:"
DEFAULT_MTU = 1500
_IFNAME = re.compile(rf"[A-Za-z0-9_.@+-]{{1,{IFNAMSIZ}}}")
#: the docker plugin's handed-over interfaces (agent.docker_plugin.src_name)
HANDOVER_PREFIX = "lnd"
#: the name spaces libnet derives link names in (bridge_name(), host_ifname(), retired_ifname(), the
#: docker plugin's handover): a bridge_name option may take none of them, whatever its length -- a
#: shorter or longer name is still read as libnet's by reconcile and `libnet inventory`
_DERIVED = re.compile(rf"{BRIDGE_PREFIX}.*|(?:{VETH_PREFIX}|{RETIRED_PREFIX}|{HANDOVER_PREFIX})[0-9a-f]+", re.DOTALL)

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
    name: str = nw.options.get("bridge_name") or BRIDGE_PREFIX + nw.id[: IFNAMSIZ - len(BRIDGE_PREFIX)]
    return name


def host_ifname(ep: EndpointInfo) -> str:
    """The host side of an endpoint's veth."""
    return host_ifname_of(ep.id)


def host_ifname_of(endpoint_id: str) -> str:
    """The host side of the veth of the endpoint with id ``endpoint_id``."""
    return VETH_PREFIX + endpoint_id[: IFNAMSIZ - len(VETH_PREFIX)]


def retired_ifname(ep: EndpointInfo) -> str:
    """The name the sandbox side of an endpoint's veth takes when it leaves."""
    return RETIRED_PREFIX + ep.id[: IFNAMSIZ - len(RETIRED_PREFIX)]


def link_mark(instance: str, kind: str, owner: str, name: str) -> str:
    """The mark of a link (the owner's name left out when it cannot be part of one)."""
    return ownership.mark(instance, kind, owner, name if ":" not in name and len(name) <= 63 else "")


def describe(link: Link) -> str:
    """What a link is, as far as its mark tells (for messages)."""
    found = Mark.parse(link.alias)
    what = f"{link.kind or 'interface'} {link.name}"
    if found is None:
        alias = link.alias if not link.alias or len(link.alias) <= 40 else link.alias[:37] + "..."
        return f"{what} (alias {alias!r}, no libnet mark)" if alias else f"{what} (not libnet's)"
    owner = f"{found.name} ({found.owner[:12]})" if found.name else found.owner[:12]
    kind = "network" if found.kind == "net" else "endpoint"
    return f"{what} (of libnet {kind} {owner}, instance {found.instance})"


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise InvalidOption(f"option {name!r} must be true or false", option=name, value=str(value))


def parse_options(options: dict[str, Any]) -> dict[str, Any]:
    """The bridge driver's network options, validated and normalised (``InvalidOption``)."""
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
                    f"bridge_name {value!r} is in the name space of libnet's own links (lnb-*, and lnv/lnx/lnd "
                    "+ hex digits): another network's bridge or an endpoint's veth could collide with it, and "
                    "libnet would read it as one of its own; choose another name",
                    option=key,
                    value=value,
                )
            out["bridge_name"] = value
        elif canon == "mtu":
            out["mtu"] = check_int(value, "mtu", 1280, 65535, " (IPv6 needs at least 1280)")
        else:
            out["icc"] = _bool(key, value)
    return out


def network_rules(nw: NetworkInfo, br: str) -> list[tuple[str, RuleList]]:
    """The network's firewall rule groups: (key, rules)."""
    groups = [(f"net:{nw.id}:isolate", isolation_rules(br))]
    if nw.internal:
        groups.append((f"net:{nw.id}:internal", internal_rules(br)))
    else:
        subnets = [s for s in (nw.ipv4_subnet, nw.ipv6_subnet) if s]
        groups.append((f"net:{nw.id}:masq", [masquerade_rule(s, br) for s in subnets]))
        if nw.ipv4_subnet:
            groups.append((f"net:{nw.id}:localhost", localhost_rules(br)))
    return groups


def orphan(link: Link, mark: Mark, nets: dict[str, NetworkInfo], joined: dict[str, EndpointInfo]) -> bool:
    """Whether a link marked by this instance belongs to no stored network / joined endpoint of this driver.

    Only the driver's own kinds of link count: a bridge marked ``net``, an
    ``lnv`` veth marked ``ep`` (another driver's marked devices are its own)."""
    if mark.kind == "net":
        return link.kind == "bridge" and mark.owner not in nets
    return link.kind == "veth" and link.name.startswith(VETH_PREFIX) and mark.owner not in joined


def unused(link: Link, mark: Mark, ports: Counter[int], recorded: set[str]) -> bool:
    """Whether an orphaned link of this instance may go: nothing depends on it.

    The store may have lost a record (a lost SQLite -wal, an older backup, a
    deleted key): "the store does not know it" alone is no proof.  A bridge
    goes only without ports; a veth only if the store still holds its
    endpoint, unjoined (a join cut short), or it is already unplugged (a
    leave cut short before its deletion)."""
    if mark.kind == "net":
        return not ports.get(link.index)
    return mark.owner in recorded or (link.master is None and not link.up)
