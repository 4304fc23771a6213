"""The [::1] relay's own accept loop (libnet.drivers.relay._Tcp): clients' sockets above
FD_SETSIZE, out-of-descriptor accepts backed off and said once, not every 0.1 s, and so is
a client accepted with the last descriptor (no socket left for the container)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import gc
import logging
import resource
import socket

from libnet.drivers import relay
from libnet.kernel import fds


def _relay(host_port: int) -> tuple[relay._Tcp, socket.socket]:
    """A relay of ``[::1]:host_port`` to a container's port 80, and its listener (on a free port)."""
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.bind(("::1", 0))
    listener.setblocking(False)
    return relay._Tcp(None, relay.Target("tcp", host_port, "2001:db8::2", 80)), listener


async def test_failing_accepts_are_backed_off_and_said_once(monkeypatch, caplog) -> None:
    monkeypatch.setattr(relay, "ACCEPT_BACKOFF", 0.01)
    loop = asyncio.get_running_loop()
    calls = 0

    async def emfile(sock):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(loop, "sock_accept", emfile)
    tcp, listener = _relay(9093)
    with caplog.at_level(logging.WARNING, logger="libnet.drivers.relay"):
        await tcp.start(listener)
        for _ in range(200):
            if calls >= 10:
                break
            await asyncio.sleep(0.01)
        await tcp.close()
    assert calls >= 10
    assert [r.getMessage() for r in caplog.records].count(
        "relay [::1]:9093: accept failed: [Errno 24] Too many open files"
    ) == 1
    assert listener.fileno() == -1  # closed with the relay


async def test_accepted_clients_are_lifted(monkeypatch) -> None:
    seen: list[int] = []

    async def hold(self, conn):  # type: ignore[no-untyped-def]
        seen.append(conn.fileno())
        conn.close()

    monkeypatch.setattr(relay._Tcp, "_accept", hold)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    tcp, listener = _relay(9094)
    await tcp.start(listener)
    try:
        client = socket.create_connection(listener.getsockname()[:2], timeout=5)
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.01)
        client.close()
    finally:
        await tcp.close()
    assert len(seen) == 1
    if soft > fds.FD_SETSIZE:  # room above: lifted
        assert seen[0] >= fds.FD_SETSIZE


async def test_no_socket_to_the_container_closes_the_client_and_is_said_once(monkeypatch, caplog) -> None:
    """The accept took the last descriptor, the socket to the container fails (EMFILE): the
    client's task ended in that OSError, never retrieved -- asyncio logged an ERROR with a
    traceback per client (263 of 400 clients of an agent under ``prlimit --nofile=300``)."""

    def emfile(*_):  # type: ignore[no-untyped-def]
        fut: concurrent.futures.Future[socket.socket] = concurrent.futures.Future()
        fut.set_exception(OSError(errno.EMFILE, "Too many open files"))
        return fut

    monkeypatch.setattr(relay.netns, "open_socket_future", emfile)
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    tcp, listener = _relay(9095)
    await tcp.start(listener)
    try:
        with caplog.at_level(logging.WARNING, logger="libnet.drivers.relay"):
            for _ in range(3):
                reader, writer = await asyncio.open_connection(*listener.getsockname()[:2])
                assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the relay
                writer.close()
            for _ in range(200):
                if not tcp.tasks:
                    break
                await asyncio.sleep(0.01)
            gc.collect()
    finally:
        await tcp.close()
        loop.set_exception_handler(None)
    assert unhandled == []
    assert [r.getMessage() for r in caplog.records] == [
        "relay [::1]:9095: no socket to [2001:db8::2]:80: [Errno 24] Too many open files"
    ]
