"""Overlay networks across three test hosts, each with its own controller, one cluster store."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import itertools
import os

import pytest

from libnet import Controller
from libnet.kernel.netlink import Netlink
from libnet.testing.hosts import Testbed, host_config

pytestmark = pytest.mark.root


def ip(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).ip)


@pytest.fixture
def bed():
    with Testbed(3) as b:
        yield b


@contextlib.asynccontextmanager
async def controllers(bed: Testbed, tmp_path, v6_underlay: bool = False, **overrides):
    ctls = []
    try:
        for h in bed.hosts:
            cfg = dataclasses.replace(host_config(bed, h, str(tmp_path), v6_underlay), **overrides)
            ctls.append(await Controller(cfg).start())
        yield ctls
    finally:
        for c in ctls:
            await c.close()


async def _converged(ctls, network_id: str, timeout: float = 10) -> None:
    """Every host's peer table holds every endpoint of the other hosts, and is programmed."""
    import asyncio

    deadline = asyncio.get_running_loop().time() + timeout
    for c in ctls:
        drv = c.driver("overlay")
        if network_id not in drv._local:
            continue
        while True:
            endpoints = [e for e in await c.endpoints(network_id) if e.sandbox_id and e.node != c.config.node_name]
            if {p.endpoint_id for p in drv.table.peers(network_id)} == {e.id for e in endpoints}:
                break
            assert asyncio.get_running_loop().time() < deadline, "peers did not arrive"
            await asyncio.sleep(0.02)
        await drv.programmer.settled()


async def _all_pairs_reach(bed: Testbed, ctls, network: str) -> list:
    eps = []
    for i, c in enumerate(ctls):
        sb = await c.create_sandbox(hostname=f"c{i}")
        eps.append((sb, await c.connect(network, sb.id)))
    await _converged(ctls, eps[0][1].network_id)
    for (sa, _), (_, eb) in itertools.permutations(eps, 2):
        src = os.path.basename(sa.netns)
        assert bed.ping(src, ip(eb.ipv4), count=3), (src, eb.ipv4)
        assert bed.ping(src, ip(eb.ipv6), count=3), (src, eb.ipv6)
    return eps


@pytest.mark.parametrize("v6_underlay", [False, True])
async def test_all_pairs_reach_each_other(bed: Testbed, tmp_path, v6_underlay: bool) -> None:
    async with controllers(bed, tmp_path, v6_underlay) as ctls:
        nw = await ctls[0].create_network(
            "ov", "overlay", ipv4_subnet="198.51.100.0/25", ipv6_subnet="2001:db8:77::/64"
        )
        assert nw.scope == "global"
        assert (await ctls[2].network("ov")).id == nw.id  # every host sees it through the cluster store
        eps = await _all_pairs_reach(bed, ctls, "ov")
        vni = ctls[0].driver("overlay").vnis.cached(nw.id)
        assert vni >= 256
        ns0 = ctls[0].driver("overlay").ns_name(vni)
        with Netlink(ns0) as nl:
            mtu = nl.link("vxlan0").mtu
        assert mtu == 1500 - (70 if v6_underlay else 50)
        out = bed.run(os.path.basename(eps[0][0].netns), ["ip", "-o", "link", "show", "eth0"]).stdout
        assert f" mtu {mtu} " in out

        # churn: a sandbox leaves, its address is reused on another host, everyone reaches the new one
        gone_sb, gone_ep = eps[1]
        await ctls[1].delete_sandbox(gone_sb.id)
        sb = await ctls[2].create_sandbox(hostname="late")
        new = await ctls[2].connect("ov", sb.id, ipv4=ip(gone_ep.ipv4), ipv6=ip(gone_ep.ipv6))
        await _converged(ctls, nw.id)
        assert bed.ping(os.path.basename(eps[0][0].netns), ip(new.ipv4), count=3)
        assert bed.ping(os.path.basename(eps[0][0].netns), ip(new.ipv6), count=3)


