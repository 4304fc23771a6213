"""The embedded DNS as one object: records, resolver, forwarder and server wired together.

The controller keeps the records (its endpoints, the overlay driver's remote
peers) and attaches each sandbox with the networks it is on; everything
else happens here.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from libnet.dns.forwarder import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_MAX_INFLIGHT,
    DEFAULT_TIMEOUT,
    Forwarder,
    Upstream,
    parse_resolv_conf,
    parse_upstream,
)
from libnet.dns.records import Records
from libnet.dns.resolver import DEFAULT_TTL, Resolver, ResolverConfig
from libnet.dns.server import DnsServer
from libnet.dns.stats import DnsStats
from libnet.errors import InvalidOption

ADDRESS = "127.0.0.11"
log = logging.getLogger("libnet.dns")


@dataclass
class DnsConfig:
    """Embedded DNS settings (all optional)."""

    enabled: bool = True
    #: TTL of libnet's own answers, seconds
    ttl: int = DEFAULT_TTL
    #: upstream resolvers ("198.51.100.53", "[2001:db8::53]:5353"); empty: the host's resolv.conf
    upstreams: list[str] = field(default_factory=list)
    #: seconds per upstream before the next is tried
    upstream_timeout: float = DEFAULT_TIMEOUT
    #: forwarded queries in flight at most; more get SERVFAIL at once
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    #: port of the listeners (53; tests and benchmarks may move it)
    port: int = 53
    #: forwarded answers kept (shared by the host's sandboxes, libnet.dns.cache); 0: no cache
    cache_size: int = DEFAULT_CACHE_SIZE

    def validate(self) -> None:
        for up in self.upstreams:
            try:
                parse_upstream(up)
            except ValueError as exc:
                raise InvalidOption(f"invalid DNS upstream {up!r}: {exc}", upstream=up) from None
        if not 0 <= self.ttl <= 2**31 - 1:
            raise InvalidOption("dns ttl must be 0..2147483647", ttl=str(self.ttl))
        if not self.upstream_timeout > 0 or not self.max_inflight > 0:
            raise InvalidOption("dns upstream_timeout and max_inflight must be positive")
        if not isinstance(self.cache_size, int) or not 0 <= self.cache_size <= 10_000_000:
            raise InvalidOption("dns cache_size must be 0..10000000 (0: no cache)", cache_size=str(self.cache_size))


class TimedForwarder(Forwarder):
    """The forwarder, counting what goes down the forwarding path and how long its answers take."""

    dns_stats: DnsStats  # always given here

    def __init__(self, *args: Any, stats: DnsStats, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dns_stats = stats

    async def forward(self, *args: Any, **kwargs: Any) -> bytes:
        started = time.perf_counter()
        self.dns_stats.forwarded += 1
        try:
            return await super().forward(*args, **kwargs)
        finally:
            self.dns_stats.forward_latency.observe(time.perf_counter() - started)


class EmbeddedDns:
    """See the module docstring.  ``stats``: counters for ``/metrics`` (:mod:`libnet.dns.stats`)."""

    def __init__(self, config: DnsConfig, host_ns: str | None, resolv_conf: str = "/etc/resolv.conf") -> None:
        config.validate()
        self.config = config
        self.records = Records()
        self.stats = DnsStats()
        self.resolver = Resolver(self.records, ResolverConfig(ttl=config.ttl), self.stats)
        self.forwarder = TimedForwarder(
            self._upstreams(resolv_conf),
            host_ns,
            config.upstream_timeout,
            config.max_inflight,
            cache_size=config.cache_size,
            stats=self.stats,
        )
        self.server = DnsServer(self.resolver, self.forwarder, ADDRESS, config.port)
        self.records.listeners.append(self.server.invalidate)

    def _upstreams(self, path: str) -> Callable[[], list[tuple[str, int]]]:
        if self.config.upstreams:
            fixed = [parse_upstream(u) for u in self.config.upstreams]
            return lambda: fixed
        # the host's file's mtime and upstreams, read again only when it changes
        seen: int | None = None
        upstreams: list[tuple[str, int]] = []

        def from_host() -> list[tuple[str, int]]:
            nonlocal seen, upstreams
            try:
                mtime = os.stat(path).st_mtime_ns
                if mtime != seen:
                    with open(path) as f:
                        found, skipped = parse_resolv_conf(f.read())
                        for why in skipped:  # once per change of the file
                            log.warning("DNS: %s: nameserver line not used: %s", path, why)
                        seen, upstreams = mtime, found
            except OSError:
                seen, upstreams = None, []
            return upstreams

        return from_host

    async def attach(
        self, sandbox_id: str, netns: str, view: frozenset[str], upstreams: list[str] | None = None
    ) -> None:
        """``upstreams``: the sandbox's own DNS servers (``--dns``); None or empty: the host's."""
        own: tuple[Upstream, ...] = tuple(parse_upstream(u) for u in upstreams or [])
        await self.server.attach(sandbox_id, netns, view, own or None)

    async def detach(self, sandbox_id: str) -> None:
        await self.server.detach(sandbox_id)

    async def close(self) -> None:
        await self.server.close()
