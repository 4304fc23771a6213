"""Sends the questions libnet does not answer to the upstream resolvers.

Upstreams come from the host's resolv.conf (read again when it changes) or
from configuration.  Queries leave from the *host's* namespace, so an
upstream on the host's loopback (systemd-resolved's 127.0.0.53) works, which
it never did from inside a container.  Per upstream a timeout (default 2 s),
then the next; SERVFAIL when all failed.  At most ``max_inflight`` queries
(default 1024) are forwarded at a time; beyond that the answer is SERVFAIL
at once rather than a growing queue (Docker's cap made clients wait into
their own timeouts).  A truncated UDP answer is passed on as it is, so the
client retries over TCP, which is forwarded over TCP.

Each query goes out on its own socket (a fresh random source port) with a
fresh random ID, connected to the upstream, and only an answer with that ID
is accepted: an off-path spoofer has to guess both.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from dnslib import DNSRecord

from libnet.dns.resolver import servfail
from libnet.kernel import netns

log = logging.getLogger("libnet.dns.forwarder")
DEFAULT_TIMEOUT = 2.0
DEFAULT_MAX_INFLIGHT = 1024


def parse_upstream(text: str) -> tuple[str, int]:
    """``"198.51.100.53"``, ``"198.51.100.53:5353"``, ``"2001:db8::53"`` or ``"[2001:db8::53]:5353"``."""
    text = text.strip()
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = int(p)
    host = host.split("%")[0]
    ipaddress.ip_address(host)  # ValueError for a name: upstreams are addresses
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return host, port


def upstreams_from_resolv_conf(text: str) -> list[tuple[str, int]]:
    """The ``nameserver`` addresses of a resolv.conf, in order (bad lines skipped)."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            with contextlib.suppress(ValueError):
                out.append(parse_upstream(words[1]))
    return out


@dataclass
class ForwarderStats:
    forwarded: int = 0
    failed: int = 0  # every upstream failed or timed out: SERVFAIL
    rejected: int = 0  # over the in-flight bound: SERVFAIL at once


class Forwarder:
    """See the module docstring.  ``upstreams`` is called per query (cheap: it caches)."""

    def __init__(
        self,
        upstreams: Callable[[], list[tuple[str, int]]],
        netns_name: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
    ) -> None:
        self.upstreams, self.netns, self.timeout, self.max_inflight = upstreams, netns_name, timeout, max_inflight
        self.inflight = 0
        self.stats = ForwarderStats()

    async def forward(self, request: DNSRecord, query: bytes, tcp: bool = False) -> bytes:
        """The upstream's answer to ``query`` (the client's bytes), with the client's ID."""
        if self.inflight >= self.max_inflight:
            self.stats.rejected += 1
            return bytes(servfail(request).pack())
        self.inflight += 1
        try:
            for host, port in self.upstreams():
                try:
                    ask = self._tcp if tcp else self._udp
                    answer = await asyncio.wait_for(ask(host, port, query), self.timeout)
                except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError) as exc:
                    log.debug("upstream %s:%d: %s", host, port, exc or type(exc).__name__)
                    continue
                self.stats.forwarded += 1
                return query[:2] + answer[2:]
            self.stats.failed += 1
            return bytes(servfail(request).pack())
        finally:
            self.inflight -= 1

    async def _socket(self, host: str, kind: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = await asyncio.wrap_future(netns.open_socket_future(self.netns, family, kind))
        sock.setblocking(False)
        return sock

    async def _udp(self, host: str, port: int, query: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        sock = await self._socket(host, socket.SOCK_DGRAM)
        try:
            await loop.sock_connect(sock, (host, port))
            qid = secrets.token_bytes(2)
            await loop.sock_sendall(sock, qid + query[2:])
            while True:  # connected: only the upstream's datagrams arrive; the ID must match too
                data = await loop.sock_recv(sock, 65535)
                if len(data) >= 12 and data[:2] == qid and data[2] & 0x80:
                    return data
        finally:
            sock.close()

    async def _tcp(self, host: str, port: int, query: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        sock = await self._socket(host, socket.SOCK_STREAM)
        try:
            await loop.sock_connect(sock, (host, port))
            qid = secrets.token_bytes(2)
            await loop.sock_sendall(sock, struct.pack("!H", len(query)) + qid + query[2:])
            (size,) = struct.unpack("!H", await _recv_exactly(loop, sock, 2))
            data = await _recv_exactly(loop, sock, size)
            if len(data) < 12 or data[:2] != qid:
                raise ValueError("an answer to another question")
            return data
        finally:
            sock.close()


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, n - len(buf))
        if not chunk:
            raise asyncio.IncompleteReadError(buf, n)
        buf += chunk
    return buf
