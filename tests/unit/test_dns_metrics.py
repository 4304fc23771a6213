"""DNS counters on the agent's /metrics, from the embedded DNS's stats objects (no sockets)."""

from __future__ import annotations

import asyncio

from dnslib import DNSRecord
from prometheus_client import CollectorRegistry, generate_latest

from agent.metrics import DnsCollector
from libnet.dns.service import DnsConfig, EmbeddedDns


def scrape(dns: EmbeddedDns | None) -> str:
    registry = CollectorRegistry()
    collector = DnsCollector()
    collector.dns = dns
    registry.register(collector)
    return generate_latest(registry).decode()


def test_dns_counters_and_latency() -> None:
    # no upstream at all (the host's resolv.conf is missing): forwarding fails at once, no socket
    dns = EmbeddedDns(DnsConfig(), None, resolv_conf="/nonexistent/resolv.conf")
    dns.records.set_network("n1", "front", ["198.51.100.0/24"])
    dns.records.set_network("n2", "sealed", ["198.51.101.0/24"], external=False)
    resolve = dns.resolver.resolve
    resolve(DNSRecord.question("nope.front"), frozenset({"n1"}))
    resolve(DNSRecord.question("example.com"), frozenset({"n2"}))
    resolve(DNSRecord.question("example.com"), frozenset({"n2"}))
    dns.server.stats.answered, dns.server.stats.cached, dns.server.stats.formerr = 7, 5, 2
    dns.stats.upstream_failed("198.51.100.53", 53)  # the forwarder's hook

    async def forward() -> bytes:
        q = DNSRecord.question("example.com")
        return await dns.forwarder.forward(q, bytes(q.pack()))

    asyncio.run(forward())
    text = scrape(dns)
    for line in (
        "libnet_dns_answered_locally_total 12.0",
        "libnet_dns_answer_cache_hits_total 5.0",
        "libnet_dns_nxdomain_total 1.0",
        "libnet_dns_refused_total 2.0",
        "libnet_dns_formerr_total 2.0",
        "libnet_dns_forwarded_total 1.0",
        "libnet_dns_forward_cache_hits_total 0.0",
        'libnet_dns_upstream_failures_total{upstream="198.51.100.53:53"} 1.0',
        'libnet_dns_forward_seconds_bucket{le="+Inf"} 1.0',
        "libnet_dns_forward_seconds_count 1.0",
    ):
        assert line in text, line
    assert scrape(None) == ""
