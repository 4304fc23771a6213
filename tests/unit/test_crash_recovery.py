"""A crash at any step of an operation is finished or undone by the next
reconcile, and reconcile never frees what another instance may be using
(issue 13, faults 5, 6 and 9; DESIGN.md "Ownership")."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ipam.ipam import StoreIpam
from libnet import Config, Controller
from libnet.errors import KernelError, KernelObjectExists, Unavailable
from libnet.store.memory import MemoryStore
from libnet.testing.fakes import FakeDriver, FakeNamespaces


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no rollback is trusted."""


def _controller(tmp_path, store, cluster=None, name="h1", namespaces=None, drivers=None) -> Controller:
    state = tmp_path / name
    state.mkdir(exist_ok=True)
    return Controller(
        Config(state_dir=str(state), resolv_conf=str(tmp_path / "resolv.conf"), node_name=name),
        store=store,
        cluster_store=cluster or store,
        ipam=StoreIpam(store, cluster or store),
        drivers=drivers or {"bridge": FakeDriver("bridge"), "overlay": FakeDriver("overlay", scope="global")},
        namespaces=namespaces or FakeNamespaces(),
    )


async def _restart(tmp_path, old: Controller) -> Controller:
    """The same host after a crash: same state dir (instance), store, kernel (fakes)."""
    new = _controller(tmp_path, old._store, old._cluster, old.config.node_name, old._namespaces, old._drivers)
    await new.start()
    assert new.instance == old.instance
    return new


def _kill_in(driver: FakeDriver, method: str) -> None:
    original = getattr(driver, method)

    async def dying(*args):
        await original(*args)  # the step itself happened in the kernel
        raise Killed(method)

    setattr(driver, method, dying)


def _heal(driver: FakeDriver, method: str) -> None:
    driver.__dict__.pop(method, None)


@pytest.mark.parametrize("step", ["leave", "revoke_external_connectivity", "delete_endpoint"])
async def test_a_kill_during_disconnect_is_finished_by_reconcile(tmp_path, step) -> None:
    (tmp_path / "resolv.conf").write_text("nameserver 198.51.100.53\n")
    ctl = _controller(tmp_path, MemoryStore())
    await ctl.start()
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/24")
    sb = await ctl.create_sandbox(hostname="b")
    ep = await ctl.connect("front", sb.id)
    drv = ctl.driver("bridge")
    _kill_in(drv, step)
    with pytest.raises(Killed):
        await ctl.disconnect("front", sb.id)
    _heal(drv, step)

    again = await _restart(tmp_path, ctl)
    report = await again.reconcile()
    assert any("finished deleting endpoint" in line for line in report.repaired), report
    assert await again.endpoints() == []
    assert (await again.sandbox(sb.id)).endpoints == []
    assert ep.id not in drv.joined
    # the name and the address are free again: the same connect works, network rm works
    ep2 = await again.connect("front", sb.id)
    assert ep2.name == "b" and ep2.ipv4 == ep.ipv4
    await again.disconnect("front", sb.id)
    await again.delete_network("front")


async def test_a_kill_during_leave_is_rolled_forward(tmp_path) -> None:
    ctl = _controller(tmp_path, MemoryStore())
    await ctl.start()
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/24")
    sb = await ctl.create_sandbox()
    ep = await ctl.connect("front", sb.id)
    drv = ctl.driver("bridge")
    _kill_in(drv, "leave")
    with pytest.raises(Killed):
        await ctl.leave(ep.id)
    _heal(drv, "leave")
    again = await _restart(tmp_path, ctl)
    await again.reconcile()
    left = await again.endpoint(ep.id)
    assert left.sandbox_id is None and not left.leaving  # unplugged, kept (leave is not delete)
    assert (await again.sandbox(sb.id)).endpoints == []
    await again.join(ep.id, sb.id)  # and usable again


