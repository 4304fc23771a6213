"""Upstreams in every form, reached from the right namespace, and per-sandbox DNS servers:
``dig`` inside sandboxes on test hosts.

h1 runs the controller; h3 is the "upstream" host, dnsmasq on every address of
its ``eth0`` (IPv4, IPv6, IPv6 link-local) answering upstream.example with
198.51.100.99; on h1's own loopback (127.0.0.53, where systemd-resolved sits)
another dnsmasq answers the same name with 198.51.100.98, so each answer says
which upstream gave it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import time

import pytest

from libnet import Controller
from libnet.dns.service import DnsConfig
from libnet.errors import BadRequest
from libnet.testing.hosts import Testbed, host_config, wait_until

pytestmark = pytest.mark.root

SILENT = "203.0.113.250"  # an underlay address no host has: queries to it are never answered
DNSMASQ = [
    "dnsmasq",
    "--keep-in-foreground",
    "--no-resolv",
    "--no-hosts",
    "--pid-file=",
    "--log-facility=-",
    "--local-ttl=60",
]


@pytest.fixture
def bed():
    with Testbed(3) as b:
        h1, up = b.hosts[0], b.hosts[2]
        b.spawn(up.ns, [*DNSMASQ, "--interface=eth0", "--bind-dynamic", "--address=/upstream.example/198.51.100.99"])
        b.spawn(
            h1.ns,
            [*DNSMASQ, "--bind-interfaces", "--listen-address=127.0.0.53", "--address=/upstream.example/198.51.100.98"],
        )
        assert wait_until(lambda: "198.51.100.99" in dig_sync(b, up.ns, "upstream.example", server=up.ipv4), 10)
        assert wait_until(lambda: "198.51.100.98" in dig_sync(b, h1.ns, "upstream.example", server="127.0.0.53"), 10)
        yield b


def dig_sync(bed: Testbed, ns: str, *args: str, server: str = "127.0.0.11") -> str:
    return bed.run(ns, ["dig", f"@{server}", "+time=3", "+tries=1", *args], timeout=15).stdout


async def dig(bed: Testbed, sb, *args: str) -> str:
    return await asyncio.to_thread(dig_sync, bed, os.path.basename(sb.netns), *args)


def answer(out: str) -> str:
    m = re.search(r"status: (\w+)", out)
    if m is None:
        return "no answer"
    if m.group(1) != "NOERROR":
        return m.group(1)
    a = re.search(r"upstream\.example\.\s+\d+\s+IN\s+A\s+(\S+)", out)
    return a.group(1) if a else "NOERROR, no A"


def link_local(bed: Testbed, host) -> str:
    """The host's fe80:: address on eth0 (once its DAD is done)."""
    found: list[str] = []

    def ready() -> bool:
        out = bed.run(host.ns, ["ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"]).stdout
        if "tentative" in out:
            return False
        found[:] = re.findall(r"inet6 (fe80::[0-9a-f:]+)/64", out)
        return bool(found)

    assert wait_until(ready, 10), "no link-local address on the upstream host"
    return found[0]


