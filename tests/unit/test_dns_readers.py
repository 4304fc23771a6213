"""The DNS listeners' sockets are watched through one reader of the event loop
(libnet.dns.readers; issue 22: a loop reader per socket was ~450 bytes, four per sandbox)."""

from __future__ import annotations

import asyncio
import socket

from libnet.dns.readers import Readers


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    return a, b


async def test_many_sockets_one_loop_reader() -> None:
    loop = asyncio.get_running_loop()
    keys_before = len(loop._selector.get_map())  # type: ignore[attr-defined]
    readers, got = Readers(), []
    pairs = [_pair() for _ in range(20)]

    def drain(sock: socket.socket, i: int) -> None:
        while True:
            try:
                got.append((i, sock.recv(100)))
            except BlockingIOError:
                return

    try:
        for i, (a, _) in enumerate(pairs):
            readers.add(a.fileno(), drain, a, i)
        assert len(readers) == 20
        assert len(loop._selector.get_map()) == keys_before + 1  # type: ignore[attr-defined]
        for i in (3, 7, 19):
            pairs[i][1].send(b"q%d" % i)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(got) == 3:
                break
        assert sorted(got) == [(3, b"q3"), (7, b"q7"), (19, b"q19")]
        assert readers.remove(pairs[7][0].fileno()) and not readers.remove(pairs[7][0].fileno())
        pairs[7][1].send(b"again")
        pairs[3][1].send(b"more")
        await asyncio.sleep(0.1)
        assert got[3:] == [(3, b"more")]  # 7 is no longer watched (its datagram waits in its socket)
    finally:
        readers.close()
        for a, b in pairs:
            a.close()
            b.close()
    assert len(loop._selector.get_map()) == keys_before  # type: ignore[attr-defined]


async def test_a_failing_callback_is_reported_and_the_rest_served() -> None:
    loop = asyncio.get_running_loop()
    reported, served = [], []
    loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx["exception"]))
    readers = Readers()
    (a, b), (c, d) = _pair(), _pair()

    def bad(sock: socket.socket) -> None:
        sock.recv(100)
        raise ValueError("boom")

    readers.add(a.fileno(), bad, a)
    readers.add(c.fileno(), lambda s: served.append(s.recv(100)), c)
    try:
        b.send(b"x")
        d.send(b"y")
        for _ in range(100):
            await asyncio.sleep(0.01)
            if reported and served:
                break
        assert [str(e) for e in reported] == ["boom"] and served == [b"y"]
    finally:
        readers.close()
        for s in (a, b, c, d):
            s.close()
        loop.set_exception_handler(None)


def test_a_new_loop_takes_the_reader_over() -> None:
    readers, got = Readers(), []
    a, b = _pair()

    async def once() -> None:
        readers.add(a.fileno(), lambda s: got.append(s.recv(100)), a)
        b.send(b"z")
        for _ in range(100):
            await asyncio.sleep(0.01)
            if got:
                break

    try:
        asyncio.run(once())
        got.clear()
        asyncio.run(once())  # the same fd again on another loop
        assert got == [b"z"]
    finally:
        readers.close()
        a.close()
        b.close()


async def test_a_number_closed_unremoved_and_reused_gets_the_new_callback_only() -> None:
    """A socket closed without ``remove`` (the kernel drops it from the epoll set) and its
    number reused by a new socket: adding the new one failed (ENOENT from modifying a
    registration that was gone) and the old callback stayed in place."""
    readers, got = Readers(), []
    a, a_peer = _pair()
    b_peer = None
    try:
        readers.add(a.fileno(), lambda: got.append("old"))
        fd = a.fileno()
        a.close()
        b, b_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        if b.fileno() != fd:  # the lowest free number is the one just closed
            b_peer, b = b, b_peer
        assert b.fileno() == fd
        b.setblocking(False)
        readers.add(b.fileno(), lambda: got.append(b.recv(100)))
        b_peer.send(b"new")
        for _ in range(100):
            await asyncio.sleep(0.01)
            if got:
                break
        assert got == [b"new"]
        assert readers.remove(b.fileno())
        b.close()
    finally:
        readers.close()
        for s in (a_peer, b_peer):
            if s is not None:
                s.close()
