"""The embedded DNS server: per sandbox, listeners on 127.0.0.11:53 (and [::1]:53).

Each sandbox gets a UDP and a TCP socket per address, created inside its
namespace and all served by the caller's one event loop.  UDP is read
without asyncio's per-datagram machinery: on readiness up to
``_BATCH`` datagrams are drained in one go, and a question seen before is
answered from a cache of encoded replies keyed by the query's bytes after
its ID (so flags and EDNS are part of the key), patched with the new ID --
no parsing, no encoding.  Answers with several records keep a few encoded
orders and pick one per answer (round robin).  The caches are dropped when
the records change.  A forwarded answer from the shared cache (see
:mod:`libnet.dns.cache`) is remembered the same way, as a reference to the
cache entry, which makes the reply (TTLs decremented) without parsing.

On Linux the UDP sockets are drained and answered in batches with
``recvmmsg``/``sendmmsg`` (:mod:`libnet.dns.mmsg`: one system call per up to
64 datagrams instead of one per datagram each way; measured first, see
there).  ``DnsServer(batched=False)``, or a platform without those calls,
uses the plain ``recvfrom``/``sendto`` loop; both paths answer the same and
are tested alike.

UDP replies respect 512 bytes, or the client's EDNS0 size (at most 4096):
a larger answer goes out truncated (TC bit, question only) and TCP serves
it whole.  Malformed packets get FORMERR when their header can be read,
silence otherwise; nothing a client sends stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from dnslib import QTYPE, RCODE, DNSRecord

from libnet.dns import mmsg
from libnet.dns.cache import Entry
from libnet.dns.forwarder import Forwarder, Upstream
from libnet.dns.readers import Readers
from libnet.dns.resolver import MAX_UDP_PAYLOAD, Resolver
from libnet.kernel import fds, netns

log = logging.getLogger("libnet.dns")
_BATCH = 64  # datagrams per readiness event
_CACHE_MAX = 8192  # encoded answers per sandbox
_VARIANTS = 6  # encoded orders kept for a round-robin answer
_TCP_IDLE = 10.0  # seconds a TCP client may stay silent
_TCP_MAX = 64  # concurrent TCP connections per sandbox
_RCVBUF = 1 << 20
_ROUNDS = 4  # recvmmsg calls per readiness event (BATCH datagrams each)


@dataclass
class ServerStats:
    answered: int = 0
    cached: int = 0
    formerr: int = 0
    dropped: int = 0


def udp_limit(request: DNSRecord) -> int:
    """The largest UDP answer the client accepts: 512, or its EDNS0 size (capped)."""
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return max(512, min(int(rr.rclass), MAX_UDP_PAYLOAD))
    return 512


def fit(reply: DNSRecord, limit: int) -> bytes:
    """``reply`` encoded; if longer than ``limit``, a truncated copy (TC, question and OPT only)."""
    wire = bytes(reply.pack())
    if len(wire) <= limit:
        return wire
    short = DNSRecord(header=reply.header, q=reply.q)
    short.header.tc = 1
    for rr in reply.ar:
        if rr.rtype == QTYPE.OPT:
            short.add_ar(rr)
    return bytes(short.pack())


def formerr(data: bytes, rcode: int = RCODE.FORMERR) -> bytes | None:
    """An error answer (FORMERR by default) built from the query's header alone:
    its ID and opcode, no question; None if not even a header."""
    if len(data) < 12 or data[2] & 0x80:  # too short, or a response: stay silent
        return None
    flags = 0x8000 | (data[2] & 0x78) << 8 | rcode
    return data[:2] + struct.pack("!HHHHH", flags, 0, 0, 0, 0)


def _valid_name(labels: tuple[bytes, ...]) -> bool:
    """RFC 1035 limits: labels of 1-63 octets, at most 255 octets in all."""
    return all(0 < len(label) < 64 for label in labels) and sum(len(label) + 1 for label in labels) < 255


class _Listener:
    """One sandbox's sockets, view and answer cache."""

    __slots__ = ("_clients", "_tcp", "_udp", "cache", "sandbox_id", "server", "upstreams", "view")

    def __init__(
        self, server: DnsServer, sandbox_id: str, view: frozenset[str], upstreams: tuple[Upstream, ...] | None = None
    ) -> None:
        self.server, self.sandbox_id, self.view = server, sandbox_id, view
        self.upstreams = upstreams or None  # the sandbox's own (--dns); None: the host's
        self.cache: dict[bytes, bytes | tuple[bytes, ...] | Entry] = {}
        self._udp: list[socket.socket] = []
        self._tcp: list[socket.socket] = []  # listening sockets, accepted from the event loop
        self._clients: set[asyncio.Task[None]] | None = None  # made by the first TCP client (216 bytes)

    async def open(self, ns: str, address: str, v6_address: str | None, port: int) -> None:
        wanted = [(family, addr) for family, addr in ((socket.AF_INET, address), (socket.AF_INET6, v6_address)) if addr]
        # all four in one entry into the namespace, on this thread (no hand-over to another)
        made = netns.sockets_in(
            ns, [(f, kind, 0) for f, _ in wanted for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM)]
        )
        kept: list[socket.socket] = []
        try:
            # kept as long as the sandbox: above FD_SETSIZE, the low numbers left to select(2) users
            made = [fds.lift(sock) if isinstance(sock, socket.socket) else sock for sock in made]
            for i, (family, addr) in enumerate(wanted):
                udp, tcp = made[2 * i], made[2 * i + 1]
                if isinstance(udp, OSError) or isinstance(tcp, OSError):
                    if family == socket.AF_INET6:  # IPv6 off in this sandbox
                        continue
                    raise udp if isinstance(udp, OSError) else tcp  # type: ignore[misc]
                try:
                    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
                    udp.bind((addr, port))
                    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    tcp.bind((addr, port))
                    tcp.listen(_TCP_MAX)
                except OSError as exc:
                    if family == socket.AF_INET6:  # no ::1 in this sandbox
                        log.debug("sandbox %s: no IPv6 DNS listener: %s", self.sandbox_id[:12], exc)
                        continue
                    raise
                udp.setblocking(False)
                tcp.setblocking(False)
                self._udp.append(udp)
                kept.append(udp)
                batch = self.server.batch(family)
                readers = self.server.readers
                # plain functions with this listener as an argument: no bound method kept per socket
                if batch is not None:
                    readers.add(udp.fileno(), _Listener._udp_ready_batched, self, udp, batch)
                else:
                    readers.add(udp.fileno(), _Listener._udp_ready, self, udp)
                self._tcp.append(tcp)
                kept.append(tcp)
                readers.add(tcp.fileno(), _Listener._accept, self, tcp)
        finally:
            for sock in made:
                if isinstance(sock, socket.socket) and sock not in kept:
                    sock.close()

    async def close(self) -> None:
        readers = self.server.readers
        for udp in self._udp:
            readers.remove(udp.fileno())
            udp.close()
        for tcp in self._tcp:
            readers.remove(tcp.fileno())
            tcp.close()
        for task in list(self._clients or ()):
            task.cancel()
        self._udp.clear()
        self._tcp.clear()

    # --- UDP ----------------------------------------------------------------

    def _udp_ready(self, sock: socket.socket) -> None:
        cache, stats = self.cache, self.server.stats
        for _ in range(_BATCH):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. an ICMP error queued on the socket
                continue
            hit = cache.get(data[2:])
            if hit is not None:
                answer: bytes | None
                if isinstance(hit, bytes):
                    answer = data[:2] + hit
                elif isinstance(hit, tuple):
                    answer = data[:2] + random.choice(hit)
                else:
                    answer = self._from_entry(hit, data)
                if answer is not None:
                    stats.cached += 1
                    with contextlib.suppress(OSError):
                        sock.sendto(answer, addr)
                    continue
            self._miss(sock, data, addr)

    def _udp_ready_batched(self, sock: socket.socket, b: mmsg.Batch) -> None:
        """:meth:`_udp_ready` with recvmmsg/sendmmsg: answers from the caches are
        queued in the send arena and leave together; the rest takes the usual path."""
        cache, stats, fd = self.cache, self.server.stats, sock.fileno()
        rview, sview, rmsg32, smsgW, siovW = b.rview, b.sview, b.rmsg32, b.smsgW, b.siovW
        stride32, len32, flags32 = b.stride32, b.len32, b.flags32
        strideW, nameW, names = b.strideW, b.nameW, b.name_addr
        slot, trunc = mmsg.SLOT, mmsg.MSG_TRUNC
        for _ in range(_ROUNDS):
            n = b.recv(fd)
            if n <= 0:
                if n == 0:
                    return
                continue  # e.g. an ICMP error queued on the socket
            k = 0
            for i in range(n):
                at = i * stride32
                size = rmsg32[at + len32]
                start = i * slot
                if rmsg32[at + flags32] & trunc:  # longer than any DNS query over UDP: FORMERR
                    self.server.stats.formerr += 1
                    bad = formerr(rview[start : start + 12].tobytes())
                    if bad is not None:
                        with contextlib.suppress(OSError):
                            sock.sendto(bad, b.address(i))
                    continue
                data = rview[start : start + size].tobytes()
                hit = cache.get(data[2:])
                answer: bytes | None = None
                if hit is not None:
                    if isinstance(hit, bytes):
                        answer = data[:2] + hit
                    elif isinstance(hit, tuple):
                        answer = data[:2] + random.choice(hit)
                    else:
                        answer = self._from_entry(hit, data)
                if answer is None or len(answer) > slot:
                    self._miss(sock, data, b.address(i))
                    continue
                stats.cached += 1
                out = k * slot
                sview[out : out + len(answer)] = answer
                siovW[2 * k + 1] = len(answer)
                smsgW[k * strideW + nameW] = names[i]
                k += 1
            if k:
                b.send(fd, k)
            if n < mmsg.BATCH:
                return

    def _from_entry(self, entry: Entry, data: bytes) -> bytes | None:
        """A forwarded answer from the shared cache; None (and forgotten here) once expired."""
        fwd = self.server.forwarder
        fwd.current(self.upstreams)  # notices changed host upstreams (flush expires every entry)
        answer = entry.reply(data, fwd.clock())
        if answer is None:
            self.cache.pop(data[2:], None)
        else:
            fwd.hit(fast=True)
        return answer

    def _miss(self, sock: socket.socket, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            self._udp_miss(sock, data, addr)
        except Exception:  # one bad question must not stop the loop
            self.server.stats.dropped += 1
            log.exception("DNS: unexpected failure answering a query")
            failed = formerr(data, RCODE.SERVFAIL)
            if failed is not None:
                with contextlib.suppress(OSError):
                    sock.sendto(failed, addr)

    def _udp_miss(self, sock: socket.socket, data: bytes, addr: tuple[Any, ...]) -> None:
        request = self._parse(data)
        if request is None:
            bad = formerr(data)
            if bad is not None:
                with contextlib.suppress(OSError):
                    sock.sendto(bad, addr)
            return
        limit = udp_limit(request)
        reply = self.server.resolver.resolve(request, self.view)
        if reply is None:
            answer, entry = self.server.forwarder.from_cache(request, data, self.upstreams)
            if answer is None:
                self.server.spawn(self._forward_udp(sock, request, data, addr))
                return
            with contextlib.suppress(OSError):
                sock.sendto(answer, addr)
            if entry is not None:
                self._keep(data, entry)
            return
        wire = fit(reply, limit)
        with contextlib.suppress(OSError):
            sock.sendto(wire, addr)
        self.server.stats.answered += 1
        self._remember(request, data, reply, wire, limit)

    async def _forward_udp(self, sock: socket.socket, request: DNSRecord, data: bytes, addr: tuple[Any, ...]) -> None:
        answer: bytes | None
        try:
            answer = await self.server.forwarder.forward(
                request, data, upstreams=self.upstreams, client=self.sandbox_id
            )
        except Exception:
            self.server.stats.dropped += 1
            log.exception("DNS: unexpected failure forwarding a query")
            answer = formerr(data, RCODE.SERVFAIL)
        if answer is not None:
            with contextlib.suppress(OSError):
                sock.sendto(answer, addr)

    def _keep(self, key_data: bytes, value: bytes | tuple[bytes, ...] | Entry) -> None:
        if len(self.cache) >= _CACHE_MAX:
            self.cache.clear()
        if not self.cache:
            self.server.cached.add(self)
        self.cache[key_data[2:]] = value

    def _remember(self, request: DNSRecord, data: bytes, reply: DNSRecord, wire: bytes, limit: int) -> None:
        if reply.header.rcode not in (RCODE.NOERROR, RCODE.NXDOMAIN):
            return
        cache = self.cache
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        if not cache:
            self.server.cached.add(self)
        if len(reply.rr) > 1:  # round robin: several encoded orders, one picked per answer
            variants = {wire[2:]}
            for _ in range(_VARIANTS * 2):
                again = self.server.resolver.resolve(request, self.view)
                if again is not None:
                    variants.add(fit(again, limit)[2:])
                if len(variants) >= _VARIANTS:
                    break
            cache[data[2:]] = tuple(variants)
        else:
            cache[data[2:]] = wire[2:]

    def _parse(self, data: bytes) -> DNSRecord | None:
        """The query, or None (counted) if it is malformed -- including names
        dnslib reads but cannot write back (over 255 octets, labels over 63) --
        or a response (QR set: never answered, so two servers cannot ping-pong)."""
        try:
            request = DNSRecord.parse(data)
            if not request.header.qr and all(_valid_name(q.qname.label) for q in request.questions):
                return request
        except Exception:  # dnslib raises several kinds on garbage (DNSError, struct, Unicode, recursion)
            pass
        self.server.stats.formerr += 1
        return None

    # --- TCP ----------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        """Take the connections waiting on a listening socket (an ``asyncio.Server``
        per sandbox cost 0.2-0.5 ms to set up on every attach; this is one reader)."""
        for _ in range(_BATCH):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors or memory: pause, as asyncio's servers do
                log.warning("sandbox %s: DNS over TCP: accept failed, pausing 1 s: %s", self.sandbox_id[:12], exc)
                self.server.readers.remove(listener.fileno())
                asyncio.get_running_loop().call_later(1.0, self._resume_accept, listener)
                return
            if self._clients is None:
                self._clients = set()
            if len(self._clients) >= _TCP_MAX:
                conn.close()
                continue
            conn = fds.lift(conn)  # up to _TCP_MAX per sandbox: not on the low numbers (libnet.kernel.fds)
            conn.setblocking(False)
            task = asyncio.ensure_future(self._tcp_connection(conn))
            self._clients.add(task)  # counted from now on, not from its first step
            task.add_done_callback(self._clients.discard)

    def _resume_accept(self, listener: socket.socket) -> None:
        if listener in self._tcp:  # not closed meanwhile
            self.server.readers.add(listener.fileno(), _Listener._accept, self, listener)

    async def _tcp_connection(self, conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn)
        except BaseException:
            conn.close()
            raise
        await self._tcp_client(reader, writer)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), _TCP_IDLE)
                data = await asyncio.wait_for(reader.readexactly(struct.unpack("!H", head)[0]), _TCP_IDLE)
                answer = await self._tcp_answer(data)
                if answer is None:
                    break
                writer.write(struct.pack("!H", len(answer)) + answer)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _tcp_answer(self, data: bytes) -> bytes | None:
        request = self._parse(data)
        if request is None:
            return formerr(data)
        reply = self.server.resolver.resolve(request, self.view)
        if reply is None:
            return await self.server.forwarder.forward(
                request, data, tcp=True, upstreams=self.upstreams, client=self.sandbox_id
            )
        self.server.stats.answered += 1
        return bytes(reply.pack())


class DnsServer:
    """Listeners for every attached sandbox, one resolver and one forwarder."""

    def __init__(
        self,
        resolver: Resolver,
        forwarder: Forwarder,
        address: str = "127.0.0.11",
        port: int = 53,
        v6_address: str | None = "::1",
        batched: bool | None = None,
    ) -> None:
        self.resolver, self.forwarder = resolver, forwarder
        #: recvmmsg/sendmmsg (None: where available)
        self.batched = mmsg.available() if batched is None else batched and mmsg.available()
        self._batches: dict[int, mmsg.Batch] = {}
        self.address, self.port, self.v6_address = address, port, v6_address
        self.stats = ServerStats()
        self._listeners: dict[str, _Listener] = {}
        #: the listeners whose answer cache may hold something (filled since the last invalidate):
        #: only these are cleared when the records change (issue 22: every sandbox's, per attach)
        self.cached: set[_Listener] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: the listeners' sockets, watched through one reader of the loop
        self.readers = Readers()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def batch(self, family: int) -> mmsg.Batch | None:
        """The arenas for ``family`` (one per family, shared by all sandboxes); None: plain calls."""
        if not self.batched:
            return None
        b = self._batches.get(family)
        if b is None:
            b = self._batches[family] = mmsg.Batch(family)
        return b

    def attached(self) -> list[str]:
        return list(self._listeners)

    async def attach(
        self, sandbox_id: str, ns: str, view: frozenset[str], upstreams: tuple[Upstream, ...] | None = None
    ) -> None:
        """Serve the sandbox (listeners made once) with the networks in ``view`` visible,
        forwarding to ``upstreams`` (its own ``--dns`` servers; None: the host's)."""
        listener = self._listeners.get(sandbox_id)
        if listener is not None:
            if listener.view != view or listener.upstreams != (upstreams or None):
                listener.view, listener.upstreams = view, upstreams or None
                listener.cache.clear()
            return
        listener = _Listener(self, sandbox_id, view, upstreams)
        try:
            await listener.open(ns, self.address, self.v6_address, self.port)
        except BaseException:
            await listener.close()
            raise
        self._listeners[sandbox_id] = listener

    async def detach(self, sandbox_id: str) -> None:
        listener = self._listeners.pop(sandbox_id, None)
        if listener is not None:
            self.cached.discard(listener)
            await listener.close()

    def invalidate(self) -> None:
        """The records changed: no cached answer may be used again."""
        for listener in self.cached:
            listener.cache.clear()
        self.cached.clear()

    async def close(self) -> None:
        for sid in list(self._listeners):
            await self.detach(sid)
        for task in list(self._tasks):
            task.cancel()
        self.readers.close()
