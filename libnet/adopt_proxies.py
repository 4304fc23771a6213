"""Proxies in ``libnet-agent --adopt`` (:mod:`libnet.adopt`): their records rebuilt from the kernel.

A proxy (:mod:`libnet.proxies`) is a sandbox of the instance's whose id is the
proxy's, with two legs and the instance's nftables table in its namespace.
What the record needs, the kernel keeps: the legs' endpoints (marked veths,
adopted like any other), which leg is the front one (the interface the
service rules match as ``iifname``), and the services (each rule of the
``in`` chain carries its service as a comment,
:func:`libnet.kernel.proxy_nat.service_comment`).  The proxy's name is its
front leg's name (the back one's is ``NAME.proxy``).  The adopted legs get back what a proxy's legs carry: the front
one its aliases and SRV services, the back one no DNS name.  Adopting loses
endpoints' DNS aliases (:mod:`libnet.adopt`), which would leave the proxy
without backends; but its DNAT rules list the backends it had, so an adopted
endpoint of the target network holding such an address gets the service's
alias back.

Only proxies between two adopted (bridge) networks come back: a leg on an
overlay lives in the cluster store, which adopting does not write.  Such a
proxy is reported, and keeps forwarding until removed by hand.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from libnet import ownership
from libnet.kernel.proxy_nat import parse_service_comment
from libnet.model import Endpoint, Proxy
from libnet.proxies import back_leg_name

if TYPE_CHECKING:
    from libnet.repository import Repository


@dataclass
class KernelProxy:
    """What a sandbox namespace's table says of the proxy it holds."""

    front_if: str
    services: list[dict[str, Any]] = field(default_factory=list)
    backends: dict[str, set[str]] = field(default_factory=dict)  # alias -> bare addresses its DNAT rules name


def read_proxy(ns: str, instance: str) -> KernelProxy | None:
    """The proxy whose table is in namespace ``ns`` (blocking, reads only), None if there is none."""
    from libnet.kernel.firewall import Firewall

    with Firewall(ns, table=ownership.firewall_table(instance)) as fw:
        rules = fw.table_rules()
    front_if, services = "", []
    for rule in rules:
        svc = parse_service_comment(str(rule.get("comment", ""))) if rule.get("chain") == "in" else None
        if svc is None:
            continue
        for item in rule.get("expr", []):
            match = item.get("match") if isinstance(item, dict) else None
            if match and match.get("left") == {"meta": {"key": "iifname"}}:
                front_if = front_if or str(match.get("right"))
        if svc not in services:
            services.append(svc)
    found = KernelProxy(front_if, services)
    for rule in rules:
        if rule.get("chain") == "pre":
            _dnat_backends(rule.get("expr", []), found)
    return found if front_if and services else None


def _dnat_backends(expr: list[Any], found: KernelProxy) -> None:
    """The addresses a service's DNAT rule (:func:`libnet.kernel.proxy_nat.rules`) sends to, into ``found``."""
    listen = proto = None
    for item in expr:
        if not isinstance(item, dict):
            continue
        payload = (item.get("match") or {}).get("left", {}).get("payload") or {}
        if payload.get("field") == "dport":
            listen, proto = item["match"].get("right"), payload.get("protocol")
        dnat = item.get("dnat")
        if not dnat:
            continue
        addr = dnat.get("addr")
        if isinstance(addr, dict):
            data = ((addr.get("map") or {}).get("data") or {}).get("set") or []
            addrs = {str(pair[1]) for pair in data if isinstance(pair, list) and len(pair) == 2}
        else:
            addrs = {str(addr)} if addr else set()
        for svc in found.services:
            if svc["listen"] == listen and svc["protocol"] == proto:
                found.backends.setdefault(svc["alias"], set()).update(addrs)


def plan_proxies(
    found: dict[str, KernelProxy],
    joined: dict[str, list[Endpoint]],
    instance: str,
    node: str,
    now: float | None = None,
) -> tuple[list[Proxy], list[str]]:
    """The Proxy records (pure) for ``found`` (sandbox id -> its table) given the planned
    endpoints of each sandbox (``joined``): the legs are completed in place, and so are the
    backends' aliases.  Also the reasons of those that cannot come back."""
    now = time.time() if now is None else now
    proxies, skipped = [], []
    for sid, kp in sorted(found.items()):
        legs = joined.get(sid, [])
        front = next((e for e in legs if e.ifname == kp.front_if), None)
        back = next((e for e in legs if e is not front), None)
        if front is None or back is None or len(legs) != 2 or back.name not in (front.name, back_leg_name(front.name)):
            skipped.append(
                f"proxy in sandbox {sid[:12]}: its two legs were not both adopted (a leg on an overlay network "
                "lives in the cluster store); its table keeps forwarding; remove its sandbox's namespace by hand "
                "or adopt into a store holding the overlay's records"
            )
            continue
        names = [f"{s['alias']}:{s['listen']}/{s['protocol']}" for s in kp.services]
        front.aliases = sorted({s["alias"] for s in kp.services} - {front.name.lower()})
        front.services, front.proxy, back.proxy, back.dns = names, sid, sid, False
        for ep in (e for eps in joined.values() for e in eps if e.network_id == back.network_id and not e.proxy):
            bare = {str(ipaddress.ip_interface(c).ip) for c in (ep.ipv4, ep.ipv6) if c}
            for alias, addrs in sorted(kp.backends.items()):
                if bare & addrs and alias != ep.name.lower() and alias not in ep.aliases:
                    ep.aliases.append(alias)
        proxies.append(
            Proxy(
                sid,
                front.name,
                "local",
                front.network_id,
                back.network_id,
                kp.services,
                node=node,
                front_endpoint=front.id,
                back_endpoint=back.id,
                created=now,
                instance=instance,
            )
        )
    return proxies, skipped


async def write_proxies(
    proxies: list[Proxy], repo: Repository, instance: str
) -> tuple[list[str], list[str], list[str]]:
    """Store the planned proxies (name reserved first; one already stored is kept).
    Returns the names written, kept and skipped (with the reason)."""
    from libnet.errors import LibnetError, NotFound

    written, kept, skipped = [], [], []
    stored_eps = {e.id for e in await repo.endpoints()}
    for px in proxies:
        try:
            await repo.proxy(px.id)
            kept.append(f"proxy {px.name}")
            continue
        except NotFound:
            pass
        if not {px.front_endpoint, px.back_endpoint} <= stored_eps:
            skipped.append(f"proxy {px.name} ({px.id[:12]}): its legs were not adopted")
            continue
        store = repo.store(px.scope)
        key = repo.proxy_name_key(px.name)
        try:
            await repo.reserve_name(store, key, px.id, "proxy", px.name, instance=instance)
            try:
                await repo.add_proxy(px)
            except LibnetError:
                await store.delete(key)
                raise
        except LibnetError as exc:
            skipped.append(f"proxy {px.name} ({px.id[:12]}): {exc}")
            continue
        written.append(px.name)
    return written, kept, skipped