async def test_kills_during_sandbox_rm_and_network_rm_are_finished(tmp_path) -> None:
    ctl = _controller(tmp_path, MemoryStore())
    await ctl.start()
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/24")
    sb = await ctl.create_sandbox()
    await ctl.connect("front", sb.id)
    drv = ctl.driver("bridge")
    _kill_in(drv, "delete_endpoint")
    with pytest.raises(Killed):
        await ctl.delete_sandbox(sb.id)
    _heal(drv, "delete_endpoint")
    again = await _restart(tmp_path, ctl)
    await again.reconcile()
    assert await again.sandboxes() == [] and await again.endpoints() == []
    assert not again._namespaces.owned()

    _kill_in(drv, "delete_network")
    with pytest.raises(Killed):
        await again.delete_network("front")
    _heal(drv, "delete_network")
    third = await _restart(tmp_path, again)
    report = await third.reconcile()
    assert await third.networks() == [], report
    assert await third.ipam.pool_owners() == [] or all(p.owner != "front" for p in await third.ipam.pool_owners())
    await third.create_network("front", ipv4_subnet="198.51.100.0/24")  # name and subnet free again


async def test_roll_forward_never_frees_an_address_that_changed_hands(tmp_path) -> None:
    ctl = _controller(tmp_path, MemoryStore())
    await ctl.start()
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/24")
    a = await ctl.create_endpoint("front", "a")
    # killed after its addresses were released, before the record went
    ctl.repo.delete_endpoint = _dies  # type: ignore[method-assign]
    with pytest.raises(Killed):
        await ctl.delete_endpoint(a.id)
    again = await _restart(tmp_path, ctl)
    b = await again.create_endpoint("front", "b")
    assert b.ipv4 == a.ipv4  # the freed address was taken by another endpoint meanwhile
    await again.reconcile()  # rolls a's delete forward
    held = {x.address: x.owner for x in await again.ipam.audit()}
    assert held[b.ipv4] == b.id


async def _dies(*_args) -> None:
    raise Killed("store write")


async def test_reconcile_leaves_other_instances_in_flight_allocations(tmp_path) -> None:
    """Fault 6: host 1 reconciles while host 2 is half way through creating an
    endpoint on a global network (address allocated, endpoint not stored yet)."""
    (tmp_path / "resolv.conf").write_text("")
    cluster = MemoryStore()
    h1 = _controller(tmp_path, MemoryStore(), cluster, "h1")
    h2 = _controller(tmp_path, MemoryStore(), cluster, "h2")
    await h1.start()
    await h2.start()
    assert h1.instance != h2.instance
    await h1.create_network("ov", "overlay", ipv4_subnet="198.51.100.0/24")
    gate, go = asyncio.Event(), asyncio.Event()
    drv2 = h2.driver("overlay")
    original = drv2.create_endpoint

    async def paused(nw, ep):
        gate.set()
        await go.wait()
        await original(nw, ep)

    drv2.create_endpoint = paused  # type: ignore[method-assign]
    creating = asyncio.create_task(h2.create_endpoint("ov", "web"))
    await asyncio.wait_for(gate.wait(), 5)
    report = await h1.reconcile()
    assert not any("address" in line or "name reservation" in line for line in report.removed), report
    go.set()
    ep = await creating
    other = await h1.create_endpoint("ov", "db")
    assert other.ipv4 != ep.ipv4 and other.mac != ep.mac


async def test_a_refused_overlay_create_leaves_no_ipam_keys(tmp_path) -> None:
    """Fault 9: a create the driver refuses (no cluster) writes nothing."""

    class NoCluster(FakeDriver):
        async def check_network(self, nw) -> None:
            raise Unavailable("overlay networks need a cluster store and this host's VTEP address (--advertise)")

    store = MemoryStore()
    broken = FakeDriver("bridge")
    ctl = _controller(tmp_path, store, drivers={"overlay": NoCluster("overlay", scope="global"), "bridge": broken})
    await ctl.start()
    before = [(p.key, p.value) for p in await store.list("libnet/")]
    with pytest.raises(Unavailable):
        await ctl.create_network("ov", "overlay")
    assert [(p.key, p.value) for p in await store.list("libnet/")] == before
    # a failure later (in the kernel) is rolled back: at most the space's ULA /48 stays (made once per store)
    broken.fail_on = "create_network"
    with pytest.raises(KernelError):
        await ctl.create_network("br", ipv4_subnet="198.51.100.0/24")
    assert [p.key for p in await store.list("libnet/")] == ["libnet/v1/ipam/local/ula48"]


