"""Rebuild the local store from the kernel (``libnet-agent --adopt``).

When the local store is lost (file deleted, a mistyped ``--store``, a lost
SQLite ``-wal``) the kernel still holds everything the instance made, marked
(:mod:`libnet.ownership`).  Adopting turns those marks back into records, in
three steps:

1. :func:`read_kernel` (blocking, reads only): the instance's marked bridges
   in the host namespace (network id and name from the mark, gateway
   addresses, MTU), its ledger namespaces, the ``ep``-marked interfaces in
   each sandbox namespace (endpoint id and name from the mark, addresses,
   MAC, interface name, whether the sandbox's default route uses it), the
   network of each endpoint (the master bridge of its host-side veth), and
   from the instance's nftables table which networks are internal and which
   ports endpoints publish.
2. :func:`plan` (pure): the Network, Sandbox and Endpoint records that state
   describes.  Bridge networks only: overlay (global-scope) networks live in
   the cluster store and are reported, not rebuilt; endpoints whose host side
   is not plugged into an adopted bridge are reported too.  A sandbox whose
   namespace holds a proxy's table comes back as that proxy
   (:mod:`libnet.adopt_proxies`).
3. :func:`write`: the records through :class:`libnet.repository.Repository`
   and the IPAM (pools re-reserved with their explicit subnet and gateway,
   owner the network; addresses re-reserved, owner the endpoint).  Objects
   the store already has are kept as they are, so adopting twice, or into a
   store that kept part of its records, adds only what is missing.  An object
   whose name or addresses collide with stored ones is skipped and reported.

What the kernel does not keep is lost: labels (but the gateway bridge's),
DNS aliases and services, and the ``icc`` option.  A sandbox's hostname is
read back from its hosts file in the state dir when there is one.  Sandboxes
in namespaces the instance did not create (``--netns``, a runtime's
namespace) are not in its ledger, so they and their endpoints cannot be found
from the kernel: adopting reports each such endpoint whose veth it sees.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from libnet import ownership
from libnet.adopt_proxies import KernelProxy, plan_proxies, read_proxy, write_proxies
from libnet.errors import LibnetError
from libnet.gateway import GATEWAY_BRIDGE, GATEWAY_ROLE
from libnet.model import Endpoint, Network, Proxy, Sandbox
from libnet.names import default_endpoint_name
from libnet.ownership import Mark, NamespaceLedger, NamespaceRecord
from libnet.rollback import Rollback

if TYPE_CHECKING:
    from ipam.api import Ipam
    from libnet.repository import Repository
    from libnet.store.base import Store

log = logging.getLogger("libnet.adopt")
IFNAMSIZ = 15
NETNS_DIR = "/run/netns"


# --- what the kernel holds ---------------------------------------------------------


@dataclass
class KernelBridge:
    """A bridge of the host namespace marked as one of the instance's networks."""

    name: str
    mark: Mark
    addresses: list[str]  # CIDRs, link-local ones left out
    mtu: int


@dataclass
class KernelInterface:
    """An ``ep``-marked interface inside one of the instance's sandbox namespaces."""

    sandbox: str  # sandbox id (the ledger record's owner)
    name: str
    mark: Mark
    mac: str
    addresses: list[str]
    default_route: bool  # a default route of the sandbox goes out through it
    network: str | None  # the network id of the bridge its host side is plugged into


@dataclass
class KernelState:
    """Everything :func:`read_kernel` found."""

    bridges: list[KernelBridge] = field(default_factory=list)
    sandboxes: list[NamespaceRecord] = field(default_factory=list)  # existing sandbox namespaces
    overlays: list[NamespaceRecord] = field(default_factory=list)
    interfaces: list[KernelInterface] = field(default_factory=list)
    internal: set[str] = field(default_factory=set)  # network ids with rule group net:<id>:internal
    ports: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # endpoint id -> PortMapping fields
    #: host-side veths (name -> mark) plugged into a marked bridge, for finding endpoints whose sandbox is not found
    plugged: dict[str, Mark] = field(default_factory=dict)
    proxies: dict[str, KernelProxy] = field(default_factory=dict)  # sandbox id -> the proxy table it holds
    problems: list[str] = field(default_factory=list)


