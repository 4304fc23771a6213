"""The nftables table of a network proxy, built whole (pure: no kernel here).

A proxy (:mod:`libnet.proxies`) is a namespace with a *front* leg on the
clients' network and a *back* leg on the backends' network.  Its table, in
its own namespace only, is one nftables document that replaces the previous
one in a single transaction (:meth:`libnet.kernel.firewall.Firewall.replace_table`):
existing connections keep their NAT bindings, which live in conntrack, not in
the rules (nothing here flushes conntrack; the proxy plane's ``forget``
drops only the UDP entries of a backend gone).

Chains (family ``inet``):

- ``pre`` (nat, prerouting): a connection to the front address on a listen
  port is DNATed to one of the service's current backends of its family,
  spread by ``numgen inc`` over a map (round robin), to the service's port.
- ``fwd`` (filter, forward, policy drop): only forwarded connections (conntrack
  mark :data:`CT_PROXIED`, set with the DNAT) from the front leg to the back
  leg and its replies (conntrack ``established``) pass;
  a listen port without backends is refused (TCP reset, ICMP port
  unreachable), never black-holed.  Nothing else crosses, either way.
- ``in`` (filter, input): the same refusal for what reaches the proxy itself.
  These rules carry the service as a comment (:func:`service_comment`), so
  the kernel alone tells what the proxy forwards (``libnet-agent --adopt``,
  :mod:`libnet.adopt`, rebuilds a lost record from it).
- ``post`` (nat, postrouting): forwarded traffic leaving the back leg is SNATed
  to the back address, so replies come back through the proxy.
- ``mark`` (filter, prerouting, after the DNAT): every packet of a forwarded
  connection gets a mark by direction -- :data:`MARK_TO_BACK` for the
  original direction, :data:`MARK_TO_FRONT` for replies -- which the
  namespace's policy routing (:mod:`libnet.kernel.proxy_plane`) sends to the
  leg of that side.  So the two networks may have overlapping subnets: a
  packet is routed by the side it is going to, never by its address alone.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from libnet.errors import BadRequest

FAMILY = "inet"
CHAINS: dict[str, tuple[str, str, int, str]] = {  # name -> (type, hook, priority, policy)
    "pre": ("nat", "prerouting", -100, "accept"),
    "fwd": ("filter", "forward", 0, "drop"),
    "in": ("filter", "input", 0, "accept"),
    "post": ("nat", "postrouting", 100, "accept"),
    "mark": ("filter", "prerouting", -90, "accept"),
}
MARK_TO_BACK = 0x1
MARK_TO_FRONT = 0x2
#: the conntrack mark of a connection the ``pre`` chain forwards.  Not ``ct status dnat``: a
#: DNAT to the very address and port the client asked (a backend whose address equals the
#: proxy's front address, the networks' subnets overlapping) changes no tuple, so the kernel
#: sets no DNAT status -- and such a connection was delivered to the proxy itself, refused
CT_PROXIED = 0x1
_PROXIED = {"match": {"op": "==", "left": {"ct": {"key": "mark"}}, "right": CT_PROXIED}}
_SET_PROXIED = {"mangle": {"key": {"ct": {"key": "mark"}}, "value": CT_PROXIED}}
PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True)
class Forward:
    """One service: ``listen``/``protocol`` on the front address to ``port`` of ``backends``
    (bare IPv4 and IPv6 addresses, any order; an empty list refuses connections)."""

    listen: int
    protocol: str
    port: int
    backends: tuple[str, ...] = ()
    alias: str = ""  # the service's name (kept in the rules' comment)


@dataclass(frozen=True)
class ProxyTable:
    """Everything a proxy's table is made from.  Interface names are those inside
    the proxy's namespace; addresses are bare (no prefix length), None when the
    leg has no address of that family."""

    front_if: str
    back_if: str
    front_v4: str | None
    front_v6: str | None
    back_v4: str | None
    back_v6: str | None
    forwards: tuple[Forward, ...] = field(default_factory=tuple)
    front_nets: tuple[str, ...] = ()  # the legs' subnets (CIDRs), routed by mark
    back_nets: tuple[str, ...] = ()


def _fam(addr: str) -> str:
    return "ip" if ipaddress.ip_address(addr).version == 4 else "ip6"


def _match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _iif(name: str) -> dict[str, Any]:
    return _match({"meta": {"key": "iifname"}}, name)


def _oif(name: str) -> dict[str, Any]:
    return _match({"meta": {"key": "oifname"}}, name)


def _to(addr: str, proto: str, port: int) -> list[dict[str, Any]]:
    return [
        _match({"payload": {"protocol": _fam(addr), "field": "daddr"}}, addr),
        _match({"payload": {"protocol": proto, "field": "dport"}}, port),
    ]


def _dnat(fam: str, backends: list[str], port: int) -> dict[str, Any]:
    if len(backends) == 1:
        return {"dnat": {"family": fam, "addr": backends[0], "port": port}}
    spread = {"numgen": {"mode": "inc", "mod": len(backends), "offset": 0}}
    table = {"set": [[i, b] for i, b in enumerate(backends)]}
    return {"dnat": {"family": fam, "addr": {"map": {"key": spread, "data": table}}, "port": port}}


def _reject(proto: str) -> dict[str, Any]:
    if proto == "tcp":
        return {"reject": {"type": "tcp reset"}}
    return {"reject": {"type": "icmpx", "expr": "port-unreachable"}}


def check(table: ProxyTable) -> None:
    """``BadRequest`` for anything the kernel would refuse or misread."""
    for addr in (table.front_v4, table.front_v6, table.back_v4, table.back_v6):
        if addr is not None:
            ipaddress.ip_address(addr)  # ValueError is a programming error: stored addresses are checked
    for fw in table.forwards:
        if fw.protocol not in PROTOCOLS:
            raise BadRequest(f"protocol must be one of {PROTOCOLS}", protocol=fw.protocol)
        for port in (fw.listen, fw.port):
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise BadRequest(f"invalid port {port!r}", port=str(port))


COMMENT = "libnet-proxy-service "
_COMMENT = re.compile(r"^libnet-proxy-service ([a-z0-9][a-z0-9.-]{0,62}):(\d{1,5})/(tcp|udp) listen (\d{1,5})$")


def service_comment(fw: Forward) -> str:
    """The comment of a service's rules: ``libnet-proxy-service ALIAS:PORT/PROTO listen N``."""
    return f"{COMMENT}{fw.alias}:{fw.port}/{fw.protocol} listen {fw.listen}"