async def test_a_fresh_ipv6_vtep_answers_the_first_solicitation(bed: Testbed, tmp_path) -> None:
    """A VTEP address still in DAD ignores neighbour solicitations: the first
    packet from a peer then waits a whole retransmit second.  The driver
    builds (and announces) only once its VTEP is usable."""
    import time

    h2 = bed.hosts[1]
    bed.run(h2.ns, ["ip", "addr", "del", f"{h2.ipv6}/64", "dev", "eth0"], check=True)
    bed.run(h2.ns, ["ip", "addr", "add", f"{h2.ipv6}/64", "dev", "eth0"], check=True)  # with DAD: tentative
    with Netlink(h2.ns) as nl:
        assert h2.ipv6 in nl.tentative_addresses("eth0")
    async with controllers(bed, tmp_path, v6_underlay=True) as ctls:
        await ctls[0].create_network("ov", "overlay", ipv4_subnet="198.51.100.0/25")
        sa = await ctls[0].create_sandbox()
        await ctls[0].connect("ov", sa.id)
        sb = await ctls[1].create_sandbox()
        eb = await ctls[1].connect("ov", sb.id)
        with Netlink(h2.ns) as nl:
            assert h2.ipv6 not in nl.tentative_addresses("eth0")
        await _converged(ctls, eb.network_id)
        started = time.monotonic()
        assert bed.ping(os.path.basename(sa.netns), ip(eb.ipv4), wait=3)
        assert time.monotonic() - started < 0.9  # no lost solicitation (its retransmit is 1 s)


async def test_anti_entropy_repairs_a_missed_event(bed: Testbed, tmp_path) -> None:
    """Host 1's watch dies silently (no Serf here either): the endpoint that
    joins on host 2 meanwhile reaches host 1 through the periodic re-read."""
    async with controllers(bed, tmp_path, overlay_anti_entropy=1.0) as ctls:
        nw = await ctls[0].create_network("ov", "overlay", ipv4_subnet="198.51.100.0/25")
        eps = await _all_pairs_reach(bed, ctls, "ov")
        drv = ctls[0].driver("overlay")
        # anti-entropy paused while the miss is set up: under load its 1 s period could
        # otherwise repair the miss before the precondition is checked (a flaky test, issue 17)
        drv.watch.stop_anti_entropy()
        drv.watch.task(nw.id).cancel()  # events from now on are lost to host 1
        sb = await ctls[1].create_sandbox()
        late = await ctls[1].connect("ov", sb.id)
        await asyncio.sleep(0.3)
        assert late.id not in {p.endpoint_id for p in drv.table.peers(nw.id)}  # the event was missed
        drv.start_anti_entropy()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while late.id not in {p.endpoint_id for p in drv.table.peers(nw.id)}:
            assert loop.time() < deadline, "anti-entropy did not bring the missed peer"
            await asyncio.sleep(0.05)
        await drv.programmer.settled()
        assert bed.ping(os.path.basename(eps[0][0].netns), ip(late.ipv4), count=3)
        assert not drv.watch.task(nw.id).done()  # and the watch runs again


async def test_reconcile_restores_a_deleted_neighbour(bed: Testbed, tmp_path) -> None:
    async with controllers(bed, tmp_path) as ctls:
        nw = await ctls[0].create_network(
            "ov", "overlay", ipv4_subnet="198.51.100.0/25", ipv6_subnet="2001:db8:77::/64"
        )
        eps = await _all_pairs_reach(bed, ctls, "ov")
        drv = ctls[0].driver("overlay")
        with Netlink(drv.ns_name(drv.vnis.cached(nw.id))) as nl:
            victim = nl.neighbours("vxlan0")[0]
            nl.delete_neighbours("vxlan0", [victim])
            assert victim not in nl.neighbours("vxlan0")
        report = await ctls[0].reconcile()
        assert any("overlay network" in r for r in report.repaired)
        with Netlink(drv.ns_name(drv.vnis.cached(nw.id))) as nl:
            assert victim in nl.neighbours("vxlan0")
        assert bed.ping(os.path.basename(eps[0][0].netns), ip(eps[1][1].ipv4))


SERVE = (
    "import socket,sys; s=socket.socket(); s.setsockopt(1,2,1); s.bind(('0.0.0.0',80)); s.listen(4); "
    "print('ready',flush=True)\nwhile True:\n c,_=s.accept(); c.sendall(sys.argv[1].encode()); c.close()"
)
FETCH = "import socket,sys; print(socket.create_connection((sys.argv[1],80),timeout=3).recv(10).decode())"


