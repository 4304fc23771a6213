"""Cluster membership on a Serf agent: :class:`~libnet.cluster.membership.Membership`
over the project's Serf RPC client (:mod:`libnet.cluster.serf`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from libnet.cluster.membership import (
    Event,
    Node,
    NodeFailed,
    NodeJoined,
    NodeLeft,
    NodeUpdated,
    Query,
    QueryResponse,
    UserEvent,
    check_event_size,
    check_query_size,
)
from libnet.cluster.serf import Member, SerfClient


def _node(m: Member) -> Node:
    return Node(m.name, m.addr, m.port, dict(m.tags), m.status)


_MEMBER_EVENTS: dict[str, type[NodeJoined | NodeLeft | NodeFailed | NodeUpdated]] = {
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
        return [_node(m) for m in await self.client.members()]

    async def events(self) -> AsyncIterator[Event]:
        async for record in self.client.stream("*"):
            kind = record.get("Event")
            if kind in _MEMBER_EVENTS:
                for m in record.get("Members", []):
                    yield _MEMBER_EVENTS[kind](_node(m))
            elif kind == "user":
                yield UserEvent(record.get("Name", ""), record.get("Payload", b""), int(record.get("LTime", 0)))
            elif kind == "query":
                yield Query(
                    record.get("Name", ""), record.get("Payload", b""), int(record["ID"]), self._responder(record)
                )

    def _responder(self, record: dict[str, Any]) -> Callable[[bytes], Awaitable[None]]:
        qid = int(record["ID"])

        async def respond(payload: bytes) -> None:
            await self.client.respond(qid, payload)

        return respond

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