def _global(cidrs: list[str]) -> list[str]:
    return [c for c in cidrs if not ipaddress.ip_interface(c).is_link_local]


def read_kernel(instance: str, state_dir: str, host_ns: str | None = None) -> KernelState:
    """Read the instance's objects from the kernel (blocking; changes nothing)."""
    from libnet.kernel import netns
    from libnet.kernel.netlink import Netlink

    state = KernelState()
    owner_of_bridge: dict[int, str] = {}
    network_of_ep: dict[str, str] = {}
    with Netlink(host_ns) as nl:
        links = nl.links()
        for link in links:
            mark = Mark.parse(link.alias)
            if mark is None or mark.instance != instance or mark.kind != "net" or link.kind != "bridge":
                continue
            owner_of_bridge[link.index] = mark.owner
            state.bridges.append(KernelBridge(link.name, mark, _global(nl.addresses(link.index)), link.mtu))
        for link in links:
            mark = Mark.parse(link.alias)
            if mark is None or not mark.of(instance, "ep") or link.kind != "veth":
                continue
            if link.master in owner_of_bridge:
                network_of_ep[mark.owner] = owner_of_bridge[link.master]
                state.plugged[link.name] = mark
    for rec in NamespaceLedger(state_dir, instance).records():
        if not netns.exists(rec.name):
            continue
        if rec.kind == "overlay":
            state.overlays.append(rec)
            continue
        if rec.kind != "sandbox":
            continue
        state.sandboxes.append(rec)
        try:
            with Netlink(rec.name) as nl:
                defaults = {
                    r.dev for fam in (socket.AF_INET, socket.AF_INET6) for r in nl.routes(fam) if r.dst == "default"
                }
                for link in nl.links():
                    mark = Mark.parse(link.alias)
                    if mark is None or not mark.of(instance, "ep"):
                        continue
                    state.interfaces.append(
                        KernelInterface(
                            rec.owner,
                            link.name,
                            mark,
                            link.mac,
                            _global(nl.addresses(link.index)),
                            link.index in defaults,
                            network_of_ep.get(mark.owner),
                        )
                    )
            proxy = read_proxy(rec.name, instance)
            if proxy is not None:
                state.proxies[rec.owner] = proxy
        except (LibnetError, OSError) as exc:
            state.problems.append(f"sandbox namespace {rec.name}: {exc}")
    try:
        from libnet.kernel.firewall import Firewall

        with Firewall(host_ns, table=ownership.firewall_table(instance)) as fw:
            rules = fw.rules()
    except (LibnetError, OSError) as exc:
        state.problems.append(f"nftables table {ownership.firewall_table(instance)}: {exc}")
        rules = []
    for rule in rules:
        kind, _, rest = rule["key"].partition(":")
        owner, _, group = rest.partition(":")
        if kind == "net" and group == "internal":
            state.internal.add(owner)
        elif kind == "ep" and group == "ports" and rule.get("chain") == "prerouting":
            port = parse_port_rule(rule.get("expr", []))
            if port is not None and port not in state.ports.setdefault(owner, []):
                state.ports[owner].append(port)
    return state