async def test_two_overlays_with_the_same_subnet_are_isolated(bed: Testbed, tmp_path) -> None:
    import sys

    async with controllers(bed, tmp_path) as ctls:
        for name in ("red", "blue"):
            await ctls[0].create_network(name, "overlay", ipv4_subnet="198.51.100.0/25", ipv6_subnet="2001:db8:77::/64")
        placed = {}
        for name, hosts in (("red", (0, 1)), ("blue", (0, 2))):
            for i in hosts:
                sb = await ctls[i].create_sandbox(hostname=f"{name}{i}")
                placed[(name, i)] = (sb, await ctls[i].connect(name, sb.id))
        for name in ("red", "blue"):
            await _converged(ctls, placed[(name, 0)][1].network_id)
        assert ip(placed[("red", 1)][1].ipv4) == ip(placed[("blue", 2)][1].ipv4)  # the very same address
        for (name, i), (sb, _) in placed.items():
            if i != 0:
                proc = bed.spawn(os.path.basename(sb.netns), [sys.executable, "-c", SERVE, name], stdout=-1, text=True)
                assert proc.stdout.readline().strip() == "ready"
        target = ip(placed[("red", 1)][1].ipv4)
        for name in ("red", "blue"):
            src = os.path.basename(placed[(name, 0)][0].netns)
            r = bed.run(src, [sys.executable, "-c", FETCH, target], timeout=10)
            assert r.stdout.strip() == name, (name, r.stdout, r.stderr)  # each reaches its own network only


async def test_vxlan_on_the_wire(bed: Testbed, tmp_path) -> None:
    """A capture in the switch namespace shows VXLAN on UDP 4789 with the network's VNI and the inner addresses."""
    import threading

    from scapy.all import IP, UDP, sniff
    from scapy.layers.vxlan import VXLAN

    from libnet.kernel import netns

    async with controllers(bed, tmp_path) as ctls:
        nw = await ctls[0].create_network(
            "ov", "overlay", ipv4_subnet="198.51.100.0/25", ipv6_subnet="2001:db8:77::/64"
        )
        eps = []
        for c in ctls[:2]:
            sb = await c.create_sandbox()
            eps.append((sb, await c.connect("ov", sb.id)))
        await _converged(ctls, nw.id)
        vni = ctls[0].driver("overlay").vnis.cached(nw.id)
        ready = threading.Event()

        def capture() -> list:
            # the inner frames we want carry IPv4 (others, e.g. IPv6 neighbour discovery, may come first)
            return list(
                sniff(
                    iface="sw0",
                    count=2,
                    timeout=10,
                    started_callback=ready.set,
                    lfilter=lambda p: UDP in p and p[UDP].dport == 4789 and VXLAN in p and IP in p[VXLAN].payload,
                )
            )

        import asyncio

        task = asyncio.ensure_future(asyncio.to_thread(netns.run_in, bed.switch, capture))
        await asyncio.to_thread(ready.wait, 5)
        assert bed.ping(os.path.basename(eps[0][0].netns), ip(eps[1][1].ipv4), count=2)
        packets = await task
        assert packets, "no VXLAN packet seen on the switch"
        pkt = packets[0]
        assert pkt[UDP].dport == 4789 and pkt[VXLAN].vni == vni
        inner = pkt[VXLAN].payload[IP]
        assert {inner.src, inner.dst} == {ip(eps[0][1].ipv4), ip(eps[1][1].ipv4)}
        assert {pkt[IP].src, pkt[IP].dst} == {bed.hosts[0].ipv4, bed.hosts[1].ipv4}


async def test_overlay_containers_get_out_through_the_gateway_bridge(bed: Testbed, tmp_path) -> None:
    async with controllers(bed, tmp_path) as ctls:
        await ctls[0].create_network("ov", "overlay", ipv4_subnet="198.51.100.0/26")
        await ctls[0].create_network("private", "overlay", ipv4_subnet="198.51.100.64/26", internal=True)
        c = ctls[0]
        out_sb = await c.create_sandbox()
        ep = await c.connect("ov", out_sb.id)
        assert not ep.gateway  # the overlay endpoint carries no default route ...
        eps = await c.endpoints("libnet-gwbridge")
        assert [e.sandbox_id for e in eps] == [out_sb.id] and eps[0].gateway  # ... the gateway bridge one does
        outside = bed.hosts[2].ipv4
        assert bed.ping(os.path.basename(out_sb.netns), outside, count=3)

        shut = await c.create_sandbox()
        await c.connect("private", shut.id)
        assert not bed.ping(os.path.basename(shut.netns), outside, wait=1)  # internal: no way out
        assert [e.sandbox_id for e in await c.endpoints("libnet-gwbridge")] == [out_sb.id]

        await c.disconnect("ov", out_sb.id)  # the last overlay endpoint leaves: so does the gateway one
        assert await c.endpoints("libnet-gwbridge") == []
