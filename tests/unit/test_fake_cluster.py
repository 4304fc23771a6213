"""The in-memory cluster behaves like the Membership contract says."""

from __future__ import annotations

import asyncio

import pytest

from libnet.cluster.fake import FakeCluster
from libnet.cluster.membership import (
    Membership,
    NodeFailed,
    NodeJoined,
    NodeLeft,
    Query,
    UserEvent,
    next_event,
)
from libnet.errors import BadRequest, Unavailable


async def _drain(events, n: int) -> list:
    return [await next_event(events, 1) for _ in range(n)]


async def test_join_broadcast_fail_recover_leave() -> None:
    cluster = FakeCluster()
    a = cluster.member("a", "203.0.113.11", {"vtep": "203.0.113.11"})
    b = cluster.member("b", "203.0.113.12")
    c = cluster.member("c", "203.0.113.13")
    assert isinstance(a, Membership)
    ea, eb = a.events(), b.events()
    first_a = asyncio.ensure_future(anext(ea))
    first_b = asyncio.ensure_future(anext(eb))
    await asyncio.sleep(0)
    assert await a.join([]) == 0  # the first member starts the cluster
    assert await b.join(["203.0.113.11"]) == 1
    assert await c.join(["a"]) == 1  # by name works too
    assert (await first_a) == NodeJoined(a.node)
    assert isinstance(await first_b, NodeJoined)
    assert [n.name for n in await a.members()] == ["a", "b", "c"]

    await _drain(ea, 2)  # b and c joined
    await a.broadcast("peer-add", b"ep1")
    assert await next_event(ea, 1) == UserEvent("peer-add", b"ep1", 1)  # the sender gets it too

    cluster.fail("c")
    assert [e for e in await _drain(ea, 1)] == [NodeFailed(c.node)]
    with pytest.raises(Unavailable):
        await c.broadcast("x", b"")
    cluster.recover("c")
    assert await next_event(ea, 1) == NodeJoined(c.node)
    await b.leave()
    assert await next_event(ea, 1) == NodeLeft(b.node)
    assert {n.name: n.status for n in await a.members()} == {"a": "alive", "b": "left", "c": "alive"}


async def test_dropped_events_queries_keys_and_limits() -> None:
    cluster = FakeCluster()
    a, b = cluster.member("a", "203.0.113.11"), cluster.member("b", "203.0.113.12")
    await a.join([])
    await b.join(["a"])
    eb = b.events()
    watcher = asyncio.ensure_future(anext(eb))
    await asyncio.sleep(0)
    cluster.drop_next_events("b", 1)
    await a.broadcast("lost", b"")
    await a.broadcast("seen", b"")
    assert (await watcher).name == "seen"

    async def answer(q: Query) -> bytes:
        return b"pong:" + q.payload

    b.responder = answer
    assert [(r.node, r.payload) for r in await a.query("ping", b"1", timeout=1)] == [("b", b"pong:1")]

    await a.rotate_key("new-key")
    stranger = cluster.member("z", "203.0.113.99", key="old-key")
    assert await stranger.join(["a"]) == 0  # a wrong key cannot join
    with pytest.raises(BadRequest):
        await a.broadcast("big", b"x" * 600)
    with pytest.raises(BadRequest):
        await a.query("big", b"x" * 2000, timeout=1)