async def until(bed: Testbed, sb, expected: str, timeout: float = 10) -> str:
    """dig upstream.example until the answer is ``expected`` (the host's resolv.conf is
    looked at again within a second of a change); the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        got = answer(await dig(bed, sb, "upstream.example"))
        if got == expected or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.3)


async def test_every_upstream_form_of_the_hosts_resolv_conf(bed: Testbed, tmp_path, caplog) -> None:
    h1, up = bed.hosts[0], bed.hosts[2]
    resolv = tmp_path / "host-resolv.conf"
    ll = link_local(bed, up)
    resolv.write_text(f"# the host's\nnameserver {ll}%eth0   # link-local, with its zone\nsearch example.org\n")
    cfg = host_config(bed, h1, str(tmp_path))
    cfg = dataclasses.replace(cfg, resolv_conf=str(resolv), dns=DnsConfig(upstream_timeout=0.4))
    c = await Controller(cfg).start()
    try:
        await c.create_network("front", "bridge", ipv4_subnet="198.51.100.0/24", ipv6=False)
        sb = await c.create_sandbox(hostname="client")
        await c.connect("front", sb.id)

        # IPv6 link-local with a zone: before, the zone was dropped and every name got SERVFAIL
        assert await until(bed, sb, "198.51.100.99") == "198.51.100.99"
        forms = [
            (f"nameserver\t{up.ipv6}\t; IPv6, a trailing comment\n", "198.51.100.99"),
            # the host's loopback (systemd-resolved): reached from the host's namespace, not the sandbox's
            ("nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n", "198.51.100.98"),
            # more than 3 nameservers, the first ones dead
            (
                f"nameserver {SILENT}\nnameserver 203.0.113.251\nnameserver 203.0.113.252\nnameserver {up.ipv4}\n",
                "198.51.100.99",
            ),
        ]
        for text, expected in forms:
            resolv.write_text(text)
            assert await until(bed, sb, expected) == expected, text
        # a second ask comes from the forwarded-answer cache
        before = c.dns.forwarder.cached
        assert answer(await dig(bed, sb, "upstream.example")) == "198.51.100.99"
        assert c.dns.forwarder.cached > before

        # no nameserver at all: SERVFAIL, said once in the log; never a public resolver
        with caplog.at_level(logging.WARNING, "libnet.dns.forwarder"):
            resolv.write_text("search example.org\noptions ndots:1\n")
            assert await until(bed, sb, "SERVFAIL") == "SERVFAIL"
            assert answer(await dig(bed, sb, "upstream.example")) == "SERVFAIL"
        said = [r for r in caplog.records if "no upstream" in r.getMessage()]
        assert len(said) == 1
    finally:
        await c.close()


async def test_configured_ipv6_and_ported_upstreams(bed: Testbed, tmp_path) -> None:
    h1, up = bed.hosts[0], bed.hosts[2]
    cfg = host_config(bed, h1, str(tmp_path))
    cfg = dataclasses.replace(cfg, dns=DnsConfig(upstreams=[SILENT, f"[{up.ipv6}]:53"], upstream_timeout=0.4))
    c = await Controller(cfg).start()
    try:
        await c.create_network("front", "bridge", ipv4_subnet="198.51.100.0/24", ipv6=False)
        sb = await c.create_sandbox(hostname="client")
        await c.connect("front", sb.id)
        assert answer(await dig(bed, sb, "upstream.example")) == "198.51.100.99"
        assert c.dns.forwarder.upstream_failures.get(f"{SILENT}:53", 0) >= 1
    finally:
        await c.close()


async def test_a_sandbox_with_its_own_dns_servers_search_and_options(bed: Testbed, tmp_path) -> None:
    h1, up = bed.hosts[0], bed.hosts[2]
    cfg = host_config(bed, h1, str(tmp_path))
    cfg = dataclasses.replace(cfg, dns=DnsConfig(upstreams=[SILENT], upstream_timeout=0.5))
    c = await Controller(cfg).start()
    try:
        await c.create_network("front", "bridge", ipv4_subnet="198.51.100.0/24", ipv6=False)
        before = await c.sandboxes()
        for bad in ({"dns": ["dns.example"]}, {"dns_search": ["-x.example"]}, {"dns_options": ["ndots:99"]}):
            with pytest.raises(BadRequest):
                await c.create_sandbox(hostname="bad", **bad)
        assert await c.sandboxes() == before  # nothing made, no namespace left

        own = await c.create_sandbox(
            hostname="own", dns=[up.ipv6], dns_search=["svc.example"], dns_options=["ndots:2", "rotate"]
        )
        plain = await c.create_sandbox(hostname="plain")
        for sb in (own, plain):
            await c.connect("front", sb.id)
        assert answer(await dig(bed, own, "upstream.example")) == "198.51.100.99"
        assert answer(await dig(bed, plain, "upstream.example")) == "SERVFAIL"  # the host's (silent) upstream

        with open(f"{tmp_path}/{h1.name}/sandboxes/{own.id}/resolv.conf") as f:
            lines = [line for line in f.read().splitlines() if not line.startswith("#")]
        assert lines == ["nameserver 127.0.0.11", "search svc.example", "options ndots:2 rotate"]
        assert (await c.sandbox(own.id)).dns == [up.ipv6]
    finally:
        await c.close()