def parse_port_rule(expr: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The published port (``PortMapping`` fields) of a prerouting DNAT rule
    made by :func:`libnet.kernel.firewall.port_rules`, or None."""
    host_port = protocol = container_port = host_ip = None
    for item in expr:
        match = item.get("match") if isinstance(item, dict) else None
        if match is not None:
            left = match.get("left", {})
            payload = left.get("payload") if isinstance(left, dict) else None
            if not payload:
                continue
            if payload.get("field") == "dport" and payload.get("protocol") in ("tcp", "udp"):
                protocol, host_port = payload["protocol"], match.get("right")
            elif payload.get("field") == "daddr" and payload.get("protocol") in ("ip", "ip6"):
                host_ip = match.get("right")
        elif isinstance(item, dict) and "dnat" in item:
            container_port = (item["dnat"] or {}).get("port")
    if not isinstance(host_port, int) or not isinstance(container_port, int) or protocol is None:
        return None
    return {"host_port": host_port, "container_port": container_port, "protocol": protocol, "host_ip": host_ip}


# --- the records it describes -------------------------------------------------------


def default_bridge_name(network_id: str) -> str:
    """The bridge a network gets without a ``bridge_name`` option (as the bridge driver names it)."""
    return "lnb-" + network_id[: IFNAMSIZ - 4]


@dataclass
class Plan:
    """The records to write, and what could not be adopted."""

    networks: list[Network] = field(default_factory=list)
    sandboxes: list[Sandbox] = field(default_factory=list)
    endpoints: list[Endpoint] = field(default_factory=list)
    proxies: list[Proxy] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _split(cidrs: list[str]) -> tuple[list[str], list[str]]:
    v4 = [c for c in cidrs if ipaddress.ip_interface(c).version == 4]
    return v4, [c for c in cidrs if ipaddress.ip_interface(c).version == 6]


def plan(
    state: KernelState,
    instance: str,
    node: str,
    hostnames: dict[str, str] | None = None,
    now: float | None = None,
) -> Plan:
    """The records ``state`` describes (pure).  ``hostnames``: sandbox id -> hostname."""
    now = time.time() if now is None else now
    hostnames = hostnames or {}
    out = Plan()
    for br in state.bridges:
        nid = br.mark.owner
        v4, v6 = _split(br.addresses)
        name = br.mark.name or f"adopted-{nid[:12]}"
        if not v4:
            out.skipped.append(f"network {name} ({nid[:12]}): bridge {br.name} has no IPv4 address")
            continue
        if len(v4) > 1 or len(v6) > 1:
            out.skipped.append(f"network {name} ({nid[:12]}): bridge {br.name} has several addresses: {br.addresses}")
            continue
        gw4 = ipaddress.ip_interface(v4[0])
        gw6 = ipaddress.ip_interface(v6[0]) if v6 else None
        options = {
            "bridge_name": None if br.name == default_bridge_name(nid) else br.name,
            "mtu": br.mtu,
            "icc": True,
        }
        out.networks.append(
            Network(
                nid,
                name,
                "bridge",
                "local",
                internal=nid in state.internal,
                ipv4_subnet=str(gw4.network),
                ipv4_gateway=str(gw4),
                ipv6_subnet=str(gw6.network) if gw6 else None,
                ipv6_gateway=str(gw6) if gw6 else None,
                options=options,
                labels=dict([GATEWAY_ROLE]) if name == GATEWAY_BRIDGE else {},
                created=now,
                instance=instance,
            )
        )
    for rec in state.overlays:
        out.skipped.append(
            f"overlay network {rec.owner[:12]} (namespace {rec.name}): not adopted, overlay networks live in the "
            "cluster store"
        )
    networks = {n.id: n for n in out.networks}
    sandbox_ids = {rec.owner for rec in state.sandboxes}
    joined: dict[str, list[Endpoint]] = {}
    for itf in sorted(state.interfaces, key=lambda i: (i.sandbox, i.name)):
        eid, name = itf.mark.owner, itf.mark.name or f"ep-{itf.mark.owner[:12]}"
        nw = networks.get(itf.network or "")
        if nw is None:
            why = (
                "its host side is not plugged into a bridge of this instance (an overlay endpoint keeps its "
                "record in the cluster store)"
            )
            out.skipped.append(f"endpoint {name} ({eid[:12]}) in sandbox {itf.sandbox[:12]}: {why}")
            continue
        if itf.sandbox not in sandbox_ids:
            continue
        v4, v6 = _split(itf.addresses)
        assert nw.ipv4_subnet is not None  # every network planned above has its IPv4 subnet
        ipv4 = next((c for c in v4 if ipaddress.ip_interface(c).network == ipaddress.ip_network(nw.ipv4_subnet)), None)
        ipv6 = None
        if nw.ipv6_subnet:
            net6 = ipaddress.ip_network(nw.ipv6_subnet)
            ipv6 = next((c for c in v6 if ipaddress.ip_interface(c).network == net6), None)
        if ipv4 is None:
            out.skipped.append(f"endpoint {name} ({eid[:12]}): no address of network {nw.name} on {itf.name}")
            continue
        ep = Endpoint(
            eid,
            name,
            nw.id,
            itf.mac,
            ipv4=ipv4,
            ipv6=ipv6,
            ports=list(state.ports.get(eid, [])),
            sandbox_id=itf.sandbox,
            ifname=itf.name,
            gateway=itf.default_route,
            node=node,
            created=now,
            instance=instance,
        )
        out.endpoints.append(ep)
        joined.setdefault(itf.sandbox, []).append(ep)
    out.proxies, skipped = plan_proxies(state.proxies, joined, instance, node, now)
    out.skipped += skipped
    found = {itf.mark.owner for itf in state.interfaces}
    for veth, mark in sorted(state.plugged.items()):
        if mark.owner not in found:
            out.skipped.append(
                f"endpoint {mark.name or mark.owner[:12]} ({mark.owner[:12]}): its veth {veth} is plugged in, but "
                "its sandbox is not a namespace this instance created (a runtime's own namespace?); the veth is "
                "kept and keeps working, but libnet does not manage it until the sandbox is connected again"
            )
    for rec in state.sandboxes:
        eps = sorted(joined.get(rec.owner, []), key=lambda e: _ifnum(e.ifname or ""))
        out.sandboxes.append(
            Sandbox(
                rec.owner,
                os.path.join(NETNS_DIR, rec.name),
                True,
                hostname=hostnames.get(rec.owner),
                endpoints=[e.id for e in eps],
                created=now,
            )
        )
    return out


def _ifnum(ifname: str) -> tuple[int, str]:
    digits = ifname[len(ifname.rstrip("0123456789")) :]
    return (int(digits) if digits else 1 << 30, ifname)


def read_hostname(state_dir: str, sandbox_id: str, addresses: list[str]) -> str | None:
    """The hostname a sandbox's hosts file gives its own addresses (the first name on
    their line), unless that is the default endpoint name ``ep-<id>``."""
    path = os.path.join(state_dir, "sandboxes", sandbox_id, "hosts")
    ips = {str(ipaddress.ip_interface(a).ip) for a in addresses}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] in ips:
            name = words[1]
            defaults = (default_endpoint_name(sandbox_id), f"ep-{sandbox_id[:12]}")  # now and before issue 14
            return None if name in defaults else name
    return None


# --- writing them -------------------------------------------------------------------


@dataclass
class AdoptReport:
    """What adopting wrote and what it left out."""

    networks: list[str] = field(default_factory=list)
    sandboxes: list[str] = field(default_factory=list)
    endpoints: list[str] = field(default_factory=list)
    proxies: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # already in the store
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"adopted {len(self.networks)} network(s), {len(self.sandboxes)} sandbox(es), "
            f"{len(self.endpoints)} endpoint(s), {len(self.proxies)} proxy(s); {len(self.kept)} already stored, "
            f"{len(self.skipped)} not adopted"
        )


async def write(the_plan: Plan, repo: Repository, ipam: Ipam, instance: str) -> AdoptReport:
    """Write the planned records through ``repo`` (a :class:`~libnet.repository.Repository`)
    and ``ipam`` (an :class:`ipam.api.Ipam`); records already stored are kept."""
    report = AdoptReport(skipped=list(the_plan.skipped))
    stored_nets = {n.id: n for n in await repo.networks()}
    for nw in the_plan.networks:
        if nw.id in stored_nets:
            report.kept.append(f"network {nw.name}")
            continue
        try:
            await _write_network(nw, repo, ipam, instance)
        except LibnetError as exc:
            report.skipped.append(f"network {nw.name} ({nw.id[:12]}): {exc}")
            continue
        stored_nets[nw.id] = nw
        report.networks.append(nw.name)
    stored_eps = {e.id for e in await repo.endpoints()}
    written: set[str] = set()
    for ep in the_plan.endpoints:
        if ep.id in stored_eps:
            report.kept.append(f"endpoint {ep.name}")
            written.add(ep.id)
            continue
        net = stored_nets.get(ep.network_id)
        if net is None:
            report.skipped.append(f"endpoint {ep.name} ({ep.id[:12]}): its network was not adopted")
            continue
        try:
            await _write_endpoint(ep, net, repo, ipam, instance)
        except LibnetError as exc:
            report.skipped.append(f"endpoint {ep.name} ({ep.id[:12]}): {exc}")
            continue
        written.add(ep.id)
        report.endpoints.append(f"{ep.name} ({net.name})")
    stored_sbs = {s.id for s in await repo.sandboxes()}
    for sb in the_plan.sandboxes:
        if sb.id in stored_sbs:
            report.kept.append(f"sandbox {sb.id[:12]}")
            continue
        sb.endpoints = [e for e in sb.endpoints if e in written]
        try:
            await repo.add_sandbox(sb)
        except LibnetError as exc:
            report.skipped.append(f"sandbox {sb.id[:12]}: {exc}")
            continue
        report.sandboxes.append(sb.id[:12])
    written_proxies, kept, skipped = await write_proxies(the_plan.proxies, repo, instance)
    report.proxies += written_proxies
    report.kept += kept
    report.skipped += skipped
    return report


async def _write_network(nw: Network, repo: Repository, ipam: Ipam, instance: str) -> None:
    store = repo.store(nw.scope)
    async with Rollback() as undo:
        key = repo.network_name_key(nw.name)
        await repo.reserve_name(store, key, nw.id, "network", nw.name, instance=instance)
        undo.push(lambda: store.delete(key), "free network name")
        for v6, subnet, gw in ((False, nw.ipv4_subnet, nw.ipv4_gateway), (True, nw.ipv6_subnet, nw.ipv6_gateway)):
            if not subnet:
                continue
            opts = {"owner": nw.id, "instance": instance, "over_host_routes": True}  # its own bridge's route
            if gw:
                opts["gateway"] = str(ipaddress.ip_interface(gw).ip)
            pool = await ipam.request_pool("local", subnet, options=opts, v6=v6)
            undo.push(functools.partial(ipam.release_pool, pool.id), f"release pool {pool.id}")
            if v6:
                nw.ipv6_pool, nw.ipv6_subnet, nw.ipv6_gateway = pool.id, pool.subnet, pool.gateway
            else:
                nw.ipv4_pool, nw.ipv4_subnet, nw.ipv4_gateway = pool.id, pool.subnet, pool.gateway
        await repo.add_network(nw)


async def _write_endpoint(ep: Endpoint, nw: Network, repo: Repository, ipam: Ipam, instance: str) -> None:
    store = repo.store(nw.scope)
    async with Rollback() as undo:
        key = repo.endpoint_name_key(nw.id, ep.name)
        await repo.reserve_name(store, key, ep.id, "endpoint", ep.name, instance=instance)
        undo.push(lambda: store.delete(key), "free endpoint name")
        for pool, cidr in ((nw.ipv4_pool, ep.ipv4), (nw.ipv6_pool, ep.ipv6)):
            if pool and cidr:
                addr = await ipam.request_address(pool, cidr, {"owner": ep.id, "instance": instance})
                undo.push(functools.partial(ipam.release_address, pool, addr), f"release {addr}")
        await repo.add_endpoint(nw, ep)


async def adopt(
    local_store: Store,
    *,
    instance: str,
    state_dir: str,
    node: str,
    host_ns: str | None = None,
) -> AdoptReport:
    """Read the kernel and write what it holds into ``local_store`` (see the module docstring)."""
    from ipam.ipam import StoreIpam
    from ipam.pools import IpamConfig
    from libnet.repository import Repository

    state = await asyncio.to_thread(read_kernel, instance, state_dir, host_ns)
    by_sandbox: dict[str, list[str]] = {}
    for itf in state.interfaces:
        by_sandbox.setdefault(itf.sandbox, []).extend(itf.addresses)
    hostnames = {
        rec.owner: h
        for rec in state.sandboxes
        if (h := read_hostname(state_dir, rec.owner, by_sandbox.get(rec.owner, []))) is not None
    }
    the_plan = plan(state, instance, node, hostnames)
    the_plan.skipped += state.problems
    repo = Repository(local_store, local_store)
    ipam = StoreIpam(local_store, local_store, IpamConfig())
    report = await write(the_plan, repo, ipam, instance)
    for line in report.networks:
        log.info("adopt: network %s", line)
    for line in report.endpoints:
        log.info("adopt: endpoint %s", line)
    for line in report.sandboxes:
        log.info("adopt: sandbox %s", line)
    for line in report.proxies:
        log.info("adopt: proxy %s", line)
    for line in report.skipped:
        log.warning("adopt: not adopted: %s", line)
    return report
