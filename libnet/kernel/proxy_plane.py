"""The kernel side of a network proxy: its namespace's sysctls and nftables table.

Everything happens inside the proxy's own namespace (libnet made it; nothing
of the host's is touched): forwarding on, ARP answered only for an address
of the interface asked (its two legs may be on networks with overlapping
subnets), and the table of :mod:`libnet.kernel.proxy_nat` replaced in one
transaction.
"""

from __future__ import annotations

import asyncio
from typing import Any

from libnet.kernel import proxy_nat, sysctl
from libnet.kernel.firewall import Firewall

#: (key, value) set in the proxy's namespace before its legs are plugged in
SYSCTLS: tuple[tuple[str, int], ...] = (
    ("net.ipv4.ip_forward", 1),
    ("net.ipv6.conf.all.forwarding", 1),
    ("net.ipv4.conf.all.arp_ignore", 1),  # answer ARP only for the asked interface's own address
    ("net.ipv4.conf.all.arp_announce", 2),
    ("net.ipv4.conf.all.rp_filter", 0),  # replies come back on the other leg than the request went in
    ("net.ipv4.conf.default.rp_filter", 0),
)


class KernelProxyPlane:
    """:class:`libnet.proxies.ProxyPlane` on the real kernel; ``table``: the
    instance's nftables table name (:func:`libnet.ownership.firewall_table`)."""

    def __init__(self, table: str) -> None:
        self.table = table

    async def prepare(self, netns: str) -> None:
        def body() -> None:
            for key, value in SYSCTLS:
                sysctl.set(netns, key, value)

        await asyncio.to_thread(body)

    async def apply(self, netns: str, table: proxy_nat.ProxyTable) -> None:
        cmds = proxy_nat.commands(self.table, table)

        def body() -> None:
            with Firewall(netns, self.table) as fw:
                fw.replace_table(cmds)

        await asyncio.to_thread(body)

    async def rules(self, netns: str) -> list[dict[str, Any]]:
        def body() -> list[dict[str, Any]]:
            with Firewall(netns, self.table) as fw:
                return fw.table_rules()

        return await asyncio.to_thread(body)