async def test_an_endpoint_without_its_id_index_is_still_rolled_back(tmp_path) -> None:
    """A crash between an endpoint's record and its id index (older versions
    wrote the record first): reconcile still finds it and removes it."""
    store = MemoryStore()
    ctl = _controller(tmp_path, store)
    await ctl.start()
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/24")
    ep = await ctl._create_endpoint("front", "half", connecting=True)
    await store.delete(f"libnet/v1/endpoint-ids/{ep.id}")
    again = await _restart(tmp_path, ctl)
    report = await again.reconcile()
    assert await again.endpoints() == [], report
    assert not report.missing
    assert (await again.create_endpoint("front", "half")).ipv4 == ep.ipv4


@pytest.mark.parametrize("lost", ["libnet/v1/ipam/local/pools", "libnet/v1/ipam/local/addresses/", "libnet/v1/names/"])
async def test_lost_reservations_are_restored_from_the_records(tmp_path, lost: str) -> None:
    """A store that lost its IPAM or name keys while the network and endpoint
    records survive: reconcile reserves them again, so nothing live is handed
    out twice (a subnet, an address and MAC, a name)."""
    store = MemoryStore()
    ctl = _controller(tmp_path, store)
    await ctl.start()
    await ctl.create_network("web", ipv4_subnet="198.51.100.0/26", ipv6_subnet="2001:db8:1::/64")
    sb = await ctl.create_sandbox()
    live = await ctl.connect("web", sb.id, name="w1")
    for pair in await store.list(lost):
        await store.delete(pair.key)
    again = await _restart(tmp_path, ctl)
    report = await again.reconcile()
    assert report.repaired and not report.removed, report
    from libnet.errors import NameInUse, PoolOverlap

    with pytest.raises(PoolOverlap):
        await again.create_network("dup", ipv4_subnet="198.51.100.0/26")
    with pytest.raises(NameInUse):
        await again.create_network("web", ipv4_subnet="198.51.100.64/26")
    other = await again.connect("web", (await again.create_sandbox()).id, name="w2")
    assert other.ipv4 != live.ipv4 and other.ipv6 != live.ipv6 and other.mac != live.mac
    with pytest.raises(NameInUse):
        await again.create_endpoint("web", "w1")
    assert not (await again.reconcile()).repaired  # nothing left to restore


def _sandbox_dir(ctl: Controller, sandbox_id: str) -> Path:
    return Path(ctl.config.state_dir) / "sandboxes" / sandbox_id


def _names_of(hosts: str, address: str) -> list[str]:
    return [name for line in hosts.splitlines() if line.split()[:1] == [address] for name in line.split()[1:]]


@pytest.mark.parametrize("step", ["connect", "disconnect"])
async def test_a_kill_before_a_join_or_leave_wrote_the_files_is_repaired(tmp_path, step) -> None:
    """kill -9 between the store step of a join (leave) and its files: hosts lacked the
    endpoint (kept the gone one) for good; reconcile rewrites them from the store."""
    (tmp_path / "resolv.conf").write_text("nameserver 198.51.100.53\n")
    ctl = _controller(tmp_path, MemoryStore())
    await ctl.start()
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/24")
    sb = await ctl.create_sandbox(hostname="b")
    hosts = _sandbox_dir(ctl, sb.id) / "hosts"
    before = hosts.read_text()
    ep = await ctl.connect("front", sb.id, name="web")
    joined = hosts.read_text()
    address = ep.ipv4.split("/")[0]
    assert _names_of(joined, address) == ["b", "web"]
    if step == "disconnect":
        await ctl.disconnect("front", sb.id)
        hosts.write_text(joined)  # the files as before the leave: the kill came first
        want_gone = True
    else:
        hosts.write_text(before)  # the files as before the join
        want_gone = False

    again = await _restart(tmp_path, ctl)
    report = await again.reconcile()
    assert any("resolv.conf/hosts rewritten" in line for line in report.repaired), report
    text = hosts.read_text()
    assert _names_of(text, address) == ([] if want_gone else ["b", "web"]), text
    # nothing to do the next time; an unchanged file is kept as it is (no new inode)
    inode = hosts.stat().st_ino
    report = await again.reconcile()
    assert not any("rewritten" in line for line in report.repaired), report
    third = await _restart(tmp_path, again)
    report = await third.reconcile()
    assert not any("rewritten" in line for line in report.repaired), report
    assert hosts.stat().st_ino == inode


