"""What the overlay driver owns on a host, and what it never reuses or removes (issue 13, faults 7 and 8).

- fault 7: a host whose VTEP address changed (agent restarted with a new
  ``--advertise``) rebuilds its ``vxlan0`` on the new address instead of
  reusing the old device; drifted device settings are rebuilt too;
- fault 8: after the cluster store lost its VNI keys, a new network with the
  VNI of one still running here is refused on this host (``Conflict``),
  never plugged into the live namespace, and its removal leaves the live
  one alone; VNI allocation skips the VNIs this host's ledger shows in use;
- a namespace named like an overlay namespace but not recorded in this
  instance's ledger is foreign: reconcile reports it and leaves it, a join
  that would need it is a ``Conflict``.

Each host runs its own controller on its own state dir (instance id and
namespace ledger) and local store; all share one SQLite cluster store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import time

import pytest

from libnet import Controller, ownership
from libnet.errors import Conflict
from libnet.kernel import netns
from libnet.kernel.netlink import Netlink
from libnet.testing.hosts import Testbed, host_config

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

P = "libnet/v1/overlay"


def ip(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).ip)


@pytest.fixture
def bed3():
    with Testbed(3) as b:
        yield b


@contextlib.asynccontextmanager
async def controllers(bed: Testbed, tmp_path, n: int | None = None):
    """One controller per host; the list may be changed (restarts): whatever is in it is closed."""
    ctls: list[Controller] = []
    try:
        for h in bed.hosts[:n]:
            ctls.append(await Controller(host_config(bed, h, str(tmp_path))).start())
        yield ctls
    finally:
        for c in ctls:
            await c.close()


async def converged(ctls, network_id: str, timeout: float = 10) -> None:
    """Every host with local endpoints holds every remote endpoint (at its current VTEP), programmed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for c in ctls:
        drv = c.driver("overlay")
        if network_id not in drv._local:
            continue
        while True:
            remote = {e.id for e in await c.endpoints(network_id) if e.sandbox_id and e.node != c.config.node_name}
            if {p.endpoint_id for p in drv.table.peers(network_id)} == remote:
                break
            assert loop.time() < deadline, "peers did not arrive"
            await asyncio.sleep(0.02)
        await drv.programmer.settled()


def wait_ping(bed: Testbed, sandbox_netns: str, address: str, timeout: float = 10) -> None:
    src = os.path.basename(sandbox_netns)
    deadline = time.monotonic() + timeout
    while not bed.ping(src, address, wait=1):
        assert time.monotonic() < deadline, f"{src} cannot reach {address}"


def no_ping(bed: Testbed, sandbox_netns: str, address: str) -> bool:
    return not bed.ping(os.path.basename(sandbox_netns), address, count=2, wait=1)


def links(ns: str) -> dict[str, tuple[int, str | None]]:
    with Netlink(ns) as nl:
        return {link.name: (link.index, link.alias) for link in nl.links()}


async def test_a_new_vtep_address_rebuilds_vxlan0_and_traffic_resumes(bed: Testbed, tmp_path) -> None:
    """Fault 7.  Host 2's underlay address changes and its controller restarts
    with the new VTEP: reconcile rebuilds ``vxlan0`` on the new address
    (re-programmed, marked), re-announces, and the containers ping again.
    A restart with an unchanged VTEP rebuilds nothing."""
    h1, h2 = bed.hosts
    new_vtep = "203.0.113.200"
    async with controllers(bed, tmp_path) as ctls:
        nw = await ctls[0].create_network(
            "ov", "overlay", ipv4_subnet="198.51.100.0/25", ipv6_subnet="2001:db8:78::/64"
        )
        placed = []
        for c in ctls:
            sb = await c.create_sandbox()
            placed.append((sb, await c.connect("ov", sb.id)))
        await converged(ctls, nw.id)
        (sa, ea), (sb2, eb) = placed
        wait_ping(bed, sa.netns, ip(eb.ipv4))
        drv2 = ctls[1].driver("overlay")
        ns2 = drv2.ns_name(drv2.vnis.cached(nw.id))
        instance2 = ctls[1].config.instance_id
        with Netlink(ns2) as nl:
            before = nl.vxlan("vxlan0")
        assert before is not None and before.local == h2.ipv4
        assert ownership.owned_by(before.link.alias, instance2, "net", nw.id)
        assert drv2.ledger.owns(ns2, "overlay", nw.id)

        # a plain restart adopts what is there: nothing rebuilt
        await ctls[1].close()
        ctls[1] = await Controller(host_config(bed, h2, str(tmp_path))).start()
        report = await ctls[1].reconcile()
        assert not [r for r in report.repaired if "br0" in r or "vxlan0" in r], report.repaired
        assert links(ns2)["vxlan0"][0] == before.link.index

        # the underlay address changes; the agent restarts with the new --advertise
        await ctls[1].close()
        # (old one first: deleting a primary address takes its subnet's secondaries with it)
        bed.run(h2.ns, ["ip", "addr", "del", f"{h2.ipv4}/24", "dev", "eth0"], check=True)
        bed.run(h2.ns, ["ip", "addr", "add", f"{new_vtep}/24", "dev", "eth0"], check=True)
        cfg = dataclasses.replace(host_config(bed, h2, str(tmp_path)), vtep=new_vtep)
        ctls[1] = await Controller(cfg).start()
        report = await ctls[1].reconcile()
        assert any("vxlan0" in r and "local address" in r for r in report.repaired), report.repaired
        with Netlink(ns2) as nl:
            after = nl.vxlan("vxlan0")
            assert after is not None and after.local == new_vtep
            assert ownership.owned_by(after.link.alias, instance2, "net", nw.id)
            assert (after.vni, after.port, after.learning, after.proxy) == (before.vni, 4789, False, True)
            assert after.link.mtu == before.link.mtu
            assert {e.dst for e in nl.fdb("vxlan0")} == {h1.ipv4}  # re-programmed towards host 1

        drv1 = ctls[0].driver("overlay")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while {p.vtep for p in drv1.table.peers(nw.id)} != {new_vtep}:
            assert loop.time() < deadline, "host 1 did not learn host 2's new VTEP"
            await asyncio.sleep(0.05)
        await drv1.programmer.settled()
        wait_ping(bed, sa.netns, ip(eb.ipv4))
        wait_ping(bed, sb2.netns, ip(ea.ipv4))
        wait_ping(bed, sa.netns, ip(eb.ipv6))


