"""Sends the questions libnet does not answer to the upstream resolvers.

Upstreams come from the host's resolv.conf (read again when it changes), from
configuration (``dns_upstreams``), or per sandbox (``--dns``).  Every form a
resolv.conf or the setting can hold is accepted: IPv4, IPv6, IPv6 link-local
with its zone (``fe80::1%eth0``, the zone looked up in the namespace the query
leaves from), ``host:port`` and ``[v6]:port`` (setting only: resolv.conf has no
ports), ``nameserver`` lines with trailing words or comments, any number of
nameservers (glibc uses the first 3; libnet tries them all in order, as
Docker's embedded server does).

Queries leave from the *host's* namespace, so an upstream on the host's
loopback (systemd-resolved's 127.0.0.53) works, which it never does from
inside a container; Docker forwards to such an upstream from the host too.

No upstream at all (a resolv.conf without nameservers, nothing configured):
every forwarded name gets SERVFAIL and one warning is logged.  libnet never
falls back to a public resolver (Docker falls back to 8.8.8.8): a query must
not leave for the internet without the operator having said so.

Per upstream a timeout (default 2 s), then the next; SERVFAIL when all
failed.  Why an upstream failed (timeout, refused, unreachable, bad zone) is
logged once per upstream as a warning, and again only after it answered in
between.  At most ``max_inflight`` queries (default 1024) are forwarded at a
time; beyond that the answer is SERVFAIL at once rather than a growing queue
(Docker's cap made clients wait into their own timeouts).  A truncated UDP
answer is passed on as it is, so the client retries over TCP, which is
forwarded over TCP.

Answers are kept in a shared :class:`~libnet.dns.cache.AnswerCache` (see
there), flushed when the host's upstreams change.

Each query goes out on its own socket (a fresh random source port) with a
fresh random ID, connected to the upstream, and only an answer with that ID
is accepted: an off-path spoofer has to guess both.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import ipaddress
import logging
import re
import secrets
import socket
import struct
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from dnslib import QTYPE, DNSRecord

from libnet.dns.cache import _OPT, MAX_NEGATIVE_TTL, MAX_TTL, AnswerCache, Entry, question_end, records
from libnet.dns.resolver import servfail
from libnet.dns.stats import DnsStats
from libnet.kernel import netns

log = logging.getLogger("libnet.dns.forwarder")
DEFAULT_TIMEOUT = 2.0
DEFAULT_MAX_INFLIGHT = 1024
DEFAULT_CACHE_SIZE = 10000
RECHECK = 1.0  # seconds between looks at the host's upstreams (resolv.conf)
_SIOCGIFINDEX = 0x8933

Upstream = tuple[str, int]  # ("198.51.100.53" | "2001:db8::53" | "fe80::1%eth0", port)


def parse_upstream(text: str) -> Upstream:
    """``"198.51.100.53"``, ``"198.51.100.53:5353"``, ``"2001:db8::53"``,
    ``"[2001:db8::53]:5353"``, ``"fe80::1%eth0"`` or ``"[fe80::1%eth0]:5353"``;
    ValueError (with the reason) for anything else."""
    text = text.strip()
    host, port = text, 53
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError("expected [IPv6] or [IPv6]:PORT")
        if rest:
            port = _port(rest[1:])
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = _port(p)
    addr, pct, zone = host.partition("%")
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise ValueError(f"{addr!r} is not an IP address (upstreams are addresses, not names)") from None
    if ip.is_unspecified or ip.is_multicast:
        raise ValueError(f"{ip} cannot be a DNS server")
    if pct:
        if ip.version == 4:
            raise ValueError("a zone (%IFACE) belongs to IPv6 addresses only")
        if _ZONE.fullmatch(zone) is None:
            raise ValueError(f"bad zone {zone!r}: expected an interface name or index")
        return f"{ip}%{zone}", port
    if ip.version == 6 and ip.is_link_local:
        raise ValueError(f"link-local {ip} needs a zone, the interface it is reached on (like {ip}%eth0)")
    return str(ip), port


#: an interface name as the kernel allows it in practice (1-15 bytes, no '/', ':', spaces) or an index
_ZONE = re.compile(r"[A-Za-z0-9_.@-]{1,15}")


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise ValueError(f"port {text!r} is not 1..65535")
    return int(text)


def parse_resolv_conf(text: str) -> tuple[list[Upstream], list[str]]:
    """The ``nameserver`` addresses of a resolv.conf in order, and why the
    lines that were not used were skipped.  Comment lines (``#``, ``;``),
    other keywords (``search``, ``options``...) and trailing words or
    comments after the address are ignored, as glibc does."""
    out: list[Upstream] = []
    problems = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 1 or words[0] != "nameserver":
            continue
        if len(words) < 2:
            problems.append(f"{line.strip()!r}: no address")
            continue
        word = words[1]
        for mark in "#;":  # "nameserver 198.51.100.53#comment": glibc would drop it; be kind
            word = word.split(mark, 1)[0]
        try:
            up = parse_upstream(word)
        except ValueError as exc:
            problems.append(f"{line.strip()!r}: {exc}")
            continue
        if up not in out:
            out.append(up)
    return out, problems


def upstreams_from_resolv_conf(text: str) -> list[Upstream]:
    """The ``nameserver`` addresses of a resolv.conf, in order (bad lines skipped)."""
    return parse_resolv_conf(text)[0]


def udp_limit(request: DNSRecord) -> int:
    """The largest UDP answer the client accepts: 512, or its EDNS0 size (at most 4096)."""
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return max(512, min(int(rr.rclass), 4096))
    return 512


@dataclass
class ForwarderStats:
    forwarded: int = 0  # answers an upstream gave
    cached: int = 0  # answers from the cache
    misses: int = 0  # cacheable questions not in the cache
    failed: int = 0  # every upstream failed or timed out: SERVFAIL
    rejected: int = 0  # over the in-flight bound: SERVFAIL at once
    no_upstream: int = 0  # no upstream known: SERVFAIL
    #: "host:port" -> answers that upstream failed to give (timeout, refused, unreachable...)
    upstream_failures: dict[str, int] = field(default_factory=dict)
    #: "host:port" -> answers it gave
    upstream_answers: dict[str, int] = field(default_factory=dict)


def show(up: Upstream) -> str:
    host, port = up
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Forwarder:
    """See the module docstring.  ``upstreams`` (the host's) is called per query (cheap: it caches)."""

    def __init__(
        self,
        upstreams: Callable[[], list[Upstream]],
        netns_name: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        cache_size: int = DEFAULT_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstreams, self.netns, self.timeout, self.max_inflight = upstreams, netns_name, timeout, max_inflight
        #: one client's (sandbox's) share of the bound: a quarter, at least 16
        self.max_inflight_per_client = max(16, max_inflight // 4)
        self.inflight = 0
        self._inflight_by: dict[str, int] = {}
        self.stats = ForwarderStats()
        self.cache = AnswerCache(cache_size)
        self.clock = clock
        #: the host's DNS counters (libnet.dns.stats), when the embedded DNS gives them
        self.dns_stats: DnsStats | None = None
        self._host_upstreams: tuple[Upstream, ...] | None = None
        self._failing: set[str] = set()  # upstreams whose failure was logged and that did not answer since
        self._warned_none = False
        self._recheck = 0.0

    # counters as plain attributes (for /metrics)
    @property
    def forwarded(self) -> int:
        return self.stats.forwarded

    @property
    def cached(self) -> int:
        return self.stats.cached

    @property
    def upstream_failures(self) -> dict[str, int]:
        return self.stats.upstream_failures

    def current(self, upstreams: tuple[Upstream, ...] | None = None) -> tuple[Upstream, ...]:
        """The upstreams a query goes to: ``upstreams`` (a sandbox's own), else the
        host's, looked at again at most every :data:`RECHECK` seconds; the cache is flushed
        when they changed."""
        if upstreams:
            return upstreams
        now = self.clock()
        if now < self._recheck and self._host_upstreams is not None:
            return self._host_upstreams
        self._recheck = now + RECHECK
        host = tuple(self.upstreams())
        if host != self._host_upstreams:
            if self._host_upstreams is not None:
                log.info("DNS upstreams changed to %s: forwarded-answer cache flushed", [show(u) for u in host])
                self.cache.flush()
            self._host_upstreams = host
            self._warned_none = False
        return host

    def lookup(
        self, request: DNSRecord, query: bytes, ups: tuple[Upstream, ...], tcp: bool
    ) -> tuple[Hashable | None, int, Entry | None]:
        """(cache key, question end, entry) of ``query``; key None when it cannot be cached."""
        qend = question_end(query)
        if qend is None or self.cache.size <= 0:
            return None, 0, None
        edns = do = False
        for rr in request.ar:
            if rr.rtype == QTYPE.OPT:
                edns, do = True, bool(rr.ttl & 0x8000)
        key = AnswerCache.key(ups, query, qend, edns, do)
        entry = self.cache.get(key, self.clock())
        if entry is not None and not tcp and len(entry.wire) > udp_limit(request):
            entry = None  # too large for this client over UDP: ask upstream (it sets TC)
        return key, qend, entry

    def from_cache(
        self, request: DNSRecord, query: bytes, upstreams: tuple[Upstream, ...] | None = None
    ) -> tuple[bytes | None, Entry | None]:
        """A UDP answer from the cache at once (answer, entry), or (None, None)."""
        ups = self.current(upstreams)
        if not ups:
            return None, None
        _, _, entry = self.lookup(request, query, ups, False)
        if entry is None:
            return None, None
        answer = entry.reply(query, self.clock())
        if answer is None:
            return None, None
        self.hit(fast=True)
        return answer, entry

    def hit(self, fast: bool) -> None:
        """Count an answer from the cache; ``fast``: given by the server without :meth:`forward`."""
        self.stats.cached += 1
        if self.dns_stats is not None:
            self.dns_stats.cached += 1
            if fast:
                self.dns_stats.forwarded += 1

    async def forward(
        self,
        request: DNSRecord,
        query: bytes,
        tcp: bool = False,
        upstreams: tuple[Upstream, ...] | None = None,
        client: str = "",
    ) -> bytes:
        """The answer to ``query`` (the client's bytes) with the client's ID: from the
        cache, else from the first upstream that gives a valid answer.  ``client``
        (the sandbox) has its own share of the in-flight bound, so one sandbox
        asking slow names cannot starve the others."""
        ups = self.current(upstreams)
        if not ups:
            self.stats.no_upstream += 1
            if not self._warned_none:
                self._warned_none = True
                log.warning(
                    "DNS: no upstream resolver (no nameserver in the host's resolv.conf, no dns_upstreams): "
                    "names libnet does not know get SERVFAIL; libnet never falls back to a public resolver"
                )
            return bytes(servfail(request).pack())
        key, qend, entry = self.lookup(request, query, ups, tcp)
        if entry is not None:
            answer = entry.reply(query, self.clock())
            if answer is not None:
                self.hit(fast=False)
                return answer
        if key is not None:
            self.stats.misses += 1
        mine = self._inflight_by.get(client, 0)
        if self.inflight >= self.max_inflight or mine >= self.max_inflight_per_client:
            self.stats.rejected += 1
            return bytes(servfail(request).pack())
        self.inflight += 1
        self._inflight_by[client] = mine + 1
        try:
            qend = qend or question_end(query) or 0
            for up in ups:
                try:
                    ask = self._tcp if tcp else self._udp
                    answer = await asyncio.wait_for(ask(up, query), self.timeout)
                    answer = checked(answer, query, qend)
                except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError) as exc:
                    self._failed(up, exc)
                    continue
                self._answered(up)
                if key is not None:
                    self.cache.put(key, answer, qend, self.clock())
                if not tcp and len(answer) > udp_limit(request):  # the upstream ignored the client's size
                    return truncated(query, qend)
                return query[:2] + answer[2:]
            self.stats.failed += 1
            return bytes(servfail(request).pack())
        finally:
            self.inflight -= 1
            left = self._inflight_by[client] - 1
            if left:
                self._inflight_by[client] = left
            else:
                del self._inflight_by[client]

    def _answered(self, up: Upstream) -> None:
        self.stats.forwarded += 1
        name = show(up)
        self.stats.upstream_answers[name] = self.stats.upstream_answers.get(name, 0) + 1
        if name in self._failing:
            self._failing.discard(name)
            log.info("DNS upstream %s answers again", name)

    def _failed(self, up: Upstream, exc: BaseException) -> None:
        name = show(up)
        self.stats.upstream_failures[name] = self.stats.upstream_failures.get(name, 0) + 1
        if self.dns_stats is not None:
            self.dns_stats.upstream_failed(*up)
        if name in self._failing:
            log.debug("DNS upstream %s: %s", name, _why(exc, self.timeout))
            return
        self._failing.add(name)
        where = f"namespace {self.netns}" if self.netns else "the host's namespace"
        log.warning(
            "DNS upstream %s failed (%s, asked from %s); trying the next, if any (logged once until it answers)",
            name,
            _why(exc, self.timeout),
            where,
        )

    async def _socket(self, host: str, kind: int) -> tuple[socket.socket, int]:
        """A socket in the forwarding namespace, and the scope id of a zoned address there."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = await asyncio.wrap_future(netns.open_socket_future(self.netns, family, kind))
        sock.setblocking(False)
        scope = 0
        if "%" in host:
            zone = host.partition("%")[2]
            try:
                scope = int(zone) if zone.isdigit() else _ifindex(sock, zone)
            except OSError as exc:
                sock.close()
                raise OSError(exc.errno, f"no interface {zone!r} for the zone") from None
        return sock, scope

    async def _connect(self, up: Upstream, kind: int) -> socket.socket:
        host, port = up
        sock, scope = await self._socket(host, kind)
        try:
            addr = (host.partition("%")[0], port, 0, scope) if sock.family == socket.AF_INET6 else (host, port)
            await asyncio.get_running_loop().sock_connect(sock, addr)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _udp(self, up: Upstream, query: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        sock = await self._connect(up, socket.SOCK_DGRAM)
        try:
            qid = secrets.token_bytes(2)
            await loop.sock_sendall(sock, qid + query[2:])
            while True:  # connected: only the upstream's datagrams arrive; the ID must match too
                data = await loop.sock_recv(sock, 65535)
                if len(data) >= 12 and data[:2] == qid and data[2] & 0x80:
                    return data
        finally:
            sock.close()

    async def _tcp(self, up: Upstream, query: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        sock = await self._connect(up, socket.SOCK_STREAM)
        try:
            qid = secrets.token_bytes(2)
            await loop.sock_sendall(sock, struct.pack("!H", len(query)) + qid + query[2:])
            (size,) = struct.unpack("!H", await _recv_exactly(loop, sock, 2))
            data = await _recv_exactly(loop, sock, size)
            if len(data) < 12 or data[:2] != qid:
                raise ValueError("an answer to another question")
            return data
        finally:
            sock.close()


_SERVFAIL, _REFUSED = 2, 5


def checked(answer: bytes, query: bytes, qend: int) -> bytes:
    """An upstream's answer, if it is a usable answer to ``query``: ValueError
    (that upstream failed, the next is tried) for a message that does not parse
    (cut short, garbage, a compression loop), answers another question, or
    says SERVFAIL/REFUSED (Docker's embedded server moves on to the next server
    too).  TTLs with the top bit set are 0 (RFC 2181 section 8); no TTL is
    passed on longer than the cache would keep the answer (a day; 3 hours for
    negative answers, RFC 2308 section 5)."""
    try:
        parsed = DNSRecord.parse(answer)
    except Exception as exc:  # dnslib raises its own errors, struct's, IndexError...
        raise ValueError(f"an answer that does not parse ({type(exc).__name__})") from None
    if len(parsed.questions) != 1 or (qend and answer[12:qend].lower() != query[12:qend].lower()):
        raise ValueError("an answer to another question")
    rcode = answer[3] & 0xF
    if rcode in (_SERVFAIL, _REFUSED):
        raise ValueError("answered SERVFAIL" if rcode == _SERVFAIL else "answered REFUSED")
    if not qend:
        return answer
    try:
        rrs = records(answer, qend)
    except (ValueError, IndexError, struct.error):
        raise ValueError("an answer whose records do not parse") from None
    cap = MAX_TTL if rcode == 0 and any(section == 0 for section, *_ in rrs) else MAX_NEGATIVE_TTL
    patched: bytearray | None = None
    for _, rtype, off, ttl, _ in rrs:
        fixed = 0 if ttl >= 0x80000000 else min(ttl, cap)
        if rtype != _OPT and fixed != ttl:
            patched = patched or bytearray(answer)
            struct.pack_into("!I", patched, off, fixed)
    return bytes(patched) if patched is not None else answer


def truncated(query: bytes, qend: int) -> bytes:
    """A truncated answer (TC set, the question only) telling the client to ask over TCP."""
    end = qend or len(query)
    flags = (query[2] | 0x80 | 0x02, query[3] & 0x10 | 0x80)  # QR, TC, RD kept; RA, CD kept
    return query[:2] + bytes(flags) + b"\x00\x01\x00\x00\x00\x00\x00\x00" + query[12:end]


def _ifindex(sock: socket.socket, name: str) -> int:
    """The index of interface ``name`` in the socket's own namespace (not the caller's)."""
    req = struct.pack("16si", name.encode()[:15], 0)
    return int(struct.unpack("16si", fcntl.ioctl(sock.fileno(), _SIOCGIFINDEX, req))[1])


def _why(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: nothing listens there"
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return f"unreachable: {exc.strerror}"
    if isinstance(exc, OSError) and exc.errno == errno.EINVAL:
        return f"invalid address here: {exc.strerror}"
    return str(exc) or type(exc).__name__


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, n - len(buf))
        if not chunk:
            raise asyncio.IncompleteReadError(buf, n)
        buf += chunk
    return buf
