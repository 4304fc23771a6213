"""The bridge driver's reconcile pass: make the kernel match the stored
networks and joined endpoints, touching only what this instance marked.

Links: this instance's bridges of unknown networks and its veths of no
joined endpoint are deleted -- unless containers still use them (the store
may have lost a record): those are kept and reported; links named like
libnet's without this instance's mark are reported as foreign; links with
libnet's pre-instance marks that match a stored object are re-marked.
Firewall: rule groups of unknown objects removed, missing ones re-added,
the isolation set made to hold exactly the known bridges.  Local paths:
``route_localnet`` on the bridges, hairpin mode on the endpoints' ports,
and the ``[::1]`` relays of joined endpoints.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING

from libnet import ownership
from libnet.driverapi import EndpointInfo, NetworkInfo, ReconcileReport, SandboxInfo
from libnet.drivers.bridge_model import (
    BRIDGE_PREFIX,
    LEGACY_EP,
    LEGACY_NET,
    VETH_PREFIX,
    bridge_name,
    describe,
    host_ifname,
    link_mark,
    network_rules,
    orphan,
    unused,
)
from libnet.drivers.publish import endpoint_port_rules, ports_key
from libnet.kernel.api import FirewallOps, RuleList
from libnet.kernel.netlink import Link
from libnet.ownership import Mark

if TYPE_CHECKING:
    from libnet.drivers.bridge import BridgeDriver


class _Sweep:
    """What the link sweep found and did."""

    def __init__(self) -> None:
        self.removed: list[str] = []
        self.repaired: list[str] = []
        self.foreign: dict[str, str] = {}  # link name -> why
        self.kept: list[str] = []
        self.kept_ids: set[str] = set()  # networks/endpoints the store lost whose links are kept: so are their rules
        self.kept_bridges: set[str] = set()
        self.by_name: dict[str, Link] = {}


async def reconcile(
    drv: BridgeDriver, networks: list[NetworkInfo], endpoints: list[tuple[EndpointInfo, SandboxInfo | None]]
) -> ReconcileReport:
    report = ReconcileReport()
    me = drv.owner
    nets = {nw.id: nw for nw in networks}
    joined = {ep.id: ep for ep, sb in endpoints if sb is not None}
    recorded = {ep.id for ep, _ in endpoints}
    legacy = {LEGACY_NET + nw.id: ("net", nw.id, nw.name, bridge_name(nw)) for nw in networks}
    legacy |= {LEGACY_EP + ep.id: ("ep", ep.id, ep.name, host_ifname(ep)) for ep in joined.values()}

    def sweep() -> _Sweep:
        """Links: re-mark legacy ones, report foreign ones, delete this instance's orphans."""
        out = _Sweep()
        # What leaves left for the reaper (down, out of their bridges, in this instance's dead
        # group; after a crash, up to REAP_MAX_DELAY's worth): deleted in one request, one
        # grace period for all, not one each below
        before = drv.nl.links()
        drv.nl.delete_group(ownership.dead_group(me))
        links = drv.nl.links()
        present = {link.index for link in links}
        reaped = [
            link
            for link in before
            if link.index not in present and (m := Mark.parse(link.alias)) is not None and m.instance == me
        ]
        if reaped:
            names = sorted(k.name for k in reaped)
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            out.removed.append(f"{len(names)} unplugged veth(s) waiting for the reaper ({shown}): deleted at once")
        ports = Counter(link.master for link in links if link.master)
        for link in links:
            mark = Mark.parse(link.alias)
            old = legacy.get(link.alias or "")
            if mark is None and old is not None and old[3] == link.name:
                drv.nl.set_alias(link.index, link_mark(me, *old[:3]))
                out.repaired.append(f"{describe(link)}: re-marked as this instance's")
            elif mark is None:
                if link.name.startswith((BRIDGE_PREFIX, VETH_PREFIX)) or (link.alias or "").startswith("libnet:"):
                    out.foreign[link.name] = f"{describe(link)}: named like libnet's, no mark of this instance"
            elif mark.instance != me:
                out.foreign[link.name] = f"{describe(link)}: another libnet instance's"
            elif not orphan(link, mark, nets, joined):
                continue
            elif not unused(link, mark, ports, recorded):
                out.kept_ids.add(mark.owner)
                if mark.kind == "net":
                    out.kept_bridges.add(link.name)
                out.kept.append(
                    f"{describe(link)}: the store does not know its {'network' if mark.kind == 'net' else 'endpoint'}"
                    " but containers use it; kept (a lost store record? libnet-agent --adopt rebuilds it)"
                )
            elif drv.delete_own(link.index, mark.kind, mark.owner):
                out.removed.append(
                    f"{describe(link)}: of no stored {'network' if mark.kind == 'net' else 'joined endpoint'}"
                )
        out.by_name = {link.name: link for link in drv.nl.links()}
        return out

    swept = await drv._host(sweep)
    report.removed, report.repaired = swept.removed, swept.repaired
    report.missing += swept.kept
    report.kept += sorted(swept.kept_ids)
    report.foreign = list(swept.foreign.values())
    by_name = swept.by_name
    own: dict[str, NetworkInfo] = {}  # bridge -> network, for the bridges that are there and ours
    for nw in networks:
        br, link = bridge_name(nw), by_name.get(bridge_name(nw))
        if link is None:
            report.missing.append(f"network {nw.name} ({nw.id[:12]}): bridge {br} is missing")
        elif not ownership.owned_by(link.alias, me, "net", nw.id):
            if br not in swept.foreign:
                report.foreign.append(f"network {nw.name} ({nw.id[:12]}): {describe(link)} is not its bridge")
        else:
            own[br] = nw
    for ep in joined.values():
        link = by_name.get(host_ifname(ep))
        if link is None:
            report.missing.append(f"endpoint {ep.name} ({ep.id[:12]}): veth {host_ifname(ep)} is missing")
        elif not ownership.owned_by(link.alias, me, "ep", ep.id) and link.name not in swept.foreign:
            report.foreign.append(f"endpoint {ep.name} ({ep.id[:12]}): {describe(link)} is not its veth")
    known = set(nets) | recorded | swept.kept_ids
    names = {bridge_name(nw) for nw in networks} | swept.kept_bridges
    want: list[tuple[str, RuleList]] = [(key, rules) for br, nw in own.items() for key, rules in network_rules(nw, br)]
    want += [
        (ports_key(ep), endpoint_port_rules(nets[ep.network_id], ep))
        for ep in joined.values()
        if ep.ports and ep.network_id in nets and not nets[ep.network_id].internal
    ]

    def fix(fw: FirewallOps) -> tuple[list[str], list[str]]:
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

    removed, repaired = await drv._firewall(fix)
    report.removed += removed
    report.repaired += repaired
    report.repaired += await _repair_local_paths(drv, own, joined, by_name)
    return report


async def _repair_local_paths(
    drv: BridgeDriver, own: dict[str, NetworkInfo], joined: dict[str, EndpointInfo], by_name: dict[str, Link]
) -> list[str]:
    """``route_localnet`` on this instance's bridges, hairpin mode on its
    endpoints' ports, and the ``[::1]`` relays of joined endpoints."""
    repaired = []
    for br, nw in own.items():
        if await asyncio.to_thread(drv.route_localnet, nw, br):
            repaired.append(f"bridge {br}: route_localnet back on")
    mine = [
        host_ifname(ep)
        for ep in joined.values()
        if host_ifname(ep) in by_name and ownership.owned_by(by_name[host_ifname(ep)].alias, drv.owner, "ep", ep.id)
    ]

    def hairpin() -> list[str]:
        ports = drv.nl.hairpin_ports()
        off = [name for name in mine if ports.get(name) is False]
        for name in off:
            drv.nl.set_hairpin(name)
        return [f"veth {name}: hairpin mode back on" for name in off]

    repaired += await drv._host(hairpin)
    nets = {nw.id for nw in own.values() if not nw.internal}
    repaired += await drv.publisher.repair_relays([ep for ep in joined.values() if ep.network_id in nets])
    return repaired
