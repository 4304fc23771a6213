"""Peer events over cluster membership: the fast path, and failed hosts.

The cluster store is the source of truth for overlay peers; a Serf user event
announces each join and leave as well, because gossip usually arrives first
(whichever comes first wins; both are idempotent).  Membership changes are
handled here too: a host reported failed or left keeps its peers for a grace
period (a flapping link must not flush every FDB entry), then -- if the
membership still lists it failed or left -- they are removed and kept out,
also from the store's listing, until the host is seen alive again -- at
which point the store is read again and its peers return.

Host liveness is the Serf member's, not its libnet-agent's (DESIGN.md,
"Liveness"): the Serf agent outlives libnet-agent restarts and does not
leave on a stop, so a restarting agent produces no membership event at all.
On (re)subscribing, hosts the membership already lists as failed or left
(they went while this agent was down) get their grace period too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable

from libnet.cluster.membership import Membership, NodeFailed, NodeJoined, NodeLeft, NodeUpdated, UserEvent
from libnet.config import DEFAULT_GRACE
from libnet.drivers.overlay.peerdb import Peer, PeerTable
from libnet.errors import LibnetError

log = logging.getLogger("libnet.drivers.overlay.events")
EVENT = "libnet-peer"


def encode(op: str, peer: Peer) -> bytes:
    """A compact event payload (Serf carries at most 512 bytes with the name)."""
    return json.dumps(
        {
            "op": op,
            "n": peer.network_id,
            "e": peer.endpoint_id,
            "m": peer.mac,
            "v": peer.vtep,
            "h": peer.node,
            "4": peer.ipv4,
            "6": peer.ipv6,
            **({"a": peer.name} if peer.name else {}),
            **({"l": list(peer.aliases)} if peer.aliases else {}),
            **({"s": list(peer.services)} if peer.services else {}),
        },
        separators=(",", ":"),
    ).encode()


def decode(payload: bytes) -> tuple[str, Peer]:
    d = json.loads(payload)
    peer = Peer(d["e"], d["n"], d["m"], d["v"], d["h"], d.get("4"), d.get("6"), d.get("a") or "")
    return d["op"], dataclasses.replace(peer, aliases=tuple(d.get("l") or ()), services=tuple(d.get("s") or ()))


class PeerEvents:
    """Consumes membership events into the peer table; ``changed(network_id)`` is called after each change,
    ``resync(node)`` when a host comes back (to re-read the store)."""

    def __init__(
        self,
        membership: Membership,
        table: PeerTable,
        changed: Callable[[str], None],
        resync: Callable[[], None],
        grace: float = DEFAULT_GRACE,
    ) -> None:
        self.membership, self.table = membership, table
        self.changed, self.resync = changed, resync
        self.grace = grace
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._confirms: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        for t in self._timers.values():
            t.cancel()
        for c in list(self._confirms):
            c.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def announce(self, op: str, peer: Peer) -> None:
        """Broadcast a join ("add") or leave ("del"); the store already has it, so failures are harmless."""
        payload = encode(op, peer)
        if len(payload) + len(EVENT) > 512:
            return  # too large for a Serf event: the store's watch carries it
        with contextlib.suppress(LibnetError):
            await self.membership.broadcast(EVENT, payload)

    async def _run(self) -> None:
        while True:
            scan = asyncio.create_task(self._scan())
            try:
                async for ev in self.membership.events():
                    self._handle(ev)
                log.warning("membership events ended; resubscribing")
            except asyncio.CancelledError:
                scan.cancel()
                raise
            except LibnetError as exc:
                log.warning("membership events lost (%s); resubscribing", exc)
            scan.cancel()
            self.resync()
            await asyncio.sleep(1)

    async def _scan(self, delay: float = 0.5) -> None:
        """Hosts already failed or left (while this agent was down) get their grace period."""
        await asyncio.sleep(delay)  # the event stream is subscribed by then
        try:
            members = await self.membership.members()
        except LibnetError as exc:
            log.warning("cannot list the cluster's members: %s", exc)
            return
        for node in members:
            if node.status in ("failed", "left") and node.name != self.table.local_node:
                self._arm(node.name)

    def _arm(self, name: str) -> None:
        if name not in self._timers:
            self._timers[name] = asyncio.get_running_loop().call_later(self.grace, self._expire, name)

    def _handle(self, ev: object) -> None:
        if isinstance(ev, UserEvent) and ev.name == EVENT:
            try:
                op, peer = decode(ev.payload)
            except (ValueError, KeyError):
                log.warning("ignoring a malformed peer event")
                return
            changed = self.table.set(peer) if op == "add" else self.table.remove(peer.network_id, peer.endpoint_id)
            if changed:
                self.changed(peer.network_id)
        elif isinstance(ev, NodeFailed | NodeLeft) and ev.node.name != self.table.local_node:
            self._arm(ev.node.name)
        elif isinstance(ev, NodeJoined | NodeUpdated) and ev.node.status == "alive":
            name = ev.node.name
            timer = self._timers.pop(name, None)
            if timer is not None:
                timer.cancel()
            if name in self.table.blocked:
                self.table.blocked.discard(name)
                log.info("host %s is back: reading its peers again", name)
                self.resync()

    def _expire(self, node: str) -> None:
        self._timers[node] = asyncio.get_running_loop().call_later(3600, lambda: None)  # held while confirming
        self._confirms.add(asyncio.get_running_loop().create_task(self._confirm(node)))

    async def _confirm(self, node: str) -> None:
        """The grace period is over: remove the host's peers if it is still failed or left."""
        try:
            status = next((n.status for n in await self.membership.members() if n.name == node), "left")
        except LibnetError as exc:  # our own Serf agent is away: we cannot tell; ask again later
            log.warning("cannot confirm that host %s is gone (%s); asking again in %.0fs", node, exc, self.grace)
            held = self._timers.pop(node, None)
            if held is not None:  # not seen alive meanwhile
                held.cancel()
                self._arm(node)
            return
        finally:
            self._confirms.discard(asyncio.current_task())
        timer = self._timers.pop(node, None)
        if timer is None:  # seen alive meanwhile (the event handler dropped the timer)
            return
        timer.cancel()
        if status == "alive":
            log.info("host %s is %s again: its peers stay", node, status)
            return
        self.table.blocked.add(node)
        touched = self.table.remove_node(node)
        log.warning(
            "host %s failed or left %.0fs ago: removed its peers from %d networks", node, self.grace, len(touched)
        )
        for nid in touched:
            self.changed(nid)
