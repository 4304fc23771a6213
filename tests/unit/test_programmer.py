"""The programming queue with a fake device."""

from __future__ import annotations

import asyncio

from libnet.drivers.overlay.peerdb import Entries, Peer, PeerTable
from libnet.drivers.overlay.programmer import Programmer, diff
from libnet.kernel.neighbours import FdbEntry, Neighbour


class FakeDevices:
    def __init__(self) -> None:
        self.state: dict[str, Entries] = {}
        self.batches = 0

    def dump(self, nid: str) -> Entries:
        e = self.state.setdefault(nid, Entries())
        return Entries(set(e.neighbours), set(e.fdb))

    def apply(self, nid: str, remove: Entries, add: Entries) -> None:
        self.batches += 1
        e = self.state.setdefault(nid, Entries())
        e.neighbours -= remove.neighbours
        e.fdb -= remove.fdb
        for n in add.neighbours:  # replace semantics: one MAC per IP
            e.neighbours = {x for x in e.neighbours if x.ip != n.ip} | {n}
        e.fdb |= add.fdb


def p(eid: str, last: int, vtep: str, node: str) -> Peer:
    return Peer(eid, "n1", f"02:42:c6:33:64:{last:02x}", vtep, node, f"198.51.100.{last}/24")


async def test_bursts_coalesce_and_state_converges() -> None:
    table = PeerTable("h1")
    dev = FakeDevices()
    prog = Programmer(dev, table)
    prog.active.add("n1")
    prog.start()
    for i in range(2, 102):
        table.set(p(f"e{i}", i, "203.0.113.12", "h2"))
        prog.mark("n1")
    await asyncio.wait_for(prog.settled(), 5)
    assert dev.state["n1"].neighbours == table.entries("n1").neighbours
    assert dev.batches <= 3  # a hundred changes, a handful of kernel batches
    table.remove("n1", "e2")
    table.set(p("e2b", 2, "203.0.113.13", "h3"))  # the address moved to another host
    prog.mark("n1")
    await asyncio.wait_for(prog.settled(), 5)
    assert Neighbour("198.51.100.2", "02:42:c6:33:64:02") in dev.state["n1"].neighbours
    assert FdbEntry("02:42:c6:33:64:02", "203.0.113.13") in dev.state["n1"].fdb
    assert FdbEntry("02:42:c6:33:64:02", "203.0.113.12") not in dev.state["n1"].fdb
    await prog.close()


async def test_reconcile_repairs_drift_and_inactive_networks_are_skipped() -> None:
    table = PeerTable("h1")
    dev = FakeDevices()
    prog = Programmer(dev, table)
    table.set(p("e2", 2, "203.0.113.12", "h2"))
    prog.mark("n1")  # not active on this host: nothing happens
    assert await prog.reconcile("n1") == 0 and "n1" not in dev.state
    prog.active.add("n1")
    assert await prog.reconcile("n1") == 3  # neighbour + fdb + flood
    dev.state["n1"].neighbours.clear()  # someone deleted it by hand
    dev.state["n1"].fdb.add(FdbEntry("02:42:00:00:00:99", "203.0.113.99"))  # a stale one
    assert await prog.reconcile("n1") == 2
    assert dev.state["n1"].neighbours == table.entries("n1").neighbours
    assert dev.state["n1"].fdb == table.entries("n1").fdb


def test_diff_keeps_replaced_neighbours() -> None:
    cur = Entries({Neighbour("198.51.100.2", "02:00:00:00:00:01")}, set())
    want = Entries({Neighbour("198.51.100.2", "02:00:00:00:00:02")}, set())
    remove, add = diff(cur, want)
    assert remove.neighbours == set() and add.neighbours == want.neighbours
