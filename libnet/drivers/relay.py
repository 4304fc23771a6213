"""Userspace relays for ports published on IPv6 loopback (``::1``).

IPv4 localhost publishing is done in the kernel: ``route_localnet`` on the
bridge, an output-hook DNAT and a masquerade (:func:`libnet.kernel.firewall.localhost_rules`).
IPv6 has no ``route_localnet``: a connection from ``::1`` DNATed to a
container leaves with the bridge's address after the masquerade, but the
kernel refuses the input route for the de-NATed reply (destination ``::1``
arriving on the bridge: "Network is unreachable", RFC 4291 2.5.3), so no
answer ever reaches the client.  (Checked on Linux 6.18 with nft trace:
the SYN-ACK passes prerouting and never reaches the input hook.)

So, as Docker's ``docker-proxy`` does, the driver listens on ``[::1]:<host
port>`` in the host namespace and relays each connection (TCP) or flow
(UDP) to the container's IPv6 address; the container sees the bridge's
gateway address as the peer, as with the masquerade.  The relays live in
the driver's event loop: they stop with the endpoint's ports, with the
driver's ``close`` and with the agent, and ``reconcile`` starts the missing
ones again.  Every loop is bounded: connections and flows per relay
(:data:`MAX_CONNECTIONS`, :data:`MAX_FLOWS`), connect and idle timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any

from libnet.errors import Conflict
from libnet.kernel import fds, netns
from libnet.kernel.errors import translate

log = logging.getLogger("libnet.drivers.relay")
#: a socket address as asyncio hands it over
Address = tuple[Any, ...]
LOOPBACK = "::1"
MAX_CONNECTIONS = 1024  # TCP connections at a time per relay; more are closed at once
MAX_FLOWS = 1024  # UDP clients at a time per relay; more are dropped
CONNECT_TIMEOUT = 5.0  # seconds to reach the container
UDP_IDLE = 90.0  # seconds a UDP flow lives without traffic (docker-proxy's UDP timeout)
CHUNK = 65536
ACCEPT_BACKOFF = 0.1  # seconds before accepting again after a failed accept (out of descriptors)


@dataclass(frozen=True)
class Target:
    """One relayed mapping: ``[::1]:host_port`` -> ``[ip]:port`` (``protocol`` tcp or udp)."""

    protocol: str
    host_port: int
    ip: str
    port: int


class _Tcp:
    def __init__(self, host_ns: str | None, target: Target) -> None:
        self.host_ns, self.target = host_ns, target
        self.listener: socket.socket | None = None
        self.acceptor: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.quiet_until = 0.0  # time.monotonic() before which no failure (out of descriptors) is logged again

    async def start(self, sock: socket.socket) -> None:
        sock.listen(128)
        self.listener = sock
        self.acceptor = asyncio.create_task(self._serve(sock))

    async def _serve(self, sock: socket.socket) -> None:
        """Accept clients until closed.  Accepted here, not by ``asyncio.start_server``: each
        client's socket is lifted above FD_SETSIZE (:mod:`libnet.kernel.fds`), or up to
        MAX_CONNECTIONS of them took the low numbers kept for libnftables."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except (ConnectionAbortedError, InterruptedError):
                continue
            except OSError as exc:  # EMFILE/ENFILE/ENOBUFS: the client waits in the backlog meanwhile
                self._say(f"accept failed: {exc}")  # not at every ACCEPT_BACKOFF
                await asyncio.sleep(ACCEPT_BACKOFF)
                continue
            if len(self.tasks) >= MAX_CONNECTIONS:
                conn.close()
                continue
            try:
                conn = fds.lift(conn)
                conn.setblocking(False)
            except OSError:
                conn.close()
                continue
            task = asyncio.create_task(self._accept(conn))
            self.tasks.add(task)  # counted from now on, not from its first step
            task.add_done_callback(self.tasks.discard)

    async def _accept(self, conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn)
        except OSError:
            conn.close()
            return
        try:
            await self._relay(reader, writer)
        finally:
            writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        t = self.target
        try:
            up = await asyncio.wrap_future(netns.open_socket_future(self.host_ns, socket.AF_INET6, socket.SOCK_STREAM))
        except OSError as exc:  # EMFILE: the accept took the last descriptor; the client is closed
            self._say(f"no socket to [{t.ip}]:{t.port}: {exc}")  # not once per client
            return
        up = fds.lift(up)  # one per connection: up to MAX_CONNECTIONS (libnet.kernel.fds)
        up.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(up, (t.ip, t.port)), CONNECT_TIMEOUT)
            up_reader, up_writer = await asyncio.open_connection(sock=up)
        except (TimeoutError, OSError) as exc:
            up.close()
            log.debug("relay [::1]:%d -> [%s]:%d: %s", t.host_port, t.ip, t.port, exc)
            return
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            up_writer.close()

    def _say(self, failure: str) -> None:
        """Log ``failure`` (out of descriptors) once a minute at most: it repeats while it lasts."""
        now = time.monotonic()
        if now >= self.quiet_until:
            log.warning("relay [::1]:%d: %s", self.target.host_port, failure)
            self.quiet_until = now + 60.0

    async def close(self) -> None:
        if self.acceptor is not None:
            self.acceptor.cancel()
            with contextlib.suppress(BaseException):
                await self.acceptor
        if self.listener is not None:
            self.listener.close()
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(BaseException):
                await task


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy until end of stream, then half-close; errors end the copy."""
    try:
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
    except (OSError, ConnectionError):
        dst.close()


class _Udp(asyncio.DatagramProtocol):
    """``[::1]:port`` -> container, one connected upstream socket per client address."""

    def __init__(self, host_ns: str | None, target: Target) -> None:
        self.host_ns, self.target = host_ns, target
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[Address, tuple[asyncio.DatagramTransport, list[float]]] = {}
        self.opening: dict[Address, asyncio.Future[None]] = {}  # first datagram seen, upstream being opened
        self.sweeper: asyncio.Task[None] | None = None

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self.sweeper = asyncio.create_task(self._sweep())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        flow = self.flows.get(addr)
        if flow is not None:
            flow[1][0] = time.monotonic()
            flow[0].sendto(data)
        elif addr not in self.opening and len(self.flows) + len(self.opening) < MAX_FLOWS:
            task = asyncio.ensure_future(self._open(addr, data))
            self.opening[addr] = task
            task.add_done_callback(lambda _: self.opening.pop(addr, None))

    async def _open(self, addr: Address, first: bytes) -> None:
        t = self.target
        try:
            up = await asyncio.wrap_future(netns.open_socket_future(self.host_ns, socket.AF_INET6, socket.SOCK_DGRAM))
            up = fds.lift(up)  # one per client, up to MAX_FLOWS, for UDP_IDLE s (libnet.kernel.fds)
            up.setblocking(False)
            up.connect((t.ip, t.port))
        except OSError as exc:
            log.debug("relay udp [::1]:%d -> [%s]:%d: %s", t.host_port, t.ip, t.port, exc)
            return
        if self.transport is None or self.transport.is_closing():
            up.close()
            return
        seen = [time.monotonic()]
        back = self.transport

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, _: Address) -> None:
                seen[0] = time.monotonic()
                back.sendto(data, addr)

        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Back, sock=up)
        self.flows[addr] = (transport, seen)
        transport.sendto(first)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(UDP_IDLE / 3)
            now = time.monotonic()
            for addr, (transport, seen) in list(self.flows.items()):
                if now - seen[0] > UDP_IDLE:
                    transport.close()
                    del self.flows[addr]

    async def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
        for task in list(self.opening.values()):
            task.cancel()
        for transport, _ in self.flows.values():
            transport.close()
        self.flows.clear()
        if self.transport is not None:
            self.transport.close()


class Relays:
    """The relays of one driver, grouped by key (an endpoint id)."""

    def __init__(self, host_ns: str | None) -> None:
        self.host_ns = host_ns
        self._groups: dict[str, dict[Target, _Tcp | _Udp]] = {}

    def keys(self) -> set[str]:
        return {k for k, group in self._groups.items() if group}

    def targets(self, key: str) -> set[Target]:
        return set(self._groups.get(key, {}))

    async def start(self, key: str, targets: list[Target]) -> None:
        """Run exactly ``targets`` under ``key`` (others of the key stop).  All
        or nothing: ``Conflict`` if ``[::1]:port`` is taken on the host."""
        group = self._groups.setdefault(key, {})
        for target in set(group) - set(targets):
            await group.pop(target).close()
        started: list[Target] = []
        try:
            for target in targets:
                if target not in group:
                    group[target] = await self._open(target)
                    started.append(target)
        except BaseException:
            for target in started:
                await group.pop(target).close()
            raise
        finally:
            if not group:
                self._groups.pop(key, None)

    async def _open(self, target: Target) -> _Tcp | _Udp:
        kind = socket.SOCK_STREAM if target.protocol == "tcp" else socket.SOCK_DGRAM
        sock = await asyncio.wrap_future(netns.open_socket_future(self.host_ns, socket.AF_INET6, kind))
        try:
            sock = fds.lift(sock)  # kept as long as the port is published (libnet.kernel.fds)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((LOOPBACK, target.host_port))
            sock.setblocking(False)
            relay: _Tcp | _Udp = (
                _Tcp(self.host_ns, target) if kind == socket.SOCK_STREAM else _Udp(self.host_ns, target)
            )
            await relay.start(sock)
        except OSError as exc:
            sock.close()
            what = f"[::1]:{target.host_port}/{target.protocol}"
            if exc.errno == errno.EADDRINUSE:
                raise Conflict(f"{what} is in use by a process on this host", port=target.host_port) from None
            raise translate(exc, f"relay {what}", port=target.host_port) from None
        return relay

    async def stop(self, key: str) -> None:
        """Stop the relays under ``key`` (none is fine)."""
        for relay in self._groups.pop(key, {}).values():
            await relay.close()

    async def close(self) -> None:
        for key in list(self._groups):
            await self.stop(key)
