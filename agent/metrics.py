"""Prometheus metrics of the agent (prometheus-client), one registry per agent.

DNS (``libnet_dns_*``) comes from the embedded DNS's stats objects, read at
scrape time: :class:`libnet.dns.stats.DnsStats` (resolver outcomes, the
forwarding path), the server's and the forwarder's own counters.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from libnet.dns.service import EmbeddedDns


class DnsCollector(Collector):
    """``libnet_dns_*`` from the embedded DNS given to :meth:`Metrics.render` (none when DNS is off)."""

    def __init__(self) -> None:
        self.dns: EmbeddedDns | None = None

    def collect(self) -> Iterator[Metric]:
        dns = self.dns
        if dns is None:
            return
        st, server, fwd = dns.stats, dns.server.stats, dns.forwarder.stats

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"libnet_dns_{name}", doc, value=value)

        yield counter(
            "answered_locally",
            "Queries answered from libnet's records (any rcode), including answer-cache hits",
            server.answered + server.cached,
        )
        yield counter("answer_cache_hits", "Queries answered from the server's cache of encoded answers", server.cached)
        yield counter("nxdomain", "NXDOMAIN answers computed from libnet's records", st.nxdomain)
        yield counter("refused", "Queries refused: an internal-only sandbox asked for an outside name", st.refused)
        yield counter(
            "formerr", "Malformed queries and invalid messages (FORMERR or dropped)", server.formerr + st.formerr
        )
        yield counter("notimp", "Queries with an opcode or type libnet does not implement", st.notimp)
        yield counter("badvers", "Queries with an EDNS version above 0", st.badvers)
        yield counter("dropped", "Queries that hit an unexpected failure (answered SERVFAIL)", server.dropped)
        yield counter("forwarded", "Queries sent down the forwarding path (to the cache or an upstream)", st.forwarded)
        yield counter("forward_cache_hits", "Forwarded queries answered from the forward cache", st.cached)
        yield counter("upstream_answers", "Forwarded queries an upstream answered", fwd.forwarded)
        yield counter("forward_failures", "Forwarded queries every upstream failed (SERVFAIL)", fwd.failed)
        yield counter("forward_rejected", "Forwarded queries over the in-flight bound (SERVFAIL at once)", fwd.rejected)
        per_upstream = CounterMetricFamily(
            "libnet_dns_upstream_failures", "Failed attempts per upstream", labels=["upstream"]
        )
        for upstream, n in sorted(st.upstream_failures.items()):
            per_upstream.add_metric([upstream], n)
        yield per_upstream
        h = st.forward_latency
        yield HistogramMetricFamily(
            "libnet_dns_forward_seconds",
            "Time from a query entering the forwarding path to its answer",
            buckets=h.cumulative(),
            sum_value=h.total,
        )


class Metrics:
    """Gauges refreshed at scrape time; latencies and repairs counted as they happen."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.networks = Gauge("libnet_networks", "Networks by driver", ["driver"], registry=r)
        self.endpoints = Gauge("libnet_endpoints", "Endpoints by network", ["network"], registry=r)
        self.sandboxes = Gauge("libnet_sandboxes", "Sandboxes", registry=r)
        self.ipam_used = Gauge("libnet_ipam_pool_allocated", "Allocated addresses per IPAM pool", ["pool"], registry=r)
        self.ipam_size = Gauge("libnet_ipam_pool_size", "Usable addresses per IPAM pool", ["pool"], registry=r)
        self.members = Gauge("libnet_cluster_members", "Cluster members by status", ["status"], registry=r)
        self.latency = Histogram(
            "libnet_api_request_seconds",
            "API request latency",
            ["method", "route", "code"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        #: (method, route, code) -> its child of ``latency`` (routes are the app's templates: bounded)
        self._latency_of: dict[tuple[str, str, int], Any] = {}
        self.repaired = Counter(
            "libnet_reconcile_repairs_total", "Repairs made by reconcile passes", ["kind"], registry=r
        )
        self.dns = DnsCollector()
        r.register(self.dns)

    def observe(self, method: str, route: str, code: int, seconds: float) -> None:
        """One API request's latency.  The labelled histogram of each (method, route,
        code) is kept: ``labels()`` costs a lock and a tuple build per call, a tenth of
        a cached ``GET /v1/networks`` (issue 22)."""
        key = (method, route, code)
        child = self._latency_of.get(key)
        if child is None:
            child = self._latency_of[key] = self.latency.labels(method, route, str(code))
        child.observe(seconds)

    def repairs(self, report: Any) -> None:
        for kind in ("removed", "repaired"):
            n = len(getattr(report, kind))
            if n:
                self.repaired.labels(kind).inc(n)

    async def render(self, ctl: Any, nodes: list[dict[str, Any]]) -> tuple[bytes, str]:
        import ipaddress

        nets = await ctl.networks()
        self.networks.clear()
        for driver, n in Tally(nw.driver for nw in nets).items():
            self.networks.labels(driver).set(n)
        self.endpoints.clear()
        by_id = {nw.id: nw.name for nw in nets}
        for nid, n in Tally(e.network_id for e in await ctl.endpoints()).items():
            self.endpoints.labels(by_id.get(nid, nid[:12])).set(n)
        self.sandboxes.set(len(await ctl.sandboxes()))
        self.ipam_used.clear()
        self.ipam_size.clear()
        used = Tally(a.pool_id for a in await ctl.ipam.audit())
        for nw in nets:
            for pool, subnet in ((nw.ipv4_pool, nw.ipv4_subnet), (nw.ipv6_pool, nw.ipv6_subnet)):
                if pool and subnet:
                    net = ipaddress.ip_network(subnet)
                    self.ipam_used.labels(pool).set(used.get(pool, 0))
                    self.ipam_size.labels(pool).set(net.num_addresses - (2 if net.version == 4 else 1))
        self.members.clear()
        for status, n in Tally(m["status"] for m in nodes).items():
            self.members.labels(status).set(n)
        self.dns.dns = ctl.dns
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