def parse_service_comment(comment: str) -> dict[str, Any] | None:
    """A service dict (``alias``, ``port``, ``protocol``, ``listen``) from :func:`service_comment`'s text, or None."""
    m = _COMMENT.match(comment or "")
    if m is None or not all(0 < int(m.group(i)) < 65536 for i in (2, 4)):
        return None
    return {"alias": m.group(1), "port": int(m.group(2)), "protocol": m.group(3), "listen": int(m.group(4))}


def rules(table: ProxyTable) -> list[tuple[str, list[dict[str, Any]]]]:
    """The table's rules as ``(chain, expression list)``, in order."""
    return [(chain, expr) for chain, expr, _ in _rules(table)]


def _rules(table: ProxyTable) -> list[tuple[str, list[dict[str, Any]], str | None]]:
    """:func:`rules` with each rule's comment (None: none)."""
    check(table)
    out: list[tuple[str, list[dict[str, Any]], str | None]] = [
        ("fwd", [_match({"ct": {"key": "state"}}, {"set": ["established", "related"]}, "in"), {"accept": None}], None),
        (
            "fwd",
            [_iif(table.front_if), _oif(table.back_if), _PROXIED, {"accept": None}],
            None,
        ),
    ]
    for fw in table.forwards:
        for front, back in ((table.front_v4, table.back_v4), (table.front_v6, table.back_v6)):
            if front is None:
                continue
            fam = _fam(front)
            mine = [b for b in sorted(set(fw.backends)) if _fam(b) == fam] if back is not None else []
            to_front = [_iif(table.front_if), *_to(front, fw.protocol, fw.listen)]
            if mine:
                out.append(("pre", [*to_front, _SET_PROXIED, _dnat(fam, mine, fw.port)], None))
            out.append(("fwd", [*to_front, _reject(fw.protocol)], None))
            out.append(("in", [*to_front, _reject(fw.protocol)], service_comment(fw) if fw.alias else None))
    dnat = _match({"ct": {"key": "status"}}, "dnat", "in")
    for direction, mark in (("original", MARK_TO_BACK), ("reply", MARK_TO_FRONT)):
        way = _match({"ct": {"key": "direction"}}, direction)
        # ``dnat``: connections made before the conntrack mark existed (an upgrade keeps them)
        for proxied in (_PROXIED, dnat):
            out.append(("mark", [proxied, way, {"mangle": {"key": {"meta": {"key": "mark"}}, "value": mark}}], None))
    for back in (table.back_v4, table.back_v6):
        if back is not None:
            nfproto = _match({"meta": {"key": "nfproto"}}, "ipv4" if _fam(back) == "ip" else "ipv6")
            snat = {"snat": {"family": _fam(back), "addr": back}}
            out.append(("post", [_oif(table.back_if), nfproto, _PROXIED, snat], None))
    return out


