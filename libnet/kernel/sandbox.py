"""Links, addresses and routes inside a sandbox's namespace, in batches.

Attaching a container is on libnet's hot path: the sandbox side of a join is
one rtnetlink batch (:mod:`libnet.kernel.rtnl`) on a socket opened inside
the sandbox's namespace by the calling thread -- no namespace thread, no pyroute2.  This module
builds those requests and decides which kernel answers mean "already gone"
(errno values stay here; callers see typed errors).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from typing import Any

from libnet.errors import KernelObjectExists, NoSuchLink
from libnet.kernel import netns, rtnl
from libnet.kernel.errors import GONE, from_errno
from libnet.kernel.wire import (
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    RTM_DELROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
)

#: socket() arguments of an rtnetlink socket
NETLINK_ROUTE_SOCKET = (socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
LOOPBACK_INDEX = 1


def _route_requests(index: int, gateways: Sequence[str], add: bool) -> list[rtnl.Request]:
    """Default routes via ``gateways`` (interface CIDRs or plain addresses) out of ``index``.

    Added with ``NLM_F_EXCL``, never ``NLM_F_REPLACE``: a namespace a runtime
    made may hold a default route of its own (same metric), and replacing it
    would remove what libnet did not make (and leave none after the endpoint
    goes).  The kernel answers ``EEXIST`` then; :func:`_check_existing` tells
    libnet's own route (a repeated add) from someone else's (refused), as CNI's
    bridge plugin refuses an ADD whose default route exists."""
    reqs: list[rtnl.Request] = []
    for gw in gateways:
        via = gw.partition("/")[0]  # for the messages only: the body parses it
        body = rtnl.default_route_body(gw, index)
        if add:
            reqs.append((RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body, f"default route via {via}"))
        else:
            reqs.append((RTM_DELROUTE, 0, body, f"delete route via {via}"))
    return reqs


def _describe(links: rtnl.RtnlSocket, route: rtnl.DefaultRoute) -> str:
    """A default route as ``ip route`` would show it, for an error message."""

    def hop(gateway: str | None, oif: int | None) -> str:
        dev = (links.link_name(oif) or str(oif)) if oif else None
        return " ".join(p for p in (f"via {gateway}" if gateway else "", f"dev {dev}" if dev else "") if p)

    if route.kind != "unicast":
        return f"{route.kind} default metric {route.metric}"
    if route.nexthops:
        return " + ".join(hop(g, o) for g, o in route.nexthops) + f" (multipath) metric {route.metric}"
    return f"{hop(route.gateway, route.oif) or 'default'} metric {route.metric}"


def _check_existing(
    links: rtnl.RtnlSocket, ifname: str, index: int, gateways: Sequence[str], ids: dict[str, Any]
) -> None:
    """After ``EEXIST`` for the default routes via ``gateways`` out of ``index``:
    fine if each family's default route is exactly that one (added before);
    ``KernelObjectExists`` naming the route that is there otherwise."""
    for gw in gateways:
        fam, packed, _ = rtnl.parse_address(gw)
        via = socket.inet_ntop(fam, packed)
        there = links.default_routes(fam)
        if any(r.gateway == via and r.oif == index for r in there):
            continue
        shown = ", ".join(_describe(links, r) for r in there)
        raise KernelObjectExists(
            f"the sandbox already has a default route libnet did not make ({shown or 'unknown'}); "
            f"libnet does not replace it: remove it, or use an internal network",
            errno=errno.EEXIST,
            ifname=ifname,
            gateway=via,
            **ids,
        )


#: the metric of the default routes libnet adds (none given: the kernel's default per family)
_OWN_METRIC: dict[int, int] = {socket.AF_INET: 0, socket.AF_INET6: 1024}


def _refuse_foreign(
    links: rtnl.RtnlSocket, ifname: str, index: int, gateways: Sequence[str], ids: dict[str, Any]
) -> None:
    """Before a hand-over adds the default routes via ``gateways``: ``KernelObjectExists`` (as
    :func:`_check_existing`) if a family holds a default route of the metric libnet's would have
    that is not libnet's, before anything is added.  Else the other family's route was added and
    taken away again, at each reconcile of a sandbox holding such a route."""
    for gw in gateways:
        fam, _, _ = rtnl.parse_address(gw)
        if any(r.metric == _OWN_METRIC.get(fam, 0) for r in links.default_routes(fam)):
            _check_existing(links, ifname, index, [gw], ids)


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
        first_route = len(reqs)
        reqs += _route_requests(index, gateways, add=True)
        self._request_routes(reqs, first_route, ifname, index, gateways, ids)

    def _request_routes(
        self,
        reqs: list[rtnl.Request],
        first_route: int,
        ifname: str,
        index: int,
        gateways: Sequence[str],
        ids: dict[str, Any],
        ignore: frozenset[int] = frozenset(),
    ) -> None:
        """Send ``reqs``, whose default-route adds start at ``first_route``; a route
        that exists is checked (:func:`_check_existing`), other failures raised.
        When the check refuses, the routes this batch did add (the other family's)
        are removed again: no half of the default routes stays behind."""
        failed = self._rtnl.request_each(reqs)
        exists = False
        for pos in sorted(failed):
            code = failed[pos]
            if pos >= first_route and code == errno.EEXIST:
                exists = True
            elif code not in ignore:
                raise from_errno(code, reqs[pos][3], **ids)
        if exists:
            try:
                _check_existing(self._rtnl, ifname, index, gateways, ids)
            except KernelObjectExists:
                added = [
                    (RTM_DELROUTE, 0, body, f"remove the {what} just added")
                    for pos, (_t, _f, body, what) in enumerate(reqs)
                    if pos >= first_route and pos not in failed
                ]
                self._rtnl.request(added, ignore=GONE)
                raise

    def set_default_routes(self, ifname: str, gateways: Sequence[str], present: bool, **ids: Any) -> None:
        """Add (``present``) or remove the default routes via ``gateways`` out of
        ``ifname``; routes already there (or already gone) are fine."""
        index = self._need(ifname, "the endpoint's interface is not in the sandbox", ids)
        reqs = _route_requests(index, gateways, add=present)
        if present:
            _refuse_foreign(self._rtnl, ifname, index, gateways, ids)
            self._request_routes(reqs, 0, ifname, index, gateways, ids)
        else:
            self._rtnl.request(reqs, ignore=GONE)

    def retire(self, ifname: str, new_name: str) -> bool:
        """Take ``ifname`` out of the way: down and renamed to ``new_name``, so
        its name is free at once.  False if there is no such link."""
        index = self._rtnl.link_index(ifname)
        if index is None:
            return False
        msg = rtnl.setlink_body(index, up=False, name=new_name)
        self._rtnl.request([(RTM_NEWLINK, 0, msg, "retire interface")], ignore=GONE)
        return True
