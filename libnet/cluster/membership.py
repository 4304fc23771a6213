"""The membership contract, and its implementation on Serf.

Everything built on cluster membership (overlay peer distribution, node
listing) uses :class:`Membership` only, so it is unit-tested against the
in-memory :class:`~libnet.cluster.fake.FakeCluster`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from libnet.cluster.serf import QUERY_LIMIT, USER_EVENT_LIMIT, Member, SerfClient
from libnet.errors import BadRequest


@dataclass(frozen=True)
class Node:
    """A cluster member."""

    name: str
    address: str
    port: int
    tags: dict[str, str] = field(default_factory=dict)
    status: str = "alive"  # alive, leaving, left, failed

    @classmethod
    def from_member(cls, m: Member) -> Node:
        return cls(m.name, m.addr, m.port, dict(m.tags), m.status)


@dataclass(frozen=True)
class NodeJoined:
    node: Node


@dataclass(frozen=True)
class NodeLeft:
    node: Node


@dataclass(frozen=True)
class NodeFailed:
    node: Node


@dataclass(frozen=True)
class NodeUpdated:
    node: Node


@dataclass(frozen=True)
class UserEvent:
    name: str
    payload: bytes
    ltime: int = 0


@dataclass(frozen=True)
class Query:
    """A query from another node; answer with ``await query.respond(payload)``."""

    name: str
    payload: bytes
    id: int
    respond: Callable[[bytes], Awaitable[None]] = field(compare=False, repr=False)


@dataclass(frozen=True)
class QueryResponse:
    node: str
    payload: bytes


Event = NodeJoined | NodeLeft | NodeFailed | NodeUpdated | UserEvent | Query


def check_event_size(name: str, payload: bytes) -> None:
    """Serf drops user events over its size limit: refuse them before sending."""
    size = len(name.encode()) + len(payload)
    if size > USER_EVENT_LIMIT:
        raise BadRequest(
            f"event {name!r} is {size} bytes; Serf carries at most {USER_EVENT_LIMIT} "
            "(name + payload): send a reference and keep the data in the store",
            name=name,
            size=size,
        )


def check_query_size(name: str, payload: bytes) -> None:
    if len(payload) > QUERY_LIMIT:
        raise BadRequest(f"query payload of {len(payload)} bytes exceeds Serf's {QUERY_LIMIT}", name=name)


@runtime_checkable
class Membership(Protocol):
    """Cluster membership: who is there, what happened, and a broadcast channel."""

    async def join(self, addresses: list[str]) -> int:
        """Join through any of ``addresses``; returns how many were reached."""
        ...

    async def leave(self) -> None:
        """Leave the cluster gracefully."""
        ...

    async def members(self) -> list[Node]:
        """Every known member with its status."""
        ...

    def events(self) -> AsyncIterator[Event]:
        """Membership changes, user events and queries, as they happen."""
        ...

    async def broadcast(self, name: str, payload: bytes) -> None:
        """Send a user event to every member (no coalescing; size-checked)."""
        ...

    async def query(self, name: str, payload: bytes, timeout: float) -> list[QueryResponse]:
        """Ask every member; the answers that arrived within ``timeout``."""
        ...

    async def rotate_key(self, new_key: str) -> None:
        """Switch the whole cluster to a new gossip key and drop the old ones."""
        ...


_MEMBER_EVENTS = {
    "member-join": NodeJoined,
    "member-leave": NodeLeft,
    "member-failed": NodeFailed,
    "member-update": NodeUpdated,
}


class SerfMembership:
    """:class:`Membership` on a Serf agent reached through a :class:`SerfClient`."""

    def __init__(self, client: SerfClient) -> None:
        self.client = client

    async def join(self, addresses: list[str]) -> int:
        return await self.client.join(addresses)

    async def leave(self) -> None:
        await self.client.leave()

    async def members(self) -> list[Node]:
        return [Node.from_member(m) for m in await self.client.members()]

    async def events(self) -> AsyncIterator[Event]:
        async for record in self.client.stream("*"):
            kind = record.get("Event")
            if kind in _MEMBER_EVENTS:
                for m in record.get("Members", []):
                    yield _MEMBER_EVENTS[kind](Node.from_member(m))
            elif kind == "user":
                yield UserEvent(record.get("Name", ""), record.get("Payload", b""), int(record.get("LTime", 0)))
            elif kind == "query":
                qid = int(record["ID"])
                yield Query(
                    record.get("Name", ""),
                    record.get("Payload", b""),
                    qid,
                    lambda payload, qid=qid: self.client.respond(qid, payload),
                )

    async def broadcast(self, name: str, payload: bytes) -> None:
        check_event_size(name, payload)
        await self.client.event(name, payload, coalesce=False)

    async def query(self, name: str, payload: bytes, timeout: float) -> list[QueryResponse]:
        check_query_size(name, payload)
        out = []
        async for r in self.client.query(name, payload, timeout=timeout):
            if r["Type"] == "response":
                out.append(QueryResponse(r["From"], r["Payload"]))
        return out

    async def rotate_key(self, new_key: str) -> None:
        old = set((await self.client.list_keys()).keys) - {new_key}
        await self.client.install_key(new_key)
        await self.client.use_key(new_key)
        for key in old:
            with contextlib.suppress(Exception):  # a node that missed it keeps an unused key
                await self.client.remove_key(key)


async def next_event(events: AsyncIterator[Event], timeout: float) -> Event:
    """The next event within ``timeout`` seconds (helper for tests and tools)."""
    return await asyncio.wait_for(anext(events), timeout)