async def test_drifted_devices_are_rebuilt_by_reconcile(bed: Testbed, tmp_path) -> None:
    """Fault 7's kind: a ``vxlan0`` with another MTU, learning on, or another
    network's mark is rebuilt (then re-programmed), a lost gateway address
    comes back on ``br0``."""
    async with controllers(bed, tmp_path) as ctls:
        nw = await ctls[0].create_network("ov", "overlay", ipv4_subnet="198.51.100.0/25")
        placed = []
        for c in ctls:
            sb = await c.create_sandbox()
            placed.append((sb, await c.connect("ov", sb.id)))
        await converged(ctls, nw.id)
        (sa, _), (_, eb) = placed
        wait_ping(bed, sa.netns, ip(eb.ipv4))
        drv = ctls[0].driver("overlay")
        ns = drv.ns_name(drv.vnis.cached(nw.id))
        with Netlink(ns) as nl:
            good = nl.vxlan("vxlan0")
        assert good is not None
        other_mark = ownership.mark(ctls[0].config.instance_id, "net", "f" * 64)
        for drift in (
            ["ip", "link", "set", "vxlan0", "mtu", str(good.link.mtu - 100)],
            ["ip", "link", "set", "vxlan0", "type", "vxlan", "learning"],
            ["ip", "link", "set", "vxlan0", "alias", other_mark],
        ):
            index = links(ns)["vxlan0"][0]
            bed.run(ns, drift, check=True)
            report = await ctls[0].reconcile()
            assert any("vxlan0" in r and "rebuilt" in r for r in report.repaired), (drift, report.repaired)
            with Netlink(ns) as nl:
                now = nl.vxlan("vxlan0")
                assert now is not None and now.link.index != index
                assert (now.link.mtu, now.learning, now.proxy, now.local) == (good.link.mtu, False, True, good.local)
                assert ownership.owned_by(now.link.alias, ctls[0].config.instance_id, "net", nw.id)
                assert nl.fdb("vxlan0") and nl.neighbours("vxlan0")
            wait_ping(bed, sa.netns, ip(eb.ipv4))

        gw = (await ctls[0].network("ov")).ipv4_gateway
        assert gw
        bed.run(ns, ["ip", "addr", "del", gw, "dev", "br0"], check=True)
        report = await ctls[0].reconcile()
        assert any("gateway" in r for r in report.repaired), report.repaired
        with Netlink(ns) as nl:
            assert gw in nl.addresses("br0")


