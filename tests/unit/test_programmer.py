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
        self.released: list[str] = []
        self.closed = False
        self.announced: list[tuple[str, set[Neighbour]]] = []
        self.announce_fails = False

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

    def announce(self, nid: str, entries: set[Neighbour]) -> None:
        self.announced.append((nid, set(entries)))
        if self.announce_fails:
            raise OSError("no packet socket")

    def release(self, nid: str) -> None:
        self.released.append(nid)

    def close(self) -> None:
        self.closed = True


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


async def test_a_rebuilt_or_forgotten_device_releases_its_handle() -> None:
    table = PeerTable("h1")
    dev = FakeDevices()
    prog = Programmer(dev, table)
    prog.active.add("n1")
    prog.reset("n1")  # the device was (re)built: its namespace may be a new one
    prog.forget("n1")
    assert dev.released == ["n1", "n1"]
    await prog.close()
    assert dev.closed


class _Handle:
    def __init__(self, ns: str, log: list[str]) -> None:
        self.ns, self.log = ns, log

    def replace_neighbours(self, link: str, entries: object) -> None:
        self.log.append(f"neigh {self.ns}")

    def replace_fdb(self, link: str, entries: object) -> None:
        self.log.append(f"fdb {self.ns}")

    def delete_neighbours(self, link: str, entries: object) -> None:
        self.log.append(f"del-neigh {self.ns}")

    def delete_fdb(self, link: str, entries: object) -> None:
        self.log.append(f"del-fdb {self.ns}")

    def close(self) -> None:
        self.log.append(f"close {self.ns}")


class _Kernel:
    def __init__(self) -> None:
        self.log: list[str] = []

    def netlink(self, ns: str) -> _Handle:
        self.log.append(f"open {ns}")
        return _Handle(ns, self.log)


class _Plumbing:
    def __init__(self) -> None:
        self.kernel = _Kernel()

    def ns_name(self, vni: int) -> str:
        return f"ns{vni}"


def test_device_handles_are_kept_between_batches_and_dropped_on_release() -> None:
    """Opening a namespace's netlink handle (a thread and its sockets) cost more than a peer change's
    batch, on every host of a converging overlay: one handle per network, kept until released."""
    from libnet.drivers.overlay.plumbing import VxlanDevices

    plumbing = _Plumbing()
    vnis = {"n1": 300}
    devices = VxlanDevices(plumbing, vnis.get)  # type: ignore[arg-type]
    one = Entries({Neighbour("198.51.100.2", "02:42:c6:33:64:02")}, {FdbEntry("02:42:c6:33:64:02", "203.0.113.12")})
    devices.apply("n1", Entries(), one)
    devices.apply("n1", one, Entries())
    log = plumbing.kernel.log
    assert log == ["open ns300", "neigh ns300", "fdb ns300", "del-neigh ns300", "del-fdb ns300"]  # no empty calls
    devices.release("n1")
    vnis["n1"] = 301  # rebuilt elsewhere: a new handle in the new namespace
    devices.apply("n1", Entries(), one)
    assert log[5:] == ["close ns300", "open ns301", "neigh ns301", "fdb ns301"]
    devices.close()
    assert log[-1] == "close ns301"


async def test_new_neighbours_of_small_batches_are_announced_but_not_bulk_or_rebuilt_ones() -> None:
    """A container that asked for a brand-new peer just before its entry existed got no answer from the
    device's proxy and waited ~1 s (ARP retransmission): new entries of a normal, small batch are announced
    to the local containers; the whole table of a (re)built device, bulk batches and repairs are not."""
    from libnet.drivers.overlay.programmer import ANNOUNCE_MAX

    table = PeerTable("h1")
    dev = FakeDevices()
    prog = Programmer(dev, table)
    prog.active.add("n1")
    prog.start()
    for i in range(2, 12):  # start-up: the device was just built, the peers read in bulk
        table.set(p(f"e{i}", i, "203.0.113.12", "h2"))
    prog.reset("n1")
    await asyncio.wait_for(prog.settled(), 5)
    assert dev.state["n1"].neighbours == table.entries("n1").neighbours and dev.announced == []

    table.set(p("e20", 20, "203.0.113.13", "h3"))  # one container joins on another host
    prog.mark("n1")
    await asyncio.wait_for(prog.settled(), 5)
    assert dev.announced == [("n1", {Neighbour("198.51.100.20", "02:42:c6:33:64:14")})]

    table.remove("n1", "e20")  # a departure: nothing to announce
    prog.mark("n1")
    await asyncio.wait_for(prog.settled(), 5)
    assert len(dev.announced) == 1

    for i in range(30, 31 + ANNOUNCE_MAX):  # a bulk batch (a big host came back): not announced
        table.set(p(f"e{i}", i, "203.0.113.14", "h4"))
    prog.mark("n1")
    await asyncio.wait_for(prog.settled(), 5)
    assert len(dev.announced) == 1 and len(dev.state["n1"].neighbours) == 10 + ANNOUNCE_MAX + 1

    dev.state["n1"].neighbours.clear()  # repairs are not first contacts
    assert await prog.reconcile("n1") > 0 and len(dev.announced) == 1

    dev.announce_fails = True  # a failing announcement never fails programming
    table.set(p("e21", 21, "203.0.113.13", "h3"))
    prog.mark("n1")
    await asyncio.wait_for(prog.settled(), 5)
    assert len(dev.announced) == 2 and Neighbour("198.51.100.21", "02:42:c6:33:64:15") in dev.state["n1"].neighbours
    table.set(p("e22", 22, "203.0.113.13", "h3"))
    prog.mark("n1")
    await asyncio.wait_for(prog.settled(), 5)
    assert Neighbour("198.51.100.22", "02:42:c6:33:64:16") in dev.state["n1"].neighbours
    await prog.close()
