"""Peer events over the in-memory cluster: fast path, grace period, return."""

from __future__ import annotations

import asyncio

from libnet.cluster.fake import FakeCluster
from libnet.drivers.overlay.events import EVENT, PeerEvents, decode, encode
from libnet.drivers.overlay.peerdb import Peer, PeerTable


def peer(eid: str, node: str) -> Peer:
    return Peer(eid * 16, "n" * 64, "02:42:c6:33:64:09", "203.0.113.12", node, "198.51.100.9/24", "2001:db8:1::9/64")


async def _until(predicate, timeout: float = 2) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_events_update_the_table_and_failed_hosts_expire_after_grace() -> None:
    cluster = FakeCluster()
    h1, h2 = cluster.member("h1", "203.0.113.11"), cluster.member("h2", "203.0.113.12")
    await h1.join([])
    await h2.join(["h1"])
    table = PeerTable("h1")
    changed, resynced = [], []
    events = PeerEvents(h1, table, changed.append, lambda: resynced.append(1), grace=0.2)
    events.start()
    await asyncio.sleep(0.01)
    sender = PeerEvents(h2, PeerTable("h2"), lambda n: None, lambda: None)
    p = peer("abcd", "h2")
    await sender.announce("add", p)
    await _until(lambda: table.peers(p.network_id) == [p])
    assert changed == [p.network_id]

    cluster.fail("h2")
    await asyncio.sleep(0.1)
    assert table.peers(p.network_id) == [p]  # within the grace period: kept
    await _until(lambda: table.peers(p.network_id) == [])
    assert "h2" in table.blocked
    assert not table.set(p)  # the store's listing cannot bring it back while the host is down

    cluster.recover("h2")
    await _until(lambda: resynced == [1])
    assert "h2" not in table.blocked and table.set(p)

    cluster.fail("h2")
    cluster.recover("h2")  # back within the grace period: nothing removed
    await asyncio.sleep(0.3)
    assert table.peers(p.network_id) == [p]
    await sender.announce("del", p)
    await _until(lambda: table.peers(p.network_id) == [])
    await events.close()


def test_payload_round_trip_fits_serf() -> None:
    p = peer("abcd", "a-rather-long-host-name.example.org")
    data = encode("add", p)
    assert decode(data) == ("add", p)
    assert len(data) + len(EVENT) <= 512
