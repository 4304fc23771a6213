"""The [::1] relay's own accept loop (libnet.drivers.relay._Tcp): clients' sockets above
FD_SETSIZE, out-of-descriptor accepts backed off and said once, not every 0.1 s."""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket

from libnet.drivers import relay
from libnet.kernel import fds


async def test_failing_accepts_are_backed_off_and_said_once(monkeypatch, caplog) -> None:
    monkeypatch.setattr(relay, "ACCEPT_BACKOFF", 0.01)
    loop = asyncio.get_running_loop()
    calls = 0

    async def emfile(sock):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(loop, "sock_accept", emfile)
    tcp = relay._Tcp(None, relay.Target("tcp", 9093, "2001:db8::2", 80))
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.bind(("::1", 0))
    listener.setblocking(False)
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
    tcp = relay._Tcp(None, relay.Target("tcp", 9094, "2001:db8::2", 80))
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.bind(("::1", 0))
    listener.setblocking(False)
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
