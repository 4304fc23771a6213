"""Peers of the overlay networks from the cluster store: one watch per network
set up on this host, and the periodic anti-entropy round.

A watch reads the network's whole peer prefix into the :class:`PeerTable`,
then follows every change from the revision before that read -- so nothing
changed meanwhile is lost.  Restarting the watches is also the anti-entropy
read (a plain re-list racing the watch could put an older listing over a
newer event).  A lost watch reads everything again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from libnet import model
from libnet.drivers.overlay.peerdb import Peer, PeerTable
from libnet.errors import LibnetError
from libnet.store.base import Store

log = logging.getLogger("libnet.drivers.overlay")
#: the model kind of a peer record
PEER_KIND = "overlay_peer"


def peers_prefix(prefix: str, network_id: str) -> str:
    """The store prefix of a network's peer records (``prefix``: the driver's keys)."""
    return f"{prefix}/peers/{network_id}/"


def encode(peer: Peer) -> bytes:
    return model.encode(PEER_KIND, peer.to_data())


def decode(value: bytes) -> Peer:
    return Peer.from_data(model.decode(value, PEER_KIND))


class PeerWatch:
    """The store watches of the networks set up here (see the module docstring).

    ``changed`` is called with a network id whenever its peers changed."""

    def __init__(self, table: PeerTable, changed: Callable[[str], None], prefix: str) -> None:
        self.table, self._changed, self._prefix = table, changed, prefix
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._anti_entropy: asyncio.Task[None] | None = None

    def networks(self) -> list[str]:
        """The networks watched."""
        return list(self._tasks)

    def watching(self, network_id: str) -> bool:
        return network_id in self._tasks

    def task(self, network_id: str) -> asyncio.Task[None] | None:
        """The task watching ``network_id``, if any."""
        return self._tasks.get(network_id)

    def start(self, store: Store, network_id: str) -> asyncio.Future[None]:
        """(Re)start the watch of a network; the future is done after its full read."""
        old = self._tasks.get(network_id)
        if old is not None:
            old.cancel()
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tasks[network_id] = asyncio.create_task(self._watch(store, network_id, ready))
        return ready

    def resync_all(self, store: Store) -> list[asyncio.Future[None]]:
        """Anti-entropy: every watched network's peers read again from the store."""
        return [self.start(store, nid) for nid in list(self._tasks)]

    async def stop(self, network_id: str) -> None:
        task = self._tasks.pop(network_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def start_anti_entropy(self, interval: float, repair: Callable[[], Awaitable[object]]) -> None:
        """Every ``interval`` s, ``repair()`` (once started, until :meth:`close`)."""
        if self._anti_entropy is None:
            self._anti_entropy = asyncio.create_task(self._every(interval, repair))

    def stop_anti_entropy(self) -> None:
        """Pause the periodic round (:meth:`start_anti_entropy` starts it again)."""
        if self._anti_entropy is not None:
            self._anti_entropy.cancel()
            self._anti_entropy = None

    @staticmethod
    async def _every(interval: float, repair: Callable[[], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(interval)
            await repair()

    async def close(self) -> None:
        tasks = [*self._tasks.values(), *filter(None, [self._anti_entropy])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._anti_entropy = None

    async def _watch(self, store: Store, network_id: str, ready: asyncio.Future[None] | None = None) -> None:
        """Peers of one network from the store: full read, then every change."""
        prefix = peers_prefix(self._prefix, network_id)
        while True:
            try:
                rev = await store.revision()
                peers = [decode(pair.value) for pair in await store.list(prefix)]
                self.table.replace_network(network_id, peers)
                self._changed(network_id)
                if ready is not None and not ready.done():
                    ready.set_result(None)
                async for event in store.watch_prefix(prefix, start_revision=rev):
                    if event.kind == "put":
                        changed = self.table.set(decode(event.value))
                    else:
                        changed = self.table.remove(network_id, event.key.rsplit("/", 1)[1])
                    if changed:
                        self._changed(network_id)
            except asyncio.CancelledError:
                if ready is not None:
                    ready.cancel()
                raise
            except LibnetError as exc:  # a lost watch: read everything again
                log.warning("overlay peer watch of %s: %s; re-reading", network_id[:12], exc)
                await asyncio.sleep(1)
