"""What the ``libnet`` CLI shows of networks, endpoints and sandboxes: the
columns and template fields of ``ls`` (Docker's field names), the ``--filter``
keys, and the readable ``inspect`` pages (no Python reprs: lists are joined,
mappings are ``KEY=VALUE``, ports are Docker's ``HOST->CONTAINER/PROTO``).

The objects are the agent's JSON (``agent/openapi.json``)."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from agent.cli_output import View, as_text, console, equals, has_label, id_prefix, name_matches, table


def ip(cidr: str | None) -> str:
    """``198.51.100.2/24`` -> ``198.51.100.2``; '' for None."""
    return str(ipaddress.ip_interface(cidr).ip) if cidr else ""


def port_text(pm: dict[str, Any]) -> str:
    """A published port as Docker prints it: ``0.0.0.0:8080->80/tcp``, ``[::1]:9091->90/tcp``."""
    host = pm.get("host_ip") or ""
    host = f"[{host}]" if ":" in host else host
    return f"{host + ':' if host else ''}{pm['host_port']}->{pm['container_port']}/{pm['protocol']}"


def when(epoch: float | None) -> str:
    """An epoch time as UTC ISO 8601 ('' for none)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch else ""


def _short(value: str | None) -> str:
    return (value or "")[:12]


NETWORKS = View(
    columns=(
        ("NETWORK ID", "ID"),
        ("NAME", "Name"),
        ("DRIVER", "Driver"),
        ("SCOPE", "Scope"),
        ("IPV4", "IPv4"),
        ("IPV6", "IPv6"),
        ("INTERNAL", "Internal"),
    ),
    fields={
        "ID": lambda n: _short(n["id"]),
        "Name": lambda n: n["name"],
        "Driver": lambda n: n["driver"],
        "Scope": lambda n: n["scope"],
        "IPv4": lambda n: n.get("ipv4_subnet") or "",
        "IPv6": lambda n: n.get("ipv6_subnet") or "",
        "Internal": lambda n: bool(n.get("internal")),
        "Labels": lambda n: n.get("labels") or {},
        "Options": lambda n: n.get("options") or {},
        "CreatedAt": lambda n: when(n.get("created")),
    },
    filters={
        "name": name_matches("name"),
        "id": id_prefix(),
        "driver": equals("driver"),
        "scope": equals("scope"),
        "label": has_label,
    },
)


#: ``network inspect --format``: the fields of ``ls``, the id in full (also as docker's
#: ``.Id``), ``.Created`` and the names of the network's ``.Endpoints``
NETWORK_DETAIL = View(
    columns=NETWORKS.columns,
    fields={
        **NETWORKS.fields,
        "ID": lambda n: n["id"],
        "Id": lambda n: n["id"],
        "Created": lambda n: when(n.get("created")),
        "Endpoints": lambda n: [e["name"] for e in n.get("endpoints") or []],
    },
)


def endpoint_view(networks: dict[str, str], with_network: bool = True) -> View:
    """Endpoints, their network shown by name (``networks``: id -> name)."""

    def network(e: dict[str, Any]) -> str:
        return networks.get(e["network_id"]) or _short(e["network_id"])

    def on_network(e: dict[str, Any], value: str) -> bool:
        return value in (network(e), e["network_id"]) or (len(value) >= 3 and e["network_id"].startswith(value))

    columns: tuple[tuple[str, str], ...] = (("ENDPOINT ID", "ID"), ("NAME", "Name"))
    columns += (("NETWORK", "Network"),) if with_network else ()
    columns += (
        ("SANDBOX", "Sandbox"),
        ("IFACE", "Interface"),
        ("IPV4", "IPv4"),
        ("IPV6", "IPv6"),
        ("MAC", "MAC"),
        ("PORTS", "Ports"),
    )
    return View(
        columns=columns,
        fields={
            "ID": lambda e: _short(e["id"]),
            "Name": lambda e: e["name"],
            "Network": network,
            "NetworkID": lambda e: e["network_id"],
            "Sandbox": lambda e: _short(e.get("sandbox_id")),
            "Interface": lambda e: e.get("ifname") or "",
            "IPv4": lambda e: ip(e.get("ipv4")),
            "IPv6": lambda e: ip(e.get("ipv6")),
            "MAC": lambda e: e["mac"],
            "Ports": lambda e: ", ".join(port_text(p) for p in e.get("ports") or []),
            "Aliases": lambda e: e.get("aliases") or [],
            "Services": lambda e: e.get("services") or [],
            "Node": lambda e: e.get("node") or "",
        },
        filters={
            "name": name_matches("name"),
            "id": id_prefix(),
            "network": on_network,
            "sandbox": id_prefix("sandbox_id"),
            "node": equals("node"),
        },
    )


SANDBOXES = View(
    columns=(("SANDBOX ID", "ID"), ("HOSTNAME", "Hostname"), ("NETNS", "Netns"), ("ENDPOINTS", "Endpoints")),
    fields={
        "ID": lambda s: _short(s["id"]),
        "Hostname": lambda s: s.get("hostname") or "",
        "Netns": lambda s: s["netns"],
        "Endpoints": lambda s: len(s.get("endpoints") or []),
        "DNS": lambda s: s.get("dns") or [],
        "CreatedAt": lambda s: when(s.get("created")),
    },
    filters={"id": id_prefix(), "hostname": name_matches("hostname")},
)


