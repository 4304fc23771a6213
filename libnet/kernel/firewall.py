"""nftables rules in a table of libnet's own, per namespace.

Each libnet instance has its own table (``inet libnet-<instance>``, see
:func:`libnet.ownership.firewall_table`): everything in it is the
instance's, and nothing outside it is ever touched -- not another
program's table, not another instance's.  Removing the table removes
everything the instance did in that namespace.  (``TABLE``, the old shared
name, is only the default of the ``table`` parameter, for tests.)

Rules are built as nftables JSON documents and handed to libnftables (the
``pip-nftables`` binding of the same library ``nft`` uses) -- never as
concatenated rule strings.  Every rule carries a comment ``libnet:<key>``;
the key makes adding idempotent and lets :meth:`Firewall.remove` find the
rules again after a restart.

libnftables talks netlink from the thread that calls it, so each firewall
works on its own :class:`~libnet.kernel.netns.NamespaceThread`.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import nftables

from libnet.errors import BadRequest, KernelError
from libnet.kernel import fds, netns

FAMILY = "inet"
#: the default table name (tests); libnet itself always passes the instance's table
TABLE = "libnet"
COMMENT_PREFIX = "libnet:"

# chain name -> (type, hook, priority).  Two filter chains on the forward hook:
# a drop is final in any base chain, an accept only ends its own chain, so
# "internal" (earlier) drops even what "forward" would accept as published-port
# traffic, while "forward" lets DNATed traffic pass its isolation drops.
CHAINS: dict[str, tuple[str, str, int]] = {
    "internal": ("filter", "forward", -10),
    "forward": ("filter", "forward", 0),
    "input": ("filter", "input", 0),
    "egress": ("filter", "output", 0),
    "prerouting": ("nat", "prerouting", -100),
    "output": ("nat", "output", -100),
    "postrouting": ("nat", "postrouting", 100),
}
BRIDGES_SET = "bridges"  # every libnet bridge of the namespace, for isolation
BASE_COMMENT = "libnet-base"


def _meta(key: str, op: str, value: str) -> dict[str, Any]:
    return {"match": {"op": op, "left": {"meta": {"key": key}}, "right": value}}


def _saddr(subnet: str) -> dict[str, Any]:
    try:
        net = ipaddress.ip_network(subnet)
    except ValueError:
        raise BadRequest(f"invalid subnet {subnet!r}", subnet=subnet) from None
    proto = "ip" if net.version == 4 else "ip6"
    return {
        "match": {
            "op": "==",
            "left": {"payload": {"protocol": proto, "field": "saddr"}},
            "right": {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}},
        }
    }


def _check_key(key: str) -> None:
    if not key or len(key) > 100 or not key.isprintable() or '"' in key:
        raise BadRequest(f"invalid rule key {key!r}", key=key)


def masquerade_rule(subnet: str, bridge: str) -> tuple[str, list[dict[str, Any]]]:
    """Masquerade ``subnet`` when it leaves through any device but ``bridge``."""
    return "postrouting", [_saddr(subnet), _meta("oifname", "!=", bridge), {"masquerade": None}]


def drop_between_rules(a: str, b: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """Drop forwarding from bridge ``a`` to ``b`` and back."""
    return [
        ("forward", [_meta("iifname", "==", a), _meta("oifname", "==", b), {"drop": None}]),
        ("forward", [_meta("iifname", "==", b), _meta("oifname", "==", a), {"drop": None}]),
    ]


def internal_rules(bridge: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """Drop all forwarding into or out of ``bridge`` (an internal network)."""
    return [
        ("internal", [_meta("iifname", "==", bridge), _meta("oifname", "!=", bridge), {"drop": None}]),
        ("internal", [_meta("oifname", "==", bridge), _meta("iifname", "!=", bridge), {"drop": None}]),
    ]


def isolation_rules(bridge: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """Drop forwarding from ``bridge`` to any other libnet bridge (the ``bridges`` set)."""
    return [
        (
            "forward",
            [
                _meta("iifname", "==", bridge),
                _meta("oifname", "==", "@" + BRIDGES_SET),
                _meta("oifname", "!=", bridge),
                {"drop": None},
            ],
        ),
    ]


def tunnel_guard_rules(tunnel_range: str, wg_ifnames: list[str]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Drop every locally sent packet to ``tunnel_range`` that would leave other
    than through one of the WireGuard devices ``wg_ifnames`` (or loopback): VXLAN
    of an encrypted overlay never goes out in clear, also not while the
    WireGuard device is gone (a crashed or restarting ``wireguard-go``)."""
    try:
        net = ipaddress.ip_network(tunnel_range)
    except ValueError:
        raise BadRequest(f"invalid tunnel range {tunnel_range!r}", subnet=tunnel_range) from None
    fam = "ip" if net.version == 4 else "ip6"
    prefix = {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}
    oif = {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": {"set": [*wg_ifnames, "lo"]}}}
    return [("egress", [_daddr(fam, "==", prefix), oif, {"drop": None}])]


def encrypted_vni_rules(vni: int, port: int, wg_ifnames: list[str]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Drop VXLAN of ``vni`` (UDP ``port``) that did not come out of, or would not go into,
    one of the WireGuard devices ``wg_ifnames``: every VXLAN device of a namespace shares one wildcard socket,
    sorted only by VNI, so without this an encrypted overlay would take clear VXLAN from
    anyone on the underlay (a revoked host too; the kind of CVE-2023-28840).  The VNI is
    the 24 bits after the VXLAN flags and reserved field (RFC 7348 s.5)."""
    udp = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}}
    dport = {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": port}}
    iif = {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": {"set": list(wg_ifnames)}}}
    oif = {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": {"set": [*wg_ifnames, "lo"]}}}
    vni_is = {"match": {"op": "==", "left": {"payload": {"base": "th", "offset": 96, "len": 24}}, "right": vni}}
    return [
        ("input", [udp, dport, iif, vni_is, {"drop": None}]),
        # and out: whatever its destination (a peer's tunnel address outside this host's range, e.g. a
        # host configured with another encryption_range), never other than through WireGuard
        ("egress", [udp, dport, oif, vni_is, {"drop": None}]),
    ]


PROTOCOLS = ("tcp", "udp")
LOOPBACK_V4 = ipaddress.ip_network("127.0.0.0/8")
LOOPBACK_V6 = ipaddress.ip_address("::1")


def _daddr(fam: str, op: str, value: Any) -> dict[str, Any]:
    return {"match": {"op": op, "left": {"payload": {"protocol": fam, "field": "daddr"}}, "right": value}}


def localhost_rules(bridge: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """What publishing on ``127.0.0.1`` needs besides ``route_localnet`` on ``bridge``.

    - Masquerade what leaves through ``bridge`` with a loopback source: a
      connection from the host to ``127.0.0.1:<published port>``, DNATed in
      the output hook, keeps its source ``127.0.0.1``, which the container
      could not answer.  Docker's rule is ``-o docker0 -m addrtype --src-type
      LOCAL -j MASQUERADE``; only loopback sources need it (the host's other
      addresses are routable from the container), so only they are rewritten.
    - Drop new connections from the bridge to ``127.0.0.0/8``: with
      ``route_localnet=1`` the kernel would otherwise route a container's
      packets to ``127.0.0.1`` to the host's local services (CVE-2020-8558;
      Kubernetes' ``KUBE-FIREWALL`` guard against the same).  Replies of the
      host's own connections (established) pass.

    IPv6 has no ``route_localnet``: ``::1`` is served by a relay
    (:mod:`libnet.drivers.relay`), not by these rules.
    """
    loopback = {"prefix": {"addr": str(LOOPBACK_V4.network_address), "len": LOOPBACK_V4.prefixlen}}
    saddr = {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": loopback}}
    state = {"match": {"op": "!=", "left": {"ct": {"key": "state"}}, "right": {"set": ["established", "related"]}}}
    return [
        ("postrouting", [_meta("oifname", "==", bridge), saddr, {"masquerade": None}]),
        ("input", [_meta("iifname", "==", bridge), _daddr("ip", "==", loopback), state, {"drop": None}]),
    ]


def is_loopback(ip: str | None) -> bool:
    """Whether ``ip`` is a loopback address (``127.0.0.0/8``, ``::1``)."""
    return ip is not None and ipaddress.ip_address(ip).is_loopback


def port_rules(
    host_port: int, container_ip: str, container_port: int, protocol: str, bridge: str, host_ip: str | None = None
) -> list[tuple[str, list[dict[str, Any]]]]:
    """Publish ``container_ip:container_port`` on the host's ``host_port``.

    - DNAT for traffic arriving from outside (prerouting) and made on the
      host (output), to any local address of the host or only ``host_ip``.
      A loopback ``host_ip`` gets no prerouting rule (nothing legitimate
      arrives from outside for ``127.0.0.1``); IPv6 ``::1`` gets no rule at
      all: the kernel drops a reply routed to ``::1`` that arrives on the
      bridge (IPv6 has no ``route_localnet``), so a userspace relay serves it
      (:mod:`libnet.drivers.relay`, like Docker's ``docker-proxy``).
    - Masquerade hairpin traffic of other containers of the bridge (routed,
      when ``bridge-nf-call-iptables`` is 0), so the reply goes back through
      the host.
    - Masquerade a container's traffic to itself through its own published
      port (Docker: ``-s C -d C -p tcp --dport P -j MASQUERADE``).  With
      ``br_netfilter`` (``bridge-nf-call-iptables=1``) this traffic is bridged
      back out of the port it came from: the frame has no input interface in
      the postrouting hook, so the rule matches addresses only.  Without the
      masquerade the container drops its own source address arriving from
      outside.
    """
    if protocol not in PROTOCOLS:
        raise BadRequest(f"protocol must be one of {PROTOCOLS}", protocol=protocol)
    for port in (host_port, container_port):
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise BadRequest(f"invalid port {port!r}", port=str(port))
    try:
        ip = ipaddress.ip_address(container_ip)
        hip = ipaddress.ip_address(host_ip) if host_ip else None
    except ValueError as exc:
        raise BadRequest(f"invalid address: {exc}") from None
    if hip is not None and hip.version != ip.version:
        raise BadRequest("host and container address are of different IP versions", host_ip=host_ip)
    if hip == LOOPBACK_V6:
        return []
    fam = "ip" if ip.version == 4 else "ip6"
    match: list[dict[str, Any]] = [
        {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4" if ip.version == 4 else "ipv6"}},
        {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": protocol, "field": "dport"}}, "right": host_port}},
    ]
    if hip is not None and not hip.is_unspecified:  # 0.0.0.0 / ::: every address of its family
        match.append(_daddr(fam, "==", str(hip)))
    dnat: dict[str, Any] = {"dnat": {"family": fam, "addr": str(ip), "port": container_port}}
    output = [*match, _daddr(fam, "!=", str(LOOPBACK_V6))] if ip.version == 6 else match
    to_container: list[dict[str, Any]] = [
        _daddr(fam, "==", str(ip)),
        {"match": {"op": "==", "left": {"payload": {"protocol": protocol, "field": "dport"}}, "right": container_port}},
        {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
        {"masquerade": None},
    ]
    hairpin = [_meta("iifname", "==", bridge), _meta("oifname", "==", bridge), *to_container]
    own: dict[str, Any] = {
        "match": {"op": "==", "left": {"payload": {"protocol": fam, "field": "saddr"}}, "right": str(ip)}
    }
    rules: list[tuple[str, list[dict[str, Any]]]] = (
        [] if hip is not None and hip.is_loopback else [("prerouting", [*match, dnat])]
    )
    return [*rules, ("output", [*output, dnat]), ("postrouting", hairpin), ("postrouting", [own, *to_container])]


class Firewall:
    """One libnet nftables table (``table``, family inet) in one namespace (``ns=None``: this process's)."""

    def __init__(self, ns: str | None = None, table: str = TABLE) -> None:
        if not table or len(table) > 64 or not all(c.isalnum() or c in "-_" for c in table):
            raise BadRequest(f"invalid nftables table name {table!r}", table=table)
        self.ns = ns
        self.table = table
        self._thread = netns.NamespaceThread(ns)
        self._nft: nftables.Nftables | None = None

    def __enter__(self) -> Firewall:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the namespace thread."""
        self._thread.close()

    # --- plumbing -----------------------------------------------------------

    def _cmd(self, commands: list[dict[str, Any]], action: str) -> dict[str, Any]:
        def body() -> dict[str, Any]:
            if self._nft is None:
                self._check_descriptors()
                self._nft = nftables.Nftables()
                self._nft.set_json_output(True)
                self._nft.set_handle_output(True)
            rc, out, err = self._nft.json_cmd({"nftables": commands})
            if rc != 0:
                raise KernelError(f"{action}: nftables: {str(err).strip()}", netns=self.ns)
            return out if isinstance(out, dict) else json.loads(out or "{}")

        return self._thread.call(body)

    def _check_descriptors(self) -> None:
        """A new libnftables context opens its netlink socket on the lowest free number and waits
        on it with select(2): glibc aborts the whole process on a number >= ``FD_SETSIZE``, and
        libnftables exits it when no descriptor is left at all.  Refused here instead, said so
        (the low numbers are kept for it, :mod:`libnet.kernel.fds`, but clients' connections
        take them too)."""
        try:
            low = fds.lowest_free()
        except OSError as exc:
            raise KernelError(f"nftables: no file descriptor left: {exc}", netns=self.ns) from exc
        if low >= fds.FD_SETSIZE:
            raise KernelError(
                f"nftables: no file descriptor below {fds.FD_SETSIZE} free (libnftables waits with select(2)); "
                "too many open connections",
                netns=self.ns,
            )

    def _table_cmds(self, fresh: bool) -> list[dict[str, Any]]:
        """Commands creating table, set and chains (all idempotent).

        ``fresh``: the table is new, so also add the base rule that lets
        published-port (DNATed) traffic through the isolation drops -- first
        in its chain, where later rule groups cannot get in front of it.
        """
        cmds: list[dict[str, Any]] = [
            {"add": {"table": {"family": FAMILY, "name": self.table}}},
            {"add": {"set": {"family": FAMILY, "table": self.table, "name": BRIDGES_SET, "type": "ifname"}}},
        ]
        for name, (ctype, hook, prio) in CHAINS.items():
            chain = {
                "family": FAMILY,
                "table": self.table,
                "name": name,
                "type": ctype,
                "hook": hook,
                "prio": prio,
                "policy": "accept",
            }
            cmds.append({"add": {"chain": chain}})
        if fresh:
            dnat = {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}
            rule = {
                "family": FAMILY,
                "table": self.table,
                "chain": "forward",
                "comment": BASE_COMMENT,
                "expr": [dnat, {"accept": None}],
            }
            cmds.append({"add": {"rule": rule}})
        return cmds

    def add_bridge(self, bridge: str) -> bool:
        """Add ``bridge`` to the set of libnet bridges (isolation targets);
        False if it was there already (then nothing changed)."""
        exists = self._has_table()
        if exists and bridge in self.bridges():
            return False
        cmds = self._table_cmds(fresh=not exists)
        element = {"family": FAMILY, "table": self.table, "name": BRIDGES_SET, "elem": [bridge]}
        cmds.append({"add": {"element": element}})
        self._cmd(cmds, "add bridge to set")
        return True

    def remove_bridge(self, bridge: str) -> None:
        """Remove ``bridge`` from the set; absent is fine."""
        if bridge in self.bridges():
            element = {"family": FAMILY, "table": self.table, "name": BRIDGES_SET, "elem": [bridge]}
            self._cmd([{"delete": {"element": element}}], "remove bridge from set")

    def bridges(self) -> set[str]:
        """The bridges in the set."""
        if not self._has_table():
            return set()
        out = self._cmd([{"list": {"set": {"family": FAMILY, "table": self.table, "name": BRIDGES_SET}}}], "list set")
        for item in out.get("nftables", []):
            if "set" in item:
                return set(item["set"].get("elem", []))
        return set()

    def delete_table(self) -> None:
        """Remove this table and every rule in it (no other table); missing is fine."""
        self._cmd(
            [
                {"add": {"table": {"family": FAMILY, "name": self.table}}},
                {"delete": {"table": {"family": FAMILY, "name": self.table}}},
            ],
            "delete table",
        )

    def rules(self) -> list[dict[str, Any]]:
        """libnet's rules: dicts with ``key``, ``chain``, ``handle``, ``expr``."""
        out = self._cmd(
            [{"list": {"table": {"family": FAMILY, "name": self.table}}}] if self._has_table() else [], "list rules"
        )
        rules = []
        for item in out.get("nftables", []):
            rule = item.get("rule")
            if rule and str(rule.get("comment", "")).startswith(COMMENT_PREFIX):
                rules.append(
                    {
                        "key": rule["comment"][len(COMMENT_PREFIX) :],
                        "chain": rule["chain"],
                        "handle": rule["handle"],
                        "expr": rule["expr"],
                    }
                )
        return rules

    def replace_table(self, commands: list[dict[str, Any]]) -> None:
        """Run ``commands`` -- a whole document rebuilding this table, e.g.
        :func:`libnet.kernel.proxy_nat.commands` -- as one nftables transaction:
        the old table until it commits, the new one after, nothing in between.
        ``BadRequest`` if a command names another table."""
        for cmd in commands:
            for body in cmd.values():
                obj = next(iter(body.values())) if isinstance(body, dict) and body else None
                name = obj.get("table", obj.get("name")) if isinstance(obj, dict) else None
                if name != self.table or not isinstance(body, dict) or len(body) != 1:
                    raise BadRequest(f"a command for another table than {self.table}: {cmd!r}", table=self.table)
        self._cmd(commands, "replace table")

    def table_rules(self) -> list[dict[str, Any]]:
        """Every rule of the table (``chain``, ``expr``, ``comment`` if it has one); none without the table."""
        if not self._has_table():
            return []
        out = self._cmd([{"list": {"table": {"family": FAMILY, "name": self.table}}}], "list rules")
        return [
            {
                "chain": item["rule"]["chain"],
                "expr": item["rule"]["expr"],
                **({"comment": item["rule"]["comment"]} if item["rule"].get("comment") else {}),
            }
            for item in out.get("nftables", [])
            if "rule" in item
        ]

    def published_by_others(self, protocol: str, port: int) -> list[str]:
        """The other libnet instances' tables in this namespace (``inet libnet-*``)
        that DNAT ``protocol`` port ``port``: a second agent on the host must not
        publish a port the first one does (its rule would take the traffic).  Read
        only: another instance's table is never changed."""
        out = self._cmd([{"list": {"ruleset": None}}], "list ruleset")
        holders = set()
        for item in out.get("nftables", []):
            rule = item.get("rule")
            if not rule or rule.get("family") != FAMILY or rule.get("table") == self.table:
                continue
            if not str(rule.get("table", "")).startswith(TABLE + "-"):
                continue
            expr = rule.get("expr", [])
            if any("dnat" in e for e in expr) and any(
                e.get("match", {}).get("left") == {"payload": {"protocol": protocol, "field": "dport"}}
                and e["match"].get("right") == port
                for e in expr
            ):
                holders.add(rule["table"])
        return sorted(holders)

    def _has_table(self) -> bool:
        out = self._cmd([{"list": {"tables": {"family": FAMILY}}}], "list tables")
        return any(i.get("table", {}).get("name") == self.table for i in out.get("nftables", []))

    def keys(self) -> set[str]:
        """The keys of the rule groups present."""
        return {r["key"] for r in self.rules()}

    # --- rule groups --------------------------------------------------------

    def add(self, key: str, rules: list[tuple[str, list[dict[str, Any]]]]) -> None:
        """Install a group of rules under ``key``, replacing an older group.

        Table, old rules and new rules change in one nftables transaction, so
        a failure leaves the previous state.
        """
        _check_key(key)
        exists = self._has_table()
        cmds = self._table_cmds(fresh=not exists)
        if exists:
            cmds += self._delete_cmds(key)
        for chain, expr in rules:
            if chain not in CHAINS:
                raise BadRequest(f"unknown chain {chain!r}", chain=chain)
            cmds.append(
                {
                    "add": {
                        "rule": {
                            "family": FAMILY,
                            "table": self.table,
                            "chain": chain,
                            "comment": COMMENT_PREFIX + key,
                            "expr": expr,
                        }
                    }
                }
            )
        self._cmd(cmds, f"add rules {key}")

    def _delete_cmds(self, key: str) -> list[dict[str, Any]]:
        return [
            {"delete": {"rule": {"family": FAMILY, "table": self.table, "chain": r["chain"], "handle": r["handle"]}}}
            for r in self.rules()
            if r["key"] == key
        ]

    def remove(self, key: str) -> None:
        """Remove the rules installed under ``key``; none is fine."""
        _check_key(key)
        if not self._has_table():
            return
        cmds = self._delete_cmds(key)
        if cmds:
            self._cmd(cmds, f"remove rules {key}")

    def masquerade(self, key: str, subnet: str, bridge: str) -> None:
        """Masquerade traffic of ``subnet`` leaving other than via ``bridge``."""
        self.add(key, [masquerade_rule(subnet, bridge)])

    def isolate(self, key: str, bridge_a: str, bridge_b: str) -> None:
        """Drop forwarding between two bridges, both ways."""
        self.add(key, drop_between_rules(bridge_a, bridge_b))

    def internal(self, key: str, bridge: str) -> None:
        """Drop all forwarding into and out of ``bridge``."""
        self.add(key, internal_rules(bridge))

    def remove_prefix(self, prefix: str) -> None:
        """Remove every rule group whose key starts with ``prefix``."""
        keys = {r["key"] for r in self.rules() if r["key"].startswith(prefix)}
        rules = [r for r in self.rules() if r["key"] in keys]
        if rules:
            self._cmd(
                [
                    {
                        "delete": {
                            "rule": {"family": FAMILY, "table": self.table, "chain": r["chain"], "handle": r["handle"]}
                        }
                    }
                    for r in rules
                ],
                f"remove rules {prefix}*",
            )
