"""The kernel side of a network proxy: its namespace's sysctls, policy routing
and nftables table.

Everything happens inside the proxy's own namespace (libnet made it; nothing
of the host's is touched): forwarding on; ARP answered only for an address of
the interface asked; policy routing by the marks of
:mod:`libnet.kernel.proxy_nat` -- :data:`~libnet.kernel.proxy_nat.MARK_TO_BACK`
looks up :data:`TO_BACK` (the back leg's subnets), ``MARK_TO_FRONT`` looks up
:data:`TO_FRONT`, both before the ``local`` table, which moves from priority
0 to :data:`LOCAL_PRIORITY` -- so the two legs' networks may have overlapping
subnets, even equal addresses; and the table of :mod:`libnet.kernel.proxy_nat`
replaced in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import Any

from pyroute2.conntrack import Conntrack
from pyroute2.netlink.exceptions import NetlinkError

from libnet.kernel import proxy_nat, sysctl
from libnet.kernel.errors import translate
from libnet.kernel.firewall import Firewall
from libnet.kernel.netlink import Netlink
from libnet.kernel.netns import NamespaceThread

TO_BACK, TO_FRONT = 201, 202  # routing tables of the proxy's namespace
LOCAL_TABLE = 255
RULES = ((100, proxy_nat.MARK_TO_BACK, TO_BACK), (101, proxy_nat.MARK_TO_FRONT, TO_FRONT))
LOCAL_PRIORITY = 200

#: (key, value) set in the proxy's namespace before its legs are plugged in
SYSCTLS: tuple[tuple[str, int], ...] = (
    ("net.ipv4.ip_forward", 1),
    ("net.ipv6.conf.all.forwarding", 1),
    ("net.ipv4.conf.all.arp_ignore", 1),  # answer ARP only for the asked interface's own address
    ("net.ipv4.conf.all.arp_announce", 2),
    ("net.ipv4.conf.all.rp_filter", 0),  # replies come back on the other leg than the request went in
    ("net.ipv4.conf.default.rp_filter", 0),
)
#: (key, value) set with every table (so a proxy made before one was added gets it too).  With
#: equal subnets a packet's source may be one of the proxy's own addresses -- a reply from a
#: backend with the front leg's address, or a client (and its ARP) with the back leg's -- which
#: the kernel drops as a martian unless ``accept_local``; the forward chain still decides
TABLE_SYSCTLS: tuple[tuple[str, int], ...] = (("net.ipv4.conf.all.accept_local", 1),)


class KernelProxyPlane:
    """:class:`libnet.proxies.ProxyPlane` on the real kernel; ``table``: the
    instance's nftables table name (:func:`libnet.ownership.firewall_table`)."""

    def __init__(self, table: str, host_ns: str | None = None) -> None:
        self.table, self.host_ns = table, host_ns

    async def prepare(self, netns: str) -> None:
        def body() -> None:
            for key, value in SYSCTLS:
                sysctl.set(netns, key, value)

        await asyncio.to_thread(body)

    async def apply(self, netns: str, table: proxy_nat.ProxyTable) -> None:
        cmds = proxy_nat.commands(self.table, table)

        def body() -> None:
            for key, value in TABLE_SYSCTLS:
                sysctl.set(netns, key, value)
            with Netlink(netns) as nl:
                nl.submit(lambda: _route_by_mark(nl, table)).result()
            with Firewall(netns, self.table) as fw:
                fw.replace_table(cmds)

        await asyncio.to_thread(body)

    async def forget(self, netns: str, keep: Iterable[str]) -> int:
        """Delete the UDP conntrack entries of ``netns`` NATed to an address not in ``keep``
        (bare addresses: the current UDP backends); how many.  A UDP "connection" is only
        this entry: kept, a client's later datagrams from the same socket would still go
        to a backend gone.  TCP ones are kept (they end with their connection)."""
        current = {ipaddress.ip_address(a) for a in keep}

        def drop() -> int:  # on the namespace's thread: the sockets are the proxy namespace's
            done = 0
            for fam in (socket.AF_INET, socket.AF_INET6):
                with Conntrack(nfgen_family=fam) as ct:  # all of the namespace's: only the proxy's flows
                    for entry in list(ct.dump_entries()):
                        orig, reply = entry.tuple_orig, entry.tuple_reply
                        if reply.proto != socket.IPPROTO_UDP or not reply.saddr or reply.saddr == orig.daddr:
                            continue  # not UDP, or not NATed to a backend (the namespace's own)
                        if ipaddress.ip_address(reply.saddr) in current:
                            continue
                        with contextlib.suppress(NetlinkError):  # gone meanwhile (timed out): fine
                            ct.delete(entry)
                            done += 1
            return done

        def body() -> int:
            thread = NamespaceThread(netns)
            try:
                return thread.call(drop)
            except (NetlinkError, OSError) as exc:
                raise translate(exc, "proxy conntrack", netns=netns) from exc
            finally:
                thread.close()

        return await asyncio.to_thread(body)

    async def untrack(self, ports: Sequence[str], macs: Sequence[str]) -> None:
        """The host namespace's bridge-family table (:func:`libnet.kernel.proxy_nat.untrack_commands`)
        replaced with one for these proxy legs; none left: the table is deleted."""
        cmds = proxy_nat.untrack_commands(self.table, ports, macs)

        def body() -> None:
            with Firewall(self.host_ns, self.table) as fw:
                fw.replace_table(cmds)

        await asyncio.to_thread(body)

    async def rules(self, netns: str) -> list[dict[str, Any]]:
        def body() -> list[dict[str, Any]]:
            with Firewall(netns, self.table) as fw:
                return fw.table_rules()

        return await asyncio.to_thread(body)


def _route_by_mark(nl: Netlink, table: proxy_nat.ProxyTable) -> None:
    """Runs on ``nl``'s namespace thread: the two tables' connected routes and the
    rules (see the module docstring); idempotent, the local rule never missing."""
    ipr = nl.ipr
    try:
        for ifname, nets, number in (
            (table.back_if, table.back_nets, TO_BACK),
            (table.front_if, table.front_nets, TO_FRONT),
        ):
            index = ipr.link_lookup(ifname=ifname)[0]
            for net in nets:
                fam = socket.AF_INET if ipaddress.ip_network(net).version == 4 else socket.AF_INET6
                ipr.route("replace", dst=net, oif=index, table=number, family=fam)
        for fam in (socket.AF_INET, socket.AF_INET6):
            have = {
                (r.get_attr("FRA_PRIORITY") or 0, r.get_attr("FRA_TABLE") or r["table"])
                for r in ipr.get_rules(family=fam)
            }
            for prio, mark, number in RULES:
                if (prio, number) not in have:
                    ipr.rule("add", priority=prio, fwmark=mark, table=number, family=fam)
            if (LOCAL_PRIORITY, LOCAL_TABLE) not in have:
                ipr.rule("add", priority=LOCAL_PRIORITY, table=LOCAL_TABLE, family=fam)
            if (0, LOCAL_TABLE) in have:
                ipr.rule("del", priority=0, table=LOCAL_TABLE, family=fam)
    except (NetlinkError, OSError) as exc:
        raise translate(exc, "proxy policy routing", netns=nl.ns) from exc