NODES = View(
    columns=(("NODE", "Name"), ("ADDRESS", "Address"), ("STATUS", "Status"), ("VTEP", "VTEP")),
    fields={
        "Name": lambda n: n["name"],
        "Address": lambda n: n.get("address") or "",
        "Status": lambda n: n.get("status") or "",
        "VTEP": lambda n: (n.get("tags") or {}).get("vtep", ""),
        "Tags": lambda n: n.get("tags") or {},
    },
    filters={"name": name_matches("name"), "status": equals("status")},
    quiet="Name",
)


def _pairs(mapping: dict[str, Any] | None) -> str:
    """``KEY=VALUE, ...`` sorted by key; unset (None) values left out; ``-`` for none."""
    return ", ".join(f"{k}={as_text(v)}" for k, v in sorted((mapping or {}).items()) if v is not None) or "-"


def _title(name: str, ident: str) -> None:
    """An inspect page's first line: the name in bold, then the id (text: never rich markup)."""
    from rich.text import Text

    console.print(Text.assemble((name, "bold"), f" {ident}"), highlight=False, soft_wrap=True)


def _line(label: str, value: str) -> None:
    """One ``label: value`` line; ``value`` is text (labels may hold ``[/]``), never wrapped."""
    from rich.markup import escape

    console.print(f"  [dim]{label + ':':<14}[/] {escape(value)}", highlight=False, soft_wrap=True)


def print_network(n: dict[str, Any]) -> None:
    """``network inspect`` of one network (with ``endpoints``), readable."""
    _title(n["name"], n["id"])
    _line("driver", f"{n['driver']} ({n['scope']} scope)")
    _line("internal", "yes: no way out of the network" if n.get("internal") else "no")
    _line("created", when(n.get("created")) or "-")
    _line("options", _pairs(n.get("options")))
    _line("labels", _pairs(n.get("labels")))
    for fam in ("ipv4", "ipv6"):
        if n.get(f"{fam}_subnet"):
            text = f"{n[f'{fam}_subnet']} gateway {ip(n.get(f'{fam}_gateway'))}"
            if n.get(f"{fam}_range"):
                text += f", ip range {n[f'{fam}_range']}"
            _line(fam.replace("ipv", "IPv"), text)
    if n.get("aux_addresses"):
        _line("aux addresses", _pairs(n["aux_addresses"]))
    eps = n.get("endpoints") or []
    _line("endpoints", str(len(eps)))
    if eps:
        table(
            ("NAME", "ENDPOINT ID", "SANDBOX", "IPV4", "IPV6", "MAC", "ALIASES", "SERVICES", "PORTS", "NODE"),
            [
                (
                    e["name"],
                    _short(e["id"]),
                    _short(e.get("sandbox_id")) or "(not joined)",
                    ip(e.get("ipv4")),
                    ip(e.get("ipv6")),
                    e["mac"],
                    ", ".join(e.get("aliases") or []),
                    ", ".join(e.get("services") or []),
                    ", ".join(port_text(p) for p in e.get("ports") or []),
                    e.get("node") or "",
                )
                for e in eps
            ],
        )


def print_endpoint(e: dict[str, Any], network: str) -> None:
    """``endpoint inspect`` of one endpoint (``network``: its network's name)."""
    _title(e["name"], e["id"])
    state = f"joined to sandbox {e['sandbox_id']} as {e['ifname']}" if e.get("sandbox_id") else "not joined"
    if e.get("connecting") and not e.get("sandbox_id"):
        state += " (an unfinished connect)"
    _line("network", f"{network} ({e['network_id']})")
    _line("state", state + (", default gateway" if e.get("gateway") else ""))
    _line("IPv4", e.get("ipv4") or "-")
    _line("IPv6", e.get("ipv6") or "-")
    _line("MAC", e["mac"])
    _line("aliases", ", ".join(e.get("aliases") or []) or "-")
    _line("services", ", ".join(e.get("services") or []) or "-")
    _line("ports", ", ".join(port_text(p) for p in e.get("ports") or []) or "-")
    if e.get("node"):
        _line("node", e["node"])


def print_sandbox(s: dict[str, Any], eps: list[dict[str, Any]], networks: dict[str, str]) -> None:
    """``sandbox inspect`` of one sandbox with its endpoints (``networks``: id -> name)."""
    _title(s.get("hostname") or "(no hostname)", s["id"])
    _line("netns", s["netns"] + ("" if s.get("owned", True) else " (not libnet's: kept on rm)"))
    _line("created", when(s.get("created")) or "-")
    _line("DNS servers", ", ".join(s.get("dns") or []) or "the host's")
    _line("DNS search", ", ".join(s.get("dns_search") or []) or "the host's")
    _line("DNS options", ", ".join(s.get("dns_options") or []) or "-")
    _line("endpoints", str(len(eps)))
    if eps:
        table(
            ("NETWORK", "ENDPOINT", "IFACE", "IPV4", "IPV6", "MAC", "GATEWAY", "ALIASES", "PORTS"),
            [
                (
                    networks.get(e["network_id"]) or _short(e["network_id"]),
                    e["name"],
                    e.get("ifname") or "",
                    ip(e.get("ipv4")),
                    ip(e.get("ipv6")),
                    e["mac"],
                    "yes" if e.get("gateway") else "",
                    ", ".join(e.get("aliases") or []),
                    ", ".join(port_text(p) for p in e.get("ports") or []),
                )
                for e in eps
            ],
        )
