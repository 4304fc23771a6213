"""Counters of the embedded DNS, one :class:`DnsStats` per host (``EmbeddedDns.stats``).

The agent's ``/metrics`` reads them together with the server's and the
forwarder's own stats objects (``DnsServer.stats``: answered, answer-cache
hits, malformed, dropped; ``Forwarder.stats``: upstream answers, all
upstreams failed, over the in-flight bound).  Who counts what here:

- the resolver: ``nxdomain``, ``refused`` (an internal-only sandbox asked for
  an outside name), ``formerr`` (a well-formed message that is not a valid
  query: two questions, two OPT records, ...), ``notimp``, ``badvers``.
  REFUSED and FORMERR answers are never kept in the server's answer cache, so
  each one passes the resolver and is counted exactly once; an NXDOMAIN answer
  is, so ``nxdomain`` counts the ones computed (repeats are answer-cache hits);
- :class:`libnet.dns.service.TimedForwarder`: ``forwarded`` (questions sent
  down the forwarding path) and ``forward_latency``;
- the forwarder, once it has the hooks (fields left here for it): ``cached``
  (forwarded questions answered from the shared forward cache) and
  ``upstream_failures`` (per ``"host:port"``: timeouts, errors, SERVFAIL).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

#: upper bounds (seconds) of the latency histogram's buckets; +Inf is implied
LATENCY_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class Histogram:
    """A Prometheus-style histogram: per-bucket counts (not cumulative), sum and count."""

    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, count of observations <= le), ..., ("+Inf", count)]``."""
        out, running = [], 0
        for bound, n in zip((*(repr(b) for b in self.buckets), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


@dataclass
class DnsStats:
    """See the module docstring."""

    # decided by the resolver
    nxdomain: int = 0
    refused: int = 0
    formerr: int = 0
    notimp: int = 0
    badvers: int = 0
    # the forwarding path
    forwarded: int = 0
    cached: int = 0
    upstream_failures: dict[str, int] = field(default_factory=dict)
    forward_latency: Histogram = field(default_factory=Histogram)

    def upstream_failed(self, host: str, port: int) -> None:
        """One failed attempt at an upstream (for the forwarder to call)."""
        key = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.upstream_failures[key] = self.upstream_failures.get(key, 0) + 1
