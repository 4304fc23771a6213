"""The embedded DNS end to end: ``dig`` inside sandboxes on test hosts.

h1 and h2 run controllers (bridge and overlay networks); h3 is the
"upstream" host running dnsmasq on its underlay address.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import time

import pytest

from libnet import Controller
from libnet.dns.service import DnsConfig
from libnet.testing.hosts import Testbed, host_config, wait_until

pytestmark = pytest.mark.root

SILENT = "203.0.113.250"  # an underlay address no host has: queries to it are never answered


@pytest.fixture
def bed():
    with Testbed(3) as b:
        up = b.hosts[2]
        b.spawn(
            up.ns,
            [
                "dnsmasq",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--pid-file=",
                "--bind-interfaces",
                f"--listen-address={up.ipv4}",
                "--address=/upstream.example/198.51.100.99",
                "--log-facility=-",
            ],
        )
        assert wait_until(lambda: "NOERROR" in dig_sync(b, up.ns, "upstream.example", server=up.ipv4), 10)
        yield b


def dig_sync(bed: Testbed, ns: str, *args: str, server: str = "127.0.0.11") -> str:
    return bed.run(ns, ["dig", f"@{server}", "+time=3", "+tries=1", *args], timeout=15).stdout


async def dig(bed: Testbed, sb, *args: str, server: str = "127.0.0.11") -> str:
    """dig inside the sandbox (on a thread: the event loop must keep serving)."""
    return await asyncio.to_thread(dig_sync, bed, os.path.basename(sb.netns), *args, server=server)


def status(out: str) -> str:
    m = re.search(r"status: (\w+)", out)
    return m.group(1) if m else "no answer"


def answers(out: str) -> list[str]:
    """The ANSWER section's records as "TYPE DATA"."""
    section = out.split(";; ANSWER SECTION:\n", 1)
    if len(section) < 2:
        return []
    rows = []
    for line in section[1].split("\n\n", 1)[0].splitlines():
        parts = line.split()
        rows.append(f"{parts[3]} {' '.join(parts[4:])}")
    return rows


@contextlib.asynccontextmanager
async def controller(bed: Testbed, host, tmp_path, **dns):
    cfg = host_config(bed, host, str(tmp_path))
    cfg = dataclasses.replace(cfg, dns=DnsConfig(**{"upstreams": [bed.hosts[2].ipv4], **dns}))
    c = await Controller(cfg).start()
    try:
        yield c
    finally:
        await c.close()


async def test_names_on_a_single_host(bed: Testbed, tmp_path) -> None:
    async with controller(bed, bed.hosts[0], tmp_path) as c:
        await c.create_network("front", "bridge", ipv4_subnet="198.51.100.0/26", ipv6_subnet="2001:db8:1::/64")
        await c.create_network("legacy", "bridge", ipv4_subnet="198.51.100.64/26", ipv6=False)
        await c.create_network("other", "bridge", ipv4_subnet="198.51.100.128/26", ipv6=False)
        sbs = {}
        for name, net, extra in (
            ("web1", "front", {"aliases": ["web"], "services": ["http:80/tcp"]}),
            ("web2", "front", {"aliases": ["web"], "services": ["http:80/tcp"]}),
            ("client", "front", {}),
            ("old", "legacy", {}),
            ("hidden", "other", {}),
        ):
            sbs[name] = await c.create_sandbox(hostname=name)
            await c.connect(net, sbs[name].id, **extra)
        client = sbs["client"]
        await c.connect("legacy", client.id)
        web1 = await c.endpoint("web1", "front")
        ip4, ip6 = web1.ipv4.split("/")[0], web1.ipv6.split("/")[0]

        out = await dig(bed, client, "web1")
        assert status(out) == "NOERROR" and answers(out) == [f"A {ip4}"] and " aa " in out.split("flags:")[1][:20]
        assert answers(await dig(bed, client, "web1", "AAAA")) == [f"AAAA {ip6}"]
        assert answers(await dig(bed, client, "web1.front")) == [f"A {ip4}"]
        assert answers(await dig(bed, client, "-x", ip4)) == ["PTR web1.front."]
        assert answers(await dig(bed, client, "-x", ip6)) == ["PTR web1.front."]
        out = await dig(bed, client, "_http._tcp.web", "SRV")
        assert sorted(answers(out)) == ["SRV 0 0 80 web1.front.", "SRV 0 0 80 web2.front."]
        assert f"web1.front.\t\t600\tIN\tA\t{ip4}" in out  # the targets' addresses come along

        # AAAA of a v4-only name: empty NOERROR, answered here (never forwarded)
        out = await dig(bed, client, "old", "AAAA")
        assert status(out) == "NOERROR" and answers(out) == []
        # a name of a network the sandbox is not on is not libnet's for it: forwarded, answered
        # like any unknown name (the upstream, dnsmasq without servers, refuses), telling nothing
        unknown = status(await dig(bed, client, "nobody-has-this-name"))
        assert unknown not in ("NOERROR", "no answer")
        assert status(await dig(bed, client, "hidden")) == unknown
        assert status(await dig(bed, client, "hidden.other")) == unknown
        assert status(await dig(bed, sbs["hidden"], "web1")) == unknown
        assert status(await dig(bed, client, "nobody.front")) == "NXDOMAIN"  # in its networks' domains: ours

        # an alias shared by two endpoints: both addresses, order shuffled per answer
        orders = set()
        for _ in range(12):
            orders.add(tuple(answers(await dig(bed, client, "web"))))
        assert {frozenset(o) for o in orders} == {
            frozenset({f"A {ip4}", f"A {(await c.endpoint('web2', 'front')).ipv4.split('/')[0]}"})
        }
        assert len(orders) == 2

        # forwarded to the upstream (dnsmasq in another host), and the IPv6 listener
        assert answers(await dig(bed, client, "upstream.example")) == ["A 198.51.100.99"]
        assert answers(await dig(bed, client, "web1", server="::1")) == [f"A {ip4}"]

        # resolv.conf points at the embedded server
        with open(f"{tmp_path}/{bed.hosts[0].name}/sandboxes/{client.id}/resolv.conf") as f:
            text = f.read()
        assert "nameserver 127.0.0.11" in text and "ndots:0" in text

        # a leave removes the name
        await c.disconnect("front", sbs["web2"].id)
        assert answers(await dig(bed, client, "web")) == [f"A {ip4}"]
        assert status(await dig(bed, client, "web2.front")) == "NXDOMAIN"  # plain "web2" now goes upstream