async def test_a_kill_before_the_default_routes_were_handed_over_is_repaired(tmp_path) -> None:
    """kill -9 after a leave's store step, before the next endpoint took the default routes
    over: the sandbox had no way out until its next leave; reconcile hands them over."""
    ctl = _controller(tmp_path, MemoryStore())
    await ctl.start()
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/25")
    await ctl.create_network("side", ipv4_subnet="198.51.100.128/25")
    sb = await ctl.create_sandbox()
    e_front = await ctl.connect("front", sb.id)
    e_side = await ctl.connect("side", sb.id)
    assert e_front.gateway and not e_side.gateway
    drv = ctl.driver("bridge")

    async def killed(sb):  # type: ignore[no-untyped-def]
        raise Killed("hand-over")

    ctl._joins.gateway.successor = killed  # type: ignore[method-assign]
    with pytest.raises(Killed):
        await ctl.disconnect("front", sb.id)
    assert not drv.gateways[e_side.id]

    again = await _restart(tmp_path, ctl)
    report = await again.reconcile()
    assert any("default routes handed over" in line for line in report.repaired), report
    assert drv.gateways[e_side.id] is True
    assert (await again.endpoint(e_side.id)).gateway
    report = await again.reconcile()
    assert not any("handed over" in line for line in report.repaired), report


async def test_a_refused_hand_over_in_reconcile_is_reported_not_raised(tmp_path) -> None:
    """A default route libnet did not make is in the sandbox: reconcile says so and changes nothing."""
    ctl = _controller(tmp_path, MemoryStore())
    await ctl.start()
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/25")
    await ctl.create_network("side", ipv4_subnet="198.51.100.128/25")
    sb = await ctl.create_sandbox()
    await ctl.connect("front", sb.id)
    e_side = await ctl.connect("side", sb.id)
    drv = ctl.driver("bridge")

    async def refuse(nw, ep, sb_info, gateway):  # type: ignore[no-untyped-def]
        raise KernelObjectExists("the sandbox already has a default route libnet did not make", errno=17)

    drv.set_gateway = refuse  # type: ignore[method-assign]
    await ctl.disconnect("front", sb.id)  # refused at the leave: logged, the leave done
    report = await ctl.reconcile()
    assert any("does not take over the default routes" in line for line in report.missing), report
    assert not (await ctl.endpoint(e_side.id)).gateway


async def test_reconcile_writes_no_files_for_another_instances_sandbox(tmp_path) -> None:
    store = MemoryStore()
    mine = _controller(tmp_path, store, name="h1")
    theirs = _controller(tmp_path, store, name="h2")
    await mine.start()
    await theirs.start()
    await theirs.create_network("front", ipv4_subnet="198.51.100.0/24")
    sb = await theirs.create_sandbox(hostname="b")
    await theirs.connect("front", sb.id)
    await mine.reconcile()
    assert not _sandbox_dir(mine, sb.id).exists()


async def test_reconcile_opens_no_fifo_in_the_place_of_a_file(tmp_path) -> None:
    """Breaker: a FIFO named hosts was opened (O_NONBLOCK) to compare its text with the store's, which
    let a writer waiting on it through (a device would see an open too); now only a regular file is
    opened, and the FIFO is replaced by the file."""
    import os
    import threading

    (tmp_path / "resolv.conf").write_text("nameserver 198.51.100.53\n")
    ctl = _controller(tmp_path, MemoryStore())
    await ctl.start()
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/24")
    sb = await ctl.create_sandbox(hostname="b")
    await ctl.connect("front", sb.id, name="web")
    hosts = _sandbox_dir(ctl, sb.id) / "hosts"
    want = hosts.read_text()
    hosts.unlink()
    os.mkfifo(hosts)
    fifo = tmp_path / "fifo"
    os.link(hosts, fifo)  # the writer is let through at the end by this name
    opened = threading.Event()

    def writer() -> None:
        os.close(os.open(fifo, os.O_WRONLY))  # blocks until the FIFO is opened for reading
        opened.set()

    waiting = threading.Thread(target=writer, daemon=True)
    waiting.start()
    await asyncio.sleep(0.1)
    try:
        again = await _restart(tmp_path, ctl)
        report = await asyncio.wait_for(again.reconcile(), 10)
        assert not opened.wait(0.2), "the FIFO was opened"
    finally:
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        waiting.join(5)
        os.close(fd)
    assert any("rewritten" in line for line in report.repaired), report
    assert hosts.is_file() and hosts.read_text() == want