async def test_a_reused_vni_never_joins_the_live_network(bed3: Testbed, tmp_path) -> None:
    """Fault 8.  The cluster store loses its overlay keys while network "old"
    runs on hosts 1 and 2.  Allocation on host 1 skips old's VNI; asking for
    it on host 1 is refused; a network "new" made with it elsewhere cannot
    join on host 1 (``Conflict`` naming the namespace and "old", nothing
    touched); removing "new" leaves "old" alone; old's containers ping only
    each other."""
    bed = bed3
    async with controllers(bed, tmp_path) as ctls:
        old = await ctls[0].create_network("old", "overlay", ipv4_subnet="198.51.100.0/25")
        olds = []
        for c in ctls[:2]:
            sb = await c.create_sandbox()
            olds.append((sb, await c.connect("old", sb.id)))
        await converged(ctls, old.id)
        (s1, e1), (s2, e2) = olds
        wait_ping(bed, s1.netns, ip(e2.ipv4))
        drv1 = ctls[0].driver("overlay")
        vni = drv1.vnis.cached(old.id)
        ns1 = drv1.ns_name(vni)
        before = links(ns1)

        # the cluster store loses its VNI allocations
        cluster = ctls[0].repo.cluster
        for prefix in (f"{P}/vni/", f"{P}/networks/"):
            for kv in await cluster.list(prefix):
                await cluster.delete(kv.key)
        assert await cluster.list(f"{P}/vni/") == []

        auto = await ctls[0].create_network("auto", "overlay", ipv4_subnet="198.51.100.128/25")
        assert drv1.vnis.cached(auto.id) != vni  # the first free VNI in the store, but in use here
        with pytest.raises(Conflict) as refused:
            await ctls[0].create_network("new1", "overlay", ipv4_subnet="198.51.100.0/25", options={"vni": vni})
        assert refused.value.ids.get("other_network_id") == old.id

        new = await ctls[2].create_network("new", "overlay", ipv4_subnet="198.51.100.0/25", options={"vni": vni})
        intruder = await ctls[0].create_sandbox()
        with pytest.raises(Conflict) as clash:
            await ctls[0].connect("new", intruder.id, ipv4="198.51.100.77")
        assert clash.value.ids.get("netns") == ns1 and clash.value.ids.get("other_network_id") == old.id
        assert ns1 in str(clash.value) and old.id[:12] in str(clash.value)
        assert links(ns1) == before  # nothing plugged in, nothing rebuilt
        assert await ctls[0].endpoints("new") == []

        # "new" works on host 3, on its own: never reaching old's containers
        s3 = await ctls[2].create_sandbox()
        e3 = await ctls[2].connect("new", s3.id, ipv4="198.51.100.77")
        await converged(ctls, new.id)
        for target in (e1, e2):
            assert no_ping(bed, s3.netns, ip(target.ipv4)), target.ipv4
        assert no_ping(bed, s1.netns, ip(e3.ipv4))
        wait_ping(bed, s1.netns, ip(e2.ipv4))

        # removing "new" (from host 1, which cached its VNI) leaves old's namespace alone
        await ctls[2].disconnect("new", s3.id)
        await ctls[0].delete_network("new")
        assert netns.exists(ns1) and links(ns1) == before
        report = await ctls[0].reconcile()
        assert not [r for r in report.removed if ns1 in r]
        assert links(ns1) == before
        wait_ping(bed, s1.netns, ip(e2.ipv4))
        wait_ping(bed, s2.netns, ip(e1.ipv4))


async def test_a_foreign_overlay_named_namespace_is_left_alone(bed: Testbed, tmp_path) -> None:
    """A namespace named ``<overlay prefix><digits>`` that the instance's
    ledger does not record (another program's, or another instance's) is
    reported as foreign by reconcile and left; joining a network whose VNI
    would need that name is a ``Conflict``; deleting that network does not
    remove it.  A recorded one without local endpoints is removed."""
    async with controllers(bed, tmp_path, n=1) as ctls:
        c = ctls[0]
        drv = c.driver("overlay")
        await c.create_network("ov", "overlay", ipv4_subnet="198.51.100.0/26")
        sb = await c.create_sandbox()
        await c.connect("ov", sb.id)
        foreign = drv.prefix + "4242"  # under the test bed's prefix: the bed removes it
        netns.create(foreign)
        with Netlink(foreign) as nl:
            nl.add_bridge("br0")  # looks like ours, carries no mark
        foreign_links = links(foreign)
        stale = drv.prefix + "4343"  # ours, of a network long gone
        drv.ledger.record(stale, "overlay", "e" * 64)
        netns.create(stale)

        report = await c.reconcile()
        assert netns.exists(foreign) and links(foreign) == foreign_links
        assert any(foreign in f for f in report.foreign), report.foreign
        assert not any(foreign in r for r in report.removed)
        assert not netns.exists(stale) and any(stale in r for r in report.removed), report.removed
        assert drv.ledger.get(stale) is None

        await c.create_network("clash", "overlay", ipv4_subnet="198.51.100.64/26", options={"vni": 4242})
        other = await c.create_sandbox()
        with pytest.raises(Conflict) as clash:
            await c.connect("clash", other.id)
        assert clash.value.ids.get("netns") == foreign
        assert links(foreign) == foreign_links and drv.ledger.get(foreign) is None
        await c.delete_network("clash")
        assert netns.exists(foreign) and links(foreign) == foreign_links
        await c.reconcile()
        assert netns.exists(foreign) and links(foreign) == foreign_links
