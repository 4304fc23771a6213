"""``GET /v1/topology``: the cluster as this agent sees it, as a tree.

Shape (JSON)::

    {"node": "h1",                                    # the answering host
     "hosts": [{"name", "address", "status", "vtep", "self": bool,
                "networks": [{"id", "name", "driver", "scope", "ipv4_subnet", "ipv6_subnet",
                              "internal",
                              "sandboxes": [{"id", "hostname" (None off this host),
                                             "endpoints": [ENDPOINT, ...]}],
                              "endpoints": [ENDPOINT, ...]}]}]}   # not joined to a sandbox

    ENDPOINT = {"id", "name", "ifname", "ipv4", "ipv6", "mac", "aliases", "ports",
                "peer": "local" | "programmed" | "pending" | "not needed" | "host gone",
                "vtep": VTEP this host sends its traffic to (programmed peers) or None}

Peer state, for another host's endpoint, is this host's view of it: in its
overlay peer table (``programmed``: FDB and neighbour entries toward the
endpoint's VTEP), not yet (``pending``), not needed (this host has no endpoint
on that network), or its host was confirmed gone (``host gone``).  Hosts come
from cluster membership (a single host without a cluster); a host that holds
endpoints but is not a member is listed with status ``unknown``.  Local-scope
networks are under this host; a global one under every host with endpoints
on it, and under this host when it has none anywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from libnet.controller import Controller
    from libnet.model import Endpoint, Network, Sandbox


def _peer_state(
    ctl: Controller, ep: Endpoint, node: str, local_networks: set[str], here: str
) -> tuple[str, str | None]:
    if not ep.node or ep.node.lower() == here.lower():
        return "local", None
    for drv in ctl.drivers.remote_peers():
        for peer in drv.remote_endpoints(ep.network_id):
            if peer.endpoint_id == ep.id:
                return "programmed", getattr(peer, "vtep", None)
    if any(d.host_gone(node) for d in ctl.drivers.cluster_aware()):
        return "host gone", None
    return ("pending" if ep.network_id in local_networks else "not needed"), None


def _endpoint(ep: Endpoint, peer: tuple[str, str | None]) -> dict[str, Any]:
    return {
        "id": ep.id,
        "name": ep.name,
        "ifname": ep.ifname,
        "ipv4": ep.ipv4,
        "ipv6": ep.ipv6,
        "mac": ep.mac,
        "aliases": list(ep.aliases),
        "ports": list(ep.ports),
        "peer": peer[0],
        "vtep": peer[1],
    }


def _network(nw: Network) -> dict[str, Any]:
    keys = ("id", "name", "driver", "scope", "ipv4_subnet", "ipv6_subnet", "internal")
    return {k: getattr(nw, k) for k in keys}


def build(
    ctl: Controller,
    here: str,
    members: list[dict[str, Any]],
    networks: list[Network],
    endpoints: list[Endpoint],
    sandboxes: list[Sandbox],
) -> dict[str, Any]:
    """The tree of the module's docstring from what the agent knows (no I/O)."""
    hosts: dict[str, dict[str, Any]] = {}
    for m in members:
        hosts[m["name"].lower()] = {
            "name": m["name"],
            "address": m.get("address") or "",
            "status": m.get("status", "unknown"),
            "vtep": (m.get("tags") or {}).get("vtep") or m.get("address") or "",
            "self": m["name"].lower() == here.lower(),
            "networks": {},
        }
    if here.lower() not in hosts:
        hosts[here.lower()] = {"name": here, "address": "", "status": "alive", "vtep": "", "self": True, "networks": {}}
    by_net = {n.id: n for n in networks}
    hostnames = {s.id: s.hostname for s in sandboxes}
    local_networks = {e.network_id for e in endpoints if not e.node or e.node.lower() == here.lower()}

    def slot(host: str, nw: Network) -> dict[str, Any]:
        key = host.lower()
        if key not in hosts:
            hosts[key] = {"name": host, "address": "", "status": "unknown", "vtep": "", "self": False, "networks": {}}
        nets: dict[str, dict[str, Any]] = hosts[key]["networks"]
        if nw.id not in nets:
            nets[nw.id] = {**_network(nw), "sandboxes": {}, "endpoints": []}
        return nets[nw.id]

    for ep in sorted(endpoints, key=lambda e: (e.network_id, e.name, e.id)):
        nw = by_net.get(ep.network_id)
        if nw is None:
            continue
        node = ep.node or here
        entry = _endpoint(ep, _peer_state(ctl, ep, node, local_networks, here))
        net = slot(node, nw)
        if ep.sandbox_id:
            sb = net["sandboxes"].setdefault(
                ep.sandbox_id, {"id": ep.sandbox_id, "hostname": hostnames.get(ep.sandbox_id), "endpoints": []}
            )
            sb["endpoints"].append(entry)
        else:
            net["endpoints"].append(entry)
    for nw in networks:
        spanned = any(nw.id in h["networks"] for h in hosts.values())
        if nw.scope != "global" or not spanned:
            slot(here, nw)
    ordered = sorted(hosts.values(), key=lambda h: (not h["self"], h["name"]))
    for h in ordered:
        h["networks"] = [
            {**n, "sandboxes": list(n["sandboxes"].values())}
            for n in sorted(h["networks"].values(), key=lambda n: n["name"])
        ]
    return {"node": here, "hosts": ordered}
