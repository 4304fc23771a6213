"""The membership contract.

Everything built on cluster membership (overlay peer distribution, node
listing) uses :class:`Membership` only, so it is unit-tested against the
in-memory :class:`~libnet.cluster.fake.FakeCluster`; the real one is
:class:`libnet.cluster.serf_membership.SerfMembership`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from libnet.errors import BadRequest

#: the largest user event a member carries (name + payload), and query payload (Serf's limits)
USER_EVENT_LIMIT = 512
QUERY_LIMIT = 1024


@dataclass(frozen=True)
class Node:
    """A cluster member."""

    name: str
    address: str
    port: int
    tags: dict[str, str] = field(default_factory=dict)
    status: str = "alive"  # alive, leaving, left, failed


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


async def next_event(events: AsyncIterator[Event], timeout: float) -> Event:
    """The next event within ``timeout`` seconds (helper for tests and tools)."""
    return await asyncio.wait_for(anext(events), timeout)
