"""Keeps the embedded DNS in step with the controller's objects.

The controller calls in after joins, leaves and deletions; the overlay
driver's peer listeners call :meth:`DnsBinding.remote_changed`.  A sandbox's
view is the set of networks it is on, minus the gateway bridge network
(plumbing for outbound traffic, not a network containers find each other on).

Each network is recorded with whether it gives its containers a way out: an
``internal`` network does not, nor does a ``null`` one (loopback only) unless
labelled ``libnet.way-out=true`` (libnet-ipam's pools: the CNI ``bridge``
plugin gives their containers the way out).  A
view made only of such networks never forwards (the resolver answers
REFUSED): forwarding happens from the host's namespace, so it would be the
one way out of an internal network (CVE-2024-29018).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from typing import Any

from libnet.dns.records import Entry
from libnet.dns.service import EmbeddedDns
from libnet.driverapi import PeerListener, RemoteEndpoint, RemotePeers
from libnet.errors import LibnetError, NotFound
from libnet.gateway import is_gateway_bridge
from libnet.model import Endpoint, Network, Sandbox
from libnet.repository import Reads

log = logging.getLogger("libnet.dns")
#: drivers whose networks connect nothing (a sandbox on them has its loopback only)
NO_WAY_OUT = frozenset({"null"})
#: a network label saying that another program gives the network's containers their way out (a
#: ``null`` network holding the addresses a CNI ``bridge`` plugin configures: libnet-ipam's pools)
WAY_OUT_LABEL = "libnet.way-out"


def entry_of(ep: Endpoint) -> Entry:
    return Entry.build(ep.id, ep.network_id, ep.name, ep.ipv4, ep.ipv6, ep.aliases, ep.services)


class DnsBinding:
    """See the module docstring.  ``repo`` is the controller's repository."""

    def __init__(self, dns: EmbeddedDns, repo: Any) -> None:
        self.dns, self.repo = dns, repo
        self.records = dns.records

    def _network(self, nw: Network) -> bool:
        """Record the network; False if it is not one containers resolve names on."""
        if is_gateway_bridge(nw):
            return False
        external = not nw.internal and (nw.driver not in NO_WAY_OUT or nw.labels.get(WAY_OUT_LABEL) == "true")
        self.records.set_network(nw.id, nw.name, [nw.ipv4_subnet, nw.ipv6_subnet], external)
        return True

    async def sandbox(self, sb: Sandbox, reads: Reads | None = None) -> None:
        """(Re)attach the sandbox: its endpoints' records, its view, its listeners.
        ``reads``: the records the caller's step read already, shared with it."""
        src = reads if reads is not None else Reads(self.repo)
        view = set()
        for eid in sb.endpoints:
            with suppress(NotFound):
                ep = await src.endpoint(eid)
                if self._network(await src.network(ep.network_id)):
                    if ep.dns:  # a proxy's back leg is not a name on its network
                        self.records.put(entry_of(ep))
                    view.add(ep.network_id)
        await self.dns.attach(sb.id, sb.netns, frozenset(view), upstreams=sb.dns)

    async def left(self, ep: Endpoint, sandbox_id: str, sb: Sandbox | None = None) -> None:
        """``sb``: the sandbox's record as the caller's step read it after the leave."""
        self.records.remove(ep.id)
        with suppress(NotFound):
            await self.sandbox(sb if sb is not None else await self.repo.sandbox(sandbox_id))

    async def sandbox_deleted(self, sandbox_id: str) -> None:
        await self.dns.detach(sandbox_id)

    def network_deleted(self, network_id: str) -> None:
        self.records.remove_network(network_id)

    def follow(self, drivers: Iterable[RemotePeers]) -> None:
        """Serve the remote endpoints of these drivers' networks as records."""
        for drv in drivers:
            drv.peer_listeners.append(self.remote_listener(drv.remote_endpoints))

    def remote_listener(self, peers: Callable[[str], Sequence[RemoteEndpoint]]) -> PeerListener:
        """A peer listener for an overlay driver: its remote endpoints become records."""

        def changed(network_id: str) -> None:
            entries = []
            for p in peers(network_id):
                if p.name:
                    try:
                        entries.append(
                            Entry.build(p.endpoint_id, p.network_id, p.name, p.ipv4, p.ipv6, p.aliases, p.services)
                        )
                    except LibnetError as exc:  # a peer from a newer/odd host: skip its records only
                        log.warning("DNS: ignoring the records of peer %s: %s", p.endpoint_id[:12], exc)
            self.records.replace_remote(network_id, entries)

        return changed

    async def restore(self) -> list[str]:
        """After a restart: serve every sandbox that has endpoints again.  Returns the ids of
        those that could not be served."""
        failed = []
        for sb in await self.repo.sandboxes():
            if sb.endpoints:
                try:
                    await self.sandbox(sb)
                except (LibnetError, OSError) as exc:  # its namespace may be gone: reconcile reports that
                    log.warning("DNS: sandbox %s not served: %s", sb.id[:12], exc)
                    failed.append(sb.id)
        return failed

    async def close(self) -> None:
        await self.dns.close()
