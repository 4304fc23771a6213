"""One queue per host that makes each VXLAN device hold what the peer table says.

Changes mark a network dirty; a single task applies dirty networks in order,
each as one batch of deletions and one of replacements (bursts coalesce: a
thousand peer events for one network become one kernel batch).  Replace
semantics mean re-applying is harmless.  :meth:`Programmer.reconcile` reads
the device back from the kernel and repairs any drift (an entry deleted by
hand, a stale one left by a crash).

New neighbour entries of a small batch (at most :data:`ANNOUNCE_MAX`) are
then announced into the network's local containers' ports (gratuitous ARP,
unsolicited NA: :mod:`libnet.kernel.announce`): a container that asked for a
brand-new peer a moment before its entry existed got no answer from the
device's proxy and would ask again only after a second.  Not after a device
was (re)built, nor by :meth:`Programmer.reconcile`, nor for bulk batches
(thousands of peers at start-up): those are not first contacts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from libnet.drivers.overlay.peerdb import Entries, PeerTable
from libnet.kernel.neighbours import Neighbour

log = logging.getLogger("libnet.drivers.overlay")
#: a batch adding at most this many neighbour entries has them announced to the local containers
ANNOUNCE_MAX = 64


class DeviceOps(Protocol):
    """The kernel side: one VXLAN device per network (blocking calls)."""

    def dump(self, network_id: str) -> Entries: ...

    def apply(self, network_id: str, remove: Entries, add: Entries) -> None: ...

    def announce(self, network_id: str, entries: set[Neighbour]) -> None:
        """Tell the network's local containers of new neighbour entries (best effort)."""

    def release(self, network_id: str) -> None:
        """Drop what is held open for the network's device (its namespace was rebuilt or removed)."""

    def close(self) -> None:
        """Drop everything held open."""


def diff(current: Entries, desired: Entries) -> tuple[Entries, Entries]:
    """(to remove, to add/replace).  A neighbour whose IP stays (new MAC) is
    replaced, not deleted: deleting by IP would remove the new entry too."""
    keep_ips = {n.ip for n in desired.neighbours}
    remove = Entries(
        {n for n in current.neighbours - desired.neighbours if n.ip not in keep_ips}, current.fdb - desired.fdb
    )
    add = Entries(desired.neighbours - current.neighbours, desired.fdb - current.fdb)
    return remove, add


class Programmer:
    """See the module docstring."""

    def __init__(self, ops: DeviceOps, table: PeerTable) -> None:
        self.ops, self.table = ops, table
        self._applied: dict[str, Entries] = {}
        self._dirty: dict[str, None] = {}  # ordered set
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.active: set[str] = set()  # networks whose device exists on this host

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.ops.close()

    def mark(self, network_id: str) -> None:
        """The peers of ``network_id`` changed: program it soon."""
        if network_id in self.active:
            self._dirty[network_id] = None
            self._idle.clear()
            self._wake.set()

    def reset(self, network_id: str) -> None:
        """The device was (re)built and holds no entries: program all of them again."""
        self.ops.release(network_id)  # its namespace may be a new one
        self._applied.pop(network_id, None)
        self.mark(network_id)

    def forget(self, network_id: str) -> None:
        self.ops.release(network_id)
        self.active.discard(network_id)
        self._applied.pop(network_id, None)
        self._dirty.pop(network_id, None)

    async def settled(self) -> None:
        """Wait until everything marked so far is programmed."""
        await self._idle.wait()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                nid = next(iter(self._dirty))
                del self._dirty[nid]
                try:
                    await self._program(nid)
                except Exception as exc:  # keep the queue alive; reconcile retries
                    log.warning("programming network %s failed: %s", nid[:12], exc)
            if not self._dirty:
                self._idle.set()

    async def _program(self, nid: str) -> None:
        if nid not in self.active:
            return
        desired = self.table.entries(nid)
        fresh = nid not in self._applied  # a (re)built device: everything, no first contact
        current = self._applied.get(nid, Entries())
        remove, add = diff(current, desired)
        if remove.neighbours or remove.fdb or add.neighbours or add.fdb:
            news = add.neighbours if not fresh and len(add.neighbours) <= ANNOUNCE_MAX else set()
            await asyncio.to_thread(self._apply, nid, remove, add, news)
        self._applied[nid] = desired

    def _apply(self, nid: str, remove: Entries, add: Entries, news: set[Neighbour]) -> None:
        """One batch, then its new neighbours announced (on a worker thread)."""
        self.ops.apply(nid, remove, add)
        if news:
            try:
                self.ops.announce(nid, news)
            except Exception as exc:  # never fails programming: it only saves a container a retransmission
                log.debug("announcing %d neighbours of network %s: %s", len(news), nid[:12], exc)

    async def reconcile(self, network_id: str) -> int:
        """Compare the device with the desired state and repair it; returns repairs made."""
        if network_id not in self.active:
            return 0
        actual = await asyncio.to_thread(self.ops.dump, network_id)
        desired = self.table.entries(network_id)
        remove, add = diff(actual, desired)
        n = len(remove.neighbours) + len(remove.fdb) + len(add.neighbours) + len(add.fdb)
        if n:
            await asyncio.to_thread(self.ops.apply, network_id, remove, add)
            log.warning("overlay network %s: repaired %d neighbour/FDB entries", network_id[:12], n)
        self._applied[network_id] = desired
        return n
