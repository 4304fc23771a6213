"""Prometheus metrics of the agent (prometheus-client), one registry per agent."""

from __future__ import annotations

from collections import Counter as Tally
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


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
        self.repaired = Counter(
            "libnet_reconcile_repairs_total", "Repairs made by reconcile passes", ["kind"], registry=r
        )

    def observe(self, method: str, route: str, code: int, seconds: float) -> None:
        self.latency.labels(method, route, str(code)).observe(seconds)

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
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
