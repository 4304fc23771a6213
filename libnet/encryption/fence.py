"""The fail-closed guard of encrypted overlays: an ``unreachable`` route over the tunnel range.

Encrypted VXLAN is sent to peers' tunnel addresses (inside the encryption
range), and only this host's route through its WireGuard interface takes it
there.  The nftables guards (:func:`libnet.kernel.firewall.tunnel_guard_rules`)
drop what would leave otherwise, but a ruleset flush (an nftables or
firewalld reload) removes them until the supervision puts them back -- and
while the agent is down, not at all.  Were the WireGuard interface to go down
then (its route goes with it), packets to tunnel addresses would follow the
default route, in clear.

The fence needs no firewall: one ``unreachable <range> metric 4294967295
proto 108`` route in the host namespace's main table.  At the highest metric
it never wins over the WireGuard route (same prefix, lower metric), yet
whenever that route is gone it is the longest match, so packets to tunnel
addresses are dropped (EHOSTUNREACH) and never reach a less specific route.

Ownership (:mod:`libnet.ownership`, "Routes"): the route is libnet's only on
an exact match of range, type ``unreachable``, metric :data:`METRIC` and
protocol :data:`~libnet.ownership.ROUTE_PROTO`; its range is recorded in
``<state_dir>/wireguard/fence`` before it is made, so ``libnet-agent
--purge`` removes exactly it, and a route of anyone else (another type or
protocol at that metric) is never replaced or removed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os

from libnet.errors import Conflict, KernelObjectExists
from libnet.kernel.api import LinkOps
from libnet.kernel.netlink import RTN_UNREACHABLE
from libnet.ownership import ROUTE_PROTO

#: the highest route metric (u32): the fence never wins over any other route to the range
METRIC = 0xFFFFFFFF
RECORD = "fence"


def _ours(nl: LinkOps, range_: str) -> bool | None:
    """Whether the route at the fence's place is libnet's fence (None: there is none)."""
    have = nl.route_at(range_, METRIC)
    return None if have is None else have == (RTN_UNREACHABLE, ROUTE_PROTO)


def _foreign(range_: str) -> Conflict:
    return Conflict(
        f"a route to {range_} with metric {METRIC} that is not libnet's is in the way of the encrypted overlays' "
        "fail-closed route; libnet leaves it alone (remove it, or choose another --encryption-range)",
        range=range_,
    )


def ensure(nl: LinkOps, state_dir: str, range_: str) -> bool:
    """The fence for ``range_`` in ``nl``'s namespace: made (after recording it) when missing;
    returns whether it was made (a fence recorded for another range -- the option changed -- goes).
    Raises ``Conflict`` when another's route holds its place."""
    if recorded(state_dir) not in (None, range_):
        remove(nl, state_dir)
    ours = _ours(nl, range_)
    if ours:
        return False
    if ours is False:
        raise _foreign(range_)
    _record(state_dir, range_)
    try:
        nl.add_unreachable_route(range_, METRIC, ROUTE_PROTO)
    except KernelObjectExists:  # made meanwhile: by libnet (another thread of this agent) or not
        if not _ours(nl, range_):
            raise _foreign(range_) from None
        return False
    return True


def present(nl: LinkOps, range_: str) -> bool:
    """Whether the fence for ``range_`` is in ``nl``'s namespace."""
    return bool(_ours(nl, range_))


def remove(nl: LinkOps, state_dir: str) -> str | None:
    """Remove the fence recorded in ``state_dir`` (only on an exact match: another's route stays)
    and its record; returns its range, None when there was none."""
    range_ = recorded(state_dir)
    if range_ is None:
        return None
    removed = range_ if _ours(nl, range_) else None
    if removed:
        nl.delete_unreachable_route(range_, METRIC, ROUTE_PROTO)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(state_dir, "wireguard", RECORD))
    return removed


def recorded(state_dir: str) -> str | None:
    """The range of the fence recorded in ``state_dir`` (None: none, or not a network)."""
    try:
        with open(os.path.join(state_dir, "wireguard", RECORD)) as f:
            return str(ipaddress.ip_network(f.read().strip()))
    except (OSError, ValueError):
        return None


def _record(state_dir: str, range_: str) -> None:
    folder = os.path.join(state_dir, "wireguard")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    tmp = os.path.join(folder, RECORD + ".tmp")
    with open(tmp, "w") as f:
        f.write(f"{range_}\n")
    os.replace(tmp, os.path.join(folder, RECORD))
