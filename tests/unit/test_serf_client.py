"""The Serf RPC client's framing and dispatch, against recorded and scripted agents."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

import msgpack
import pytest

from libnet.cluster.serf import SerfAuthError, SerfClient, SerfError, SerfNoSuchQuery, SerfUnavailable
from libnet.errors import BadRequest

RECORDED = os.path.join(os.path.dirname(__file__), "data", "serf_session.msgpack")


class Agent:
    """A fake agent on 127.0.0.1: ``on_request(objs, write)`` answers each request."""

    def __init__(self, on_request: Callable[[list, Callable[[bytes], None]], None]) -> None:
        self.on_request = on_request
        self.requests: list[list] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Agent:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for w in self.writers:
            w.close()
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await self._loop(reader, writer)

    async def _loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        pending: list = []
        while data := await reader.read(65536):
            unpacker.feed(data)
            for obj in unpacker:
                pending.append(obj)
                if (
                    "Command" in obj and obj["Command"] in ("members", "leave", "list-keys", "stats")
                ) or "Command" not in obj:
                    self._request(pending, writer)
                    pending = []

    def _request(self, objs: list, writer: asyncio.StreamWriter) -> None:
        self.requests.append(objs)
        self.on_request(objs, writer.write)

    def drop_connections(self) -> None:
        for w in self.writers:
            w.close()
        self.writers.clear()


def pack(*objs) -> bytes:
    return b"".join(msgpack.packb(o, use_bin_type=True) for o in objs)


def ok(seq: int) -> dict:
    return {"Seq": seq, "Error": ""}


async def test_replay_of_a_recorded_session() -> None:
    with open(RECORDED, "rb") as f:
        segments = msgpack.unpackb(f.read(), raw=False)
    script = iter(segments)

    def answer(objs: list, write) -> None:
        expected, data = next(script)
        assert objs == expected, (objs, expected)  # the client sends exactly what it sent to the real agent
        write(data)

    async with Agent(answer) as agent:
        client = SerfClient("127.0.0.1", agent.port, auth_key="recorded-key", reconnect=False)
        await client.connect()
        [member] = await client.members()
        assert (member.name, member.addr, member.port, member.status) == ("rec1", "203.0.113.11", 7946, "alive")
        assert member.tags == {"vtep": "203.0.113.11"}
        with pytest.raises(SerfError) as err:  # the agent sends a body with the error: framing survives
            await client.join(["203.0.113.250:7946"])
        assert "Failed to join" in str(err.value)
        stream = client.stream("user:deploy")
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.05)
        await client.event("deploy", b"v1")  # its reply and the stream record arrive interleaved
        record = await asyncio.wait_for(first, 2)
        assert (record["Event"], record["Name"], record["Payload"]) == ("user", "deploy", b"v1")
        answers = [r async for r in client.query("ping", b"x", timeout=0.5, request_ack=True)]
        assert answers == [{"Type": "ack", "From": "rec1", "Payload": b""}]
        await client.tags({"role": "test"})
        stats = await client.stats()
        assert stats["agent"] == {"name": "rec1"} and stats["tags"]["role"] == "test"
        await client.close()


def scripted(replies: dict[str, Callable[[int, dict | None], bytes]]):
    def answer(objs: list, write) -> None:
        header, body = objs[0], (objs[1] if len(objs) > 1 else None)
        reply = replies.get(header["Command"])
        write(reply(header["Seq"], body) if reply else pack(ok(header["Seq"])))

    return answer


async def test_orphan_body_from_newer_agents_is_ignored_and_addresses_decoded() -> None:
    v4_mapped = b"\x00" * 10 + b"\xff\xff" + bytes([203, 0, 113, 7])
    member = {"Name": "n", "Addr": v4_mapped, "Port": 7946, "Tags": {}, "Status": "failed"}
    replies = {
        "force-leave": lambda seq, body: pack(ok(seq), {"Exists": True}),  # newer agents send a body
        "members": lambda seq, body: pack(ok(seq), {"Members": [member]}),
    }
    async with Agent(scripted(replies)) as agent, SerfClient("127.0.0.1", agent.port, reconnect=False) as client:
        await client.force_leave("n")
        [m] = await client.members()
        assert (m.addr, m.status) == ("203.0.113.7", "failed")


async def test_error_texts_become_typed_errors() -> None:
    replies = {
        "auth": lambda seq, body: pack({"Seq": seq, "Error": "Invalid authentication token"}),
        "respond": lambda seq, body: pack({"Seq": seq, "Error": "No pending queries matching ID"}),
    }
    async with Agent(scripted(replies)) as agent:
        with pytest.raises(SerfAuthError):
            await SerfClient("127.0.0.1", agent.port, auth_key="wrong", reconnect=False).connect()
        async with SerfClient("127.0.0.1", agent.port, reconnect=False) as client:
            with pytest.raises(SerfNoSuchQuery):
                await client.respond(42, b"late")
            with pytest.raises(BadRequest):
                await client.event("big", b"x" * 600)  # refused before it is sent
            assert all(r[0]["Command"] != "event" for r in agent.requests)


async def test_stream_survives_a_reconnect() -> None:
    streams: list[int] = []
    writes = {}

    def answer(objs: list, write) -> None:
        header = objs[0]
        if header["Command"] == "stream":
            streams.append(header["Seq"])
            writes["stream"] = write
        write(pack(ok(header["Seq"])))

    async with Agent(answer) as agent:
        client = SerfClient("127.0.0.1", agent.port)
        await client.connect()
        events = client.stream("*")
        got = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.05)
        writes["stream"](pack(ok(streams[-1]), {"Event": "user", "Name": "a", "Payload": "str-payload"}))
        assert (await asyncio.wait_for(got, 2))["Payload"] == b"str-payload"  # normalised to bytes

        agent.drop_connections()
        for _ in range(100):  # the client reconnects and re-opens the stream with a new Seq
            if len(streams) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(streams) == 2 and streams[1] > streams[0]
        writes["stream"](pack(ok(streams[1]), {"Event": "user", "Name": "b", "Payload": b"again"}))
        assert (await asyncio.wait_for(anext(events), 2))["Name"] == "b"
        await client.close()


async def test_calls_fail_fast_when_the_agent_is_gone() -> None:
    client = SerfClient("127.0.0.1", 1, timeout=1, reconnect=False)
    with pytest.raises(SerfUnavailable):
        await client.members()


async def test_the_reader_keeps_a_small_buffer_and_still_takes_large_answers(monkeypatch) -> None:
    """msgpack's default unpacker buffer is 1 MiB, all resident once ~1 MiB of events went
    through it (~1 MiB of the agent's RSS, issue 22): the client asks for a 64 KiB one, which
    grows for an answer larger than that."""
    from libnet.cluster import serf

    made: list[dict] = []
    real = msgpack.Unpacker

    def unpacker(*args, **kw):
        made.append(kw)
        return real(*args, **kw)

    monkeypatch.setattr(serf.msgpack, "Unpacker", unpacker)
    members = [
        {
            "Name": f"n{i}",
            "Addr": bytes([203, 0, 113, i % 250]),
            "Port": 7946,
            "Tags": {"t": "x" * 500},
            "Status": "alive",
        }
        for i in range(600)
    ]
    replies = {"members": lambda seq, body: pack(ok(seq), {"Members": members})}  # ~330 KB in one answer
    async with Agent(scripted(replies)) as agent, SerfClient("127.0.0.1", agent.port, reconnect=False) as client:
        got = await client.members()
    assert [m.name for m in got] == [f"n{i}" for i in range(600)]
    client_made = [kw for kw in made if kw.get("strict_map_key") is False]  # not the fake agent's
    assert client_made and all(0 < kw.get("read_size", 0) <= 65536 for kw in client_made)
