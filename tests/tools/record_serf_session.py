"""Record a real Serf RPC session for the client's unit tests (run as root).

Starts a Serf agent in a test-host namespace, puts a recording proxy between
libnet's SerfClient and the agent, runs a fixed script of commands, and writes
``tests/unit/data/serf_session.msgpack``: a list of
``[requests, agent_bytes]`` pairs, the agent's bytes being everything it sent
after those requests and before the next ones.

    sudo .venv/bin/python tests/tools/record_serf_session.py
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile

import msgpack

from libnet.cluster.agent import SerfAgent, SerfAgentConfig
from libnet.cluster.serf import SerfClient, SerfError
from libnet.kernel import netns
from libnet.testing.hosts import Testbed

OUT = os.path.join(os.path.dirname(__file__), "..", "unit", "data", "serf_session.msgpack")


async def main(bed: Testbed) -> None:
    host = bed.hosts[0]
    agent = SerfAgent(
        SerfAgentConfig(
            node="rec1",
            bind=host.ipv4,
            state_dir=tempfile.mkdtemp(),
            tags={"vtep": host.ipv4},
            netns=host.ns,
            rpc_auth="recorded-key",
        )
    )
    await agent.start()
    segments: list[list] = []  # [requests, agent bytes]
    unpacker = msgpack.Unpacker(raw=False)

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(sock=_connected(host.ns, agent.config.rpc_port))

        async def client_to_agent() -> None:
            while data := await reader.read(65536):
                unpacker.feed(data)
                objs = list(unpacker)
                if objs:
                    segments.append([objs, b""])
                up_w.write(data)

        async def agent_to_client() -> None:
            while data := await up_r.read(65536):
                segments[-1][1] += data
                writer.write(data)

        await asyncio.gather(client_to_agent(), agent_to_client(), return_exceptions=True)

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = SerfClient("127.0.0.1", port, auth_key="recorded-key", reconnect=False)
    await client.connect()
    await client.members()
    with contextlib.suppress(SerfError):
        await client.join(["203.0.113.250:7946"])
    stream = client.stream("user:deploy")
    first = asyncio.create_task(anext(stream))
    await asyncio.sleep(0.3)
    await client.event("deploy", b"v1")
    await asyncio.wait_for(first, 5)
    await asyncio.sleep(0.2)
    answers = [r async for r in client.query("ping", b"x", timeout=0.5, request_ack=True)]
    assert answers
    await client.tags({"role": "test"})
    await client.stats()
    await asyncio.sleep(0.2)
    await client.close()
    server.close()
    await agent.stop()
    with open(OUT, "wb") as f:
        f.write(msgpack.packb(segments, use_bin_type=True))
    print(f"wrote {len(segments)} segments to {OUT}")


def _connected(ns: str, port: int):
    import socket

    sock = netns.open_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


if __name__ == "__main__":
    with Testbed(1) as bed:
        asyncio.run(main(bed))