async def test_a_large_answer_is_truncated_over_udp_and_whole_over_tcp(bed: Testbed, tmp_path) -> None:
    async with controller(bed, bed.hosts[0], tmp_path) as c:
        await c.create_network("big", "bridge", ipv4_subnet="198.51.100.0/24", ipv6=False)
        for i in range(36):
            sb = await c.create_sandbox(hostname=f"m{i}")
            await c.connect("big", sb.id, aliases=["many"])
        out = await dig(bed, sb, "many", "+noedns", "+ignore")
        assert " tc " in out.split("flags:")[1][:20] and answers(out) == []
        out = await dig(bed, sb, "many", "+tcp")
        assert status(out) == "NOERROR" and len(answers(out)) == 36
        out = await dig(bed, sb, "many")  # dig's EDNS0 1232 bytes hold 36 records
        assert len(answers(out)) == 36


async def test_an_upstream_that_never_answers(bed: Testbed, tmp_path) -> None:
    async with controller(bed, bed.hosts[0], tmp_path, upstreams=[SILENT], upstream_timeout=1.0) as c:
        await c.create_network("front", "bridge", ipv4_subnet="198.51.100.0/24", ipv6=False)
        sb = await c.create_sandbox(hostname="client")
        await c.connect("front", sb.id)
        started = time.monotonic()
        slow = asyncio.ensure_future(dig(bed, sb, "nowhere.example"))
        await asyncio.sleep(0.2)
        assert answers(await dig(bed, sb, "client")) != []  # other queries unaffected meanwhile
        assert not slow.done()
        assert status(await slow) == "SERVFAIL"
        assert 0.9 < time.monotonic() - started < 2.9


async def test_a_remote_endpoint_on_an_overlay(bed: Testbed, tmp_path) -> None:
    async with controller(bed, bed.hosts[0], tmp_path) as c1, controller(bed, bed.hosts[1], tmp_path) as c2:
        await c1.create_network("ov", "overlay", ipv4_subnet="198.51.100.0/25", ipv6_subnet="2001:db8:2::/64")
        local = await c1.create_sandbox(hostname="local")
        await c1.connect("ov", local.id)
        far = await c2.create_sandbox(hostname="far")
        ep = await c2.connect("ov", far.id, aliases=["svc"], services=["db:5432/tcp"])
        ip4 = ep.ipv4.split("/")[0]
        deadline = time.monotonic() + 10
        while answers(await dig(bed, local, "far")) != [f"A {ip4}"]:
            assert time.monotonic() < deadline, "the remote endpoint's name did not arrive"
            await asyncio.sleep(0.1)
        assert answers(await dig(bed, local, "svc.ov", "AAAA")) == [f"AAAA {ep.ipv6.split('/')[0]}"]
        assert answers(await dig(bed, local, "_db._tcp.svc", "SRV")) == ["SRV 0 0 5432 far.ov."]
        assert answers(await dig(bed, local, "-x", ip4)) == ["PTR far.ov."]
        assert answers(await dig(bed, far, "local")) != []  # and the other way round
        await c2.disconnect("ov", far.id)
        deadline = time.monotonic() + 10
        while status(await dig(bed, local, "far.ov")) != "NXDOMAIN":
            assert time.monotonic() < deadline, "the remote endpoint's name stayed"
            await asyncio.sleep(0.1)


