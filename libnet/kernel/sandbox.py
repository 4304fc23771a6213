"""Links, addresses and routes inside a sandbox's namespace, in batches.

Attaching a container is on libnet's hot path: the sandbox side of a join is
one rtnetlink batch (:mod:`libnet.kernel.rtnl`) on a socket opened inside
the sandbox's namespace by the calling thread -- no namespace thread, no pyroute2.  This module
builds those requests and decides which kernel answers mean "already gone"
(errno values stay here; callers see typed errors).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from libnet.errors import NoSuchLink
from libnet.kernel import netns, rtnl
from libnet.kernel.errors import GONE, from_errno
from libnet.kernel.wire import NLM_F_CREATE, NLM_F_REPLACE, RTM_DELROUTE, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE

#: socket() arguments of an rtnetlink socket
NETLINK_ROUTE_SOCKET = (socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
LOOPBACK_INDEX = 1


def _route_requests(index: int, gateways: Sequence[str], add: bool) -> list[rtnl.Request]:
    """Default routes via ``gateways`` (interface CIDRs or plain addresses) out of ``index``."""
    reqs: list[rtnl.Request] = []
    for gw in gateways:
        via = gw.partition("/")[0]  # for the messages only: the body parses it
        body = rtnl.default_route_body(gw, index)
        if add:
            reqs.append((RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body, f"default route via {via}"))
        else:
            reqs.append((RTM_DELROUTE, 0, body, f"delete route via {via}"))
    return reqs


class SandboxLinks:
    """rtnetlink access to one sandbox namespace (a socket opened inside it).

    Blocking calls of a few microseconds each (the kernel answers inside
    ``send``); safe to use from the event loop.  Close it (context manager).
    """

    def __init__(self, sock: socket.socket) -> None:
        self._rtnl = rtnl.RtnlSocket(sock)

    @classmethod
    async def open(cls, path: str) -> SandboxLinks:
        """A handle for the namespace at ``path`` (``NoSuchNamespace`` if it is gone);
        the socket is made on this thread (:func:`libnet.kernel.netns.sockets_in`)."""
        (made,) = netns.sockets_in(path, [NETLINK_ROUTE_SOCKET])
        if isinstance(made, OSError):
            raise from_errno(made.errno or 0, "open rtnetlink socket", netns=path)
        return cls(made)

    def close(self) -> None:
        self._rtnl.close()

    def __enter__(self) -> SandboxLinks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def link_index(self, name: str) -> int | None:
        """Index of the link called ``name``, or None."""
        return self._rtnl.link_index(name)

    def _need(self, ifname: str, what: str, ids: dict[str, Any]) -> int:
        index = self._rtnl.link_index(ifname)
        if index is None:
            raise NoSuchLink(what, ifname=ifname, **ids)
        return index

    def configure(
        self,
        ifname: str,
        addresses: Sequence[str],
        gateways: Sequence[str] = (),
        alias: str | None = None,
        **ids: Any,
    ) -> None:
        """In one batch: ``lo`` up, ``addresses`` on ``ifname`` (IPv6 without
        DAD), ``ifname`` up (and marked with ``alias``), default routes via
        ``gateways``.  ``NoSuchLink`` (with ``ids``) if ``ifname`` is not here."""
        index = self._need(ifname, "the new interface is not in the sandbox", ids)
        reqs: list[rtnl.Request] = [(RTM_NEWLINK, 0, rtnl.setlink_body(LOOPBACK_INDEX, up=True), "bring lo up")]
        for cidr in addresses:
            reqs.append(
                (
                    RTM_NEWADDR,
                    NLM_F_CREATE | NLM_F_REPLACE,
                    rtnl.addr_body(index, cidr, nodad=True),
                    f"add address {cidr}",
                )
            )
        reqs.append((RTM_NEWLINK, 0, rtnl.setlink_body(index, up=True, alias=alias), f"bring {ifname} up"))
        reqs += _route_requests(index, gateways, add=True)
        self._rtnl.request(reqs)

    def set_default_routes(self, ifname: str, gateways: Sequence[str], present: bool, **ids: Any) -> None:
        """Add (``present``) or remove the default routes via ``gateways`` out of
        ``ifname``; routes already there (or already gone) are fine."""
        index = self._need(ifname, "the endpoint's interface is not in the sandbox", ids)
        self._rtnl.request(_route_requests(index, gateways, add=present), ignore=GONE)

    def retire(self, ifname: str, new_name: str) -> bool:
        """Take ``ifname`` out of the way: down and renamed to ``new_name``, so
        its name is free at once.  False if there is no such link."""
        index = self._rtnl.link_index(ifname)
        if index is None:
            return False
        msg = rtnl.setlink_body(index, up=False, name=new_name)
        self._rtnl.request([(RTM_NEWLINK, 0, msg, "retire interface")], ignore=GONE)
        return True