def commands(name: str, table: ProxyTable) -> list[dict[str, Any]]:
    """One nftables transaction replacing table ``name`` (family inet) with ``table``'s:
    add (so the delete cannot fail), delete, then build it again."""
    ref = {"family": FAMILY, "name": name}
    cmds: list[dict[str, Any]] = [{"add": {"table": ref}}, {"delete": {"table": ref}}, {"add": {"table": ref}}]
    for chain, (ctype, hook, prio, policy) in CHAINS.items():
        spec = {"family": FAMILY, "table": name, "name": chain, "type": ctype, "hook": hook, "prio": prio}
        cmds.append({"add": {"chain": {**spec, "policy": policy}}})
    for chain, expr, comment in _rules(table):
        rule = {"family": FAMILY, "table": name, "chain": chain, "expr": expr}
        cmds.append({"add": {"rule": {**rule, "comment": comment} if comment else rule}})
    return cmds


#: the family of the host-side table that keeps proxied frames out of the bridges' conntrack
#: (:func:`untrack_commands`); named like the instance's ``inet`` table, a table of another family
UNTRACK_FAMILY = "bridge"
UNTRACK_PRIORITY = -300  # before br_netfilter hands the frame to the IP hooks (conntrack at -200)


def untrack_commands(name: str, ports: Sequence[str], macs: Sequence[str]) -> list[dict[str, Any]]:
    """One nftables transaction replacing the bridge-family table ``name`` of the namespace
    holding the bridges: frames entering a bridge from one of ``ports`` (the host sides of
    proxy legs' veths) or addressed to one of ``macs`` (the legs' MACs, of
    :func:`libnet.model.proxy_leg_mac`'s range, which no other endpoint has) are ``notrack``.

    With ``br_netfilter`` (``bridge-nf-call-iptables=1``) the host keeps a conntrack entry for
    every bridged connection; a proxied one crosses two bridges, so it cost two entries and
    two lookups per packet in the host besides the proxy's own conntrack, which does the
    NAT.  Both directions are matched, so the host never sees half a connection.  With no
    ports and no MACs the table is deleted (add first, so the delete cannot fail)."""
    ref = {"family": UNTRACK_FAMILY, "name": name}
    cmds: list[dict[str, Any]] = [{"add": {"table": ref}}, {"delete": {"table": ref}}]
    if not ports and not macs:
        return cmds
    cmds.append({"add": {"table": ref}})
    spec = {"family": UNTRACK_FAMILY, "table": name, "name": "pre"}
    cmds.append(
        {
            "add": {
                "chain": {**spec, "type": "filter", "hook": "prerouting", "prio": UNTRACK_PRIORITY, "policy": "accept"}
            }
        }
    )
    for key, values in (("iifname", sorted(set(ports))), ("ether", sorted({m.lower() for m in macs}))):
        if not values:
            continue
        left: dict[str, Any] = (
            {"meta": {"key": "iifname"}} if key == "iifname" else {"payload": {"protocol": "ether", "field": "daddr"}}
        )
        expr = [_match(left, {"set": list(values)}), {"notrack": None}]
        cmds.append({"add": {"rule": {"family": UNTRACK_FAMILY, "table": name, "chain": "pre", "expr": expr}}})
    return cmds