def _malformed(n: int, seed: int) -> list[bytes]:
    """``n`` bad packets: scapy's fuzzed DNS messages, random bytes and hand-made breakage."""
    import random

    from scapy.layers.dns import DNS, DNSQR
    from scapy.packet import fuzz

    rng = random.Random(seed)
    header = b"\x12\x34\x01\x00"
    kinds = [
        lambda: bytes(fuzz(DNS(qd=DNSQR()))),
        lambda: rng.randbytes(rng.randrange(0, 600)),
        lambda: rng.randbytes(rng.randrange(0, 12)),  # truncated header
        lambda: header + b"\x00\x01\x00\x00\x00\x00\x00\x00" + b"\xc0\x0c" + b"\x00\x01\x00\x01",  # pointer to itself
        lambda: (
            header + b"\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x01a\xc0\x0c" + b"\x00\x01\x00\x01"
        ),  # loop via a label
        lambda: header + b"\x00\x05\x00\x03\x00\x00\x00\x09" + b"\x01a\x00\x00\x01\x00\x01",  # wrong counts
        lambda: (
            header
            + b"\x00\x01\x00\x00\x00\x00\x00\x00"
            + bytes([rng.randrange(64, 192)])
            + b"x" * 70
            + b"\x00"
            + b"\x00\x01\x00\x01"
        ),  # oversize / reserved label type
        lambda: header + b"\x00\x01\x00\x00\x00\x00\x00\x00" + (b"\x3f" + b"y" * 63) * 5 + b"\x00\x00\x01\x00\x01",
        lambda: header + b"\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x03abc",  # question cut short
    ]
    return [rng.choice(kinds)() for _ in range(n)]


def _blast(ns: str, packets: list[bytes], valid: bytes) -> tuple[list[bytes], bytes | None]:
    """Send ``packets`` then ``valid`` from inside ``ns``; the replies, and the valid one's."""
    import socket

    from libnet.kernel import netns

    sock = netns.open_socket(ns, socket.AF_INET, socket.SOCK_DGRAM)
    replies, answer = [], None
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE: all replies wait until read
        sock.connect(("127.0.0.11", 53))
        sock.settimeout(0)
        for i, p in enumerate(packets):
            sock.send(p)
            if i % 50 == 0:  # keep the socket buffers from overflowing
                time.sleep(0.001)
        sock.send(valid)
        sock.settimeout(3)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            data = sock.recv(65535)
            if data[:2] == valid[:2] and data[12:].startswith(valid[12:-4]):
                answer = data
                break
            replies.append(data)
    except TimeoutError:
        pass
    finally:
        sock.close()
    return replies, answer


async def test_malformed_packets_never_stop_the_server(bed: Testbed, tmp_path) -> None:
    from dnslib import RCODE, DNSRecord

    async with controller(bed, bed.hosts[0], tmp_path, upstreams=[SILENT], upstream_timeout=0.5) as c:
        await c.create_network("front", "bridge", ipv4_subnet="198.51.100.0/24", ipv6=False)
        sb = await c.create_sandbox(hostname="target")
        await c.connect("front", sb.id)
        stats = c._dns.server.stats
        for batch in range(10):
            q = DNSRecord.question("target", "A")
            q.header.id = 0xBEE0 + batch
            replies, answer = await asyncio.to_thread(
                _blast, os.path.basename(sb.netns), _malformed(1000, batch), bytes(q.pack())
            )
            assert answer is not None, f"no answer to a valid query after batch {batch}"
            assert DNSRecord.parse(answer).rr, "the valid query got no record"
            for r in replies:  # whatever came back is a well-formed response header
                assert len(r) >= 12 and r[2] & 0x80
            assert any(r[3] & 0x0F == RCODE.FORMERR for r in replies)
        assert stats.dropped == 0 and stats.formerr > 5000
