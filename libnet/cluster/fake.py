"""An in-memory cluster: several members in one process, deterministic, with
failure injection, for unit tests of everything built on membership."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from libnet.cluster.membership import (
    Event,
    Node,
    NodeFailed,
    NodeJoined,
    NodeLeft,
    Query,
    QueryResponse,
    UserEvent,
    check_event_size,
    check_query_size,
)
from libnet.errors import BadRequest, Unavailable


class FakeCluster:
    """Members are created with :meth:`member`; events are delivered at once, in order."""

    def __init__(self, key: str = "fake-key") -> None:
        self.nodes: dict[str, FakeMember] = {}
        self.key = key
        self.ltime = 0

    def member(self, name: str, address: str, tags: dict[str, str] | None = None, key: str | None = None) -> FakeMember:
        if name in self.nodes:
            raise BadRequest("member name in use", name=name)
        m = FakeMember(self, Node(name, address, 7946, dict(tags or {}), "none"), key or self.key)
        self.nodes[name] = m
        return m

    def _alive(self) -> list[FakeMember]:
        return [m for m in self.nodes.values() if m.node.status == "alive"]

    def _announce(self, source: FakeMember, make: Callable[[Node], Event]) -> None:
        for m in self._alive():
            if m is not source:
                m._deliver(make(source.node))

    def fail(self, name: str) -> None:
        """The member crashes: the others see NodeFailed; it sees nothing more."""
        m = self.nodes[name]
        m.node = _with(m.node, "failed")
        self._announce(m, NodeFailed)

    def recover(self, name: str) -> None:
        """A failed member is back: the others see NodeJoined."""
        m = self.nodes[name]
        m.node = _with(m.node, "alive")
        self._announce(m, NodeJoined)

    def drop_next_events(self, name: str, count: int = 1) -> None:
        """The member misses the next ``count`` user events (gossip loss)."""
        self.nodes[name].dropping += count


def _with(node: Node, status: str) -> Node:
    return Node(node.name, node.address, node.port, node.tags, status)


class FakeMember:
    """One member's view; implements :class:`~libnet.cluster.membership.Membership`."""

    def __init__(self, cluster: FakeCluster, node: Node, key: str) -> None:
        self.cluster = cluster
        self.node = node
        self.key = key
        self.dropping = 0
        self._queues: list[asyncio.Queue[Event]] = []
        self.responder: Callable[[Query], Awaitable[bytes]] | None = None  # optional: answers queries

    def _deliver(self, event: Event) -> None:
        if isinstance(event, UserEvent) and self.dropping:
            self.dropping -= 1
            return
        for q in self._queues:
            q.put_nowait(event)

    def _check_alive(self) -> None:
        if self.node.status != "alive":
            raise Unavailable("member is not in the cluster", node=self.node.name)

    async def join(self, addresses: list[str]) -> int:
        targets = [m for m in self.cluster._alive() if m.node.address in addresses or m.node.name in addresses]
        targets = [m for m in targets if m.key == self.key]  # gossip keys must match
        if not targets and self.cluster._alive():
            return 0
        self.node = _with(self.node, "alive")
        for m in self.cluster._alive():
            if m is not self:
                self._deliver(NodeJoined(m.node))
        self._deliver(NodeJoined(self.node))
        self.cluster._announce(self, NodeJoined)
        return len(targets)

    async def leave(self) -> None:
        self.node = _with(self.node, "left")
        self.cluster._announce(self, NodeLeft)

    async def members(self) -> list[Node]:
        return sorted((m.node for m in self.cluster.nodes.values() if m.node.status != "none"), key=lambda n: n.name)

    async def events(self) -> AsyncIterator[Event]:
        q: asyncio.Queue[Event] = asyncio.Queue()
        self._queues.append(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._queues.remove(q)

    async def broadcast(self, name: str, payload: bytes) -> None:
        check_event_size(name, payload)
        self._check_alive()
        self.cluster.ltime += 1
        event = UserEvent(name, payload, self.cluster.ltime)
        for m in self.cluster._alive():  # Serf delivers user events to the sender too
            m._deliver(event)

    async def query(self, name: str, payload: bytes, timeout: float) -> list[QueryResponse]:
        check_query_size(name, payload)
        self._check_alive()
        out: list[QueryResponse] = []
        for i, m in enumerate(self.cluster._alive()):
            if m.responder is not None:
                answer = await asyncio.wait_for(m.responder(Query(name, payload, i, _noop)), timeout)
                out.append(QueryResponse(m.node.name, answer))
        return out

    async def rotate_key(self, new_key: str) -> None:
        self._check_alive()
        for m in self.cluster._alive():
            m.key = new_key
        self.cluster.key = new_key


async def _noop(_payload: bytes) -> None:
    return None
