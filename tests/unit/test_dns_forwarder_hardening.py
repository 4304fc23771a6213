"""What a breaker found in the forwarder after issue 15's first pass: answers that
are not answers, SERVFAIL/REFUSED not passed on to the next upstream, TTLs with
the top bit set, oversized UDP answers, one sandbox starving the others, and
option validation (issue 15)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from libnet import sandbox_files
from libnet.dns.forwarder import Forwarder, parse_upstream
from libnet.dns.records import Entry, Records
from libnet.dns.resolver import Resolver
from libnet.errors import BadRequest

Reply = Callable[[DNSRecord, bytes], bytes | None]


class Fake(asyncio.DatagramProtocol):
    def __init__(self, reply: Reply, delay: float = 0.0) -> None:
        self.reply, self.delay, self.seen = reply, delay, 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.seen += 1
        q = DNSRecord.parse(data)
        out = self.reply(q, data)
        if out is None:
            return
        if self.delay:
            asyncio.get_running_loop().call_later(self.delay, self.transport.sendto, out, addr)
        else:
            self.transport.sendto(out, addr)


async def fake(reply: Reply, delay: float = 0.0) -> tuple[Fake, tuple[str, int]]:
    transport, proto = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: Fake(reply, delay), local_addr=("127.0.0.1", 0)
    )
    return proto, transport.get_extra_info("sockname")[:2]


def good(q: DNSRecord, _: bytes, ttl: int = 30, n: int = 1) -> bytes:
    r = q.reply()
    for i in range(n):
        r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A(f"198.51.100.{i + 1}"), ttl=ttl))
    return bytes(r.pack())


def rcode(code: int) -> Reply:
    def reply(q: DNSRecord, _: bytes) -> bytes:
        r = q.reply()
        r.header.rcode = code
        return bytes(r.pack())

    return reply


def other_question(q: DNSRecord, _: bytes) -> bytes:
    r = DNSRecord.question("bank.example.com").reply()
    r.header.id = q.header.id
    r.add_answer(RR("bank.example.com", QTYPE.A, rdata=A("198.51.100.66"), ttl=30))
    return bytes(r.pack())


def garbage(q: DNSRecord, raw: bytes) -> bytes:
    return raw[:2] + b"\x81\x80" + b"\xff" * 40


def short(q: DNSRecord, raw: bytes) -> bytes:
    return raw[:2] + b"\x81\x80" + b"\x00" * 8


def pointer_loop(q: DNSRecord, raw: bytes) -> bytes:
    # one answer whose owner name is a pointer to itself
    head = raw[:2] + b"\x81\x80" + struct.pack("!HHHH", 1, 1, 0, 0)
    question = raw[12:]
    at = len(head) + len(question)
    rr = struct.pack("!H", 0xC000 | at) + struct.pack("!HHIH", 1, 1, 300, 4) + bytes([198, 51, 100, 9])
    return head + question + rr


def query(name: str = "example.com", qid: int = 0x4242, edns: bool = False) -> tuple[DNSRecord, bytes]:
    q = DNSRecord.question(name, "A")
    q.header.id = qid
    return q, bytes(q.pack())


@pytest.mark.parametrize("bad", [other_question, garbage, short, pointer_loop, rcode(RCODE.SERVFAIL), rcode(5)])
async def test_an_unusable_answer_fails_over_to_the_next_upstream_and_is_not_kept(bad: Reply) -> None:
    first, a1 = await fake(bad)
    second, a2 = await fake(good)
    fwd = Forwarder(lambda: [a1, a2], timeout=1)
    for _ in range(2):
        q, raw = query()
        answer = DNSRecord.parse(await fwd.forward(q, raw))
        assert answer.header.id == 0x4242 and answer.header.rcode == RCODE.NOERROR
        assert [str(rr.rdata) for rr in answer.rr] == ["198.51.100.1"]
    assert first.seen == 1 and second.seen == 1  # the good answer was cached, the bad one never
    assert fwd.upstream_failures == {f"{a1[0]}:{a1[1]}": 1}


@pytest.mark.parametrize(("ttl", "seen"), [(0x80000000, 0), (0xFFFFFFFF, 0), (10**6, 86400), (30, 30)])
async def test_ttls_are_sane_before_they_reach_the_client(ttl: int, seen: int) -> None:
    _, a1 = await fake(lambda q, raw: good(q, raw, ttl=ttl))
    fwd = Forwarder(lambda: [a1], timeout=1)
    q, raw = query()
    answer = DNSRecord.parse(await fwd.forward(q, raw))
    assert [rr.ttl for rr in answer.rr] == [seen]


async def test_an_oversized_udp_answer_is_truncated_for_the_client() -> None:
    _, a1 = await fake(lambda q, raw: good(q, raw, n=100))  # ~1.6 KB, no TC from the upstream
    fwd = Forwarder(lambda: [a1], timeout=1)
    q, raw = query()
    wire = await fwd.forward(q, raw)
    answer = DNSRecord.parse(wire)
    assert len(wire) <= 512 and answer.header.tc == 1 and not answer.rr and answer.header.id == 0x4242
    assert str(answer.q.qname) == "example.com."
    assert len(DNSRecord.parse(await fwd.forward(q, raw, tcp=True)).rr) == 100


async def test_one_sandbox_cannot_starve_the_others() -> None:
    _, slow = await fake(good, delay=0.5)
    fwd = Forwarder(lambda: [slow], timeout=2, max_inflight=64, cache_size=0)
    hog = [asyncio.create_task(fwd.forward(*query(f"n{i}.example.com"), client="hog")) for i in range(64)]
    await asyncio.sleep(0.05)
    q, raw = query("victim.example.com")
    answer = DNSRecord.parse(await fwd.forward(q, raw, client="victim"))
    assert answer.header.rcode == RCODE.NOERROR  # before: SERVFAIL, the hog held every slot
    rcodes = [DNSRecord.parse(r).header.rcode for r in await asyncio.gather(*hog)]
    assert rcodes.count(RCODE.NOERROR) == 16 and rcodes.count(RCODE.SERVFAIL) == 48  # its share: a quarter


@pytest.mark.parametrize(
    ("servers", "search", "options"),
    [
        (None, None, ["ndots:\u00b2"]),
        (None, None, ["timeout:\u00b9"]),
        (None, ["corp\n.evil"], None),
        (["fe80::1%eth0#x"], None, None),
        (["fe80::1%eth 0"], None, None),
    ],
)
def test_dns_options_refused(servers, search, options) -> None:
    with pytest.raises(BadRequest):
        sandbox_files.check_dns(servers, search, options)


def test_zones_are_interface_names() -> None:
    assert parse_upstream("fe80::1%eth0") == ("fe80::1%eth0", 53)
    assert parse_upstream("fe80::1%3") == ("fe80::1%3", 53)
    for bad in ("fe80::1%eth0#x", "fe80::1%a/b", "fe80::1%" + "x" * 16):
        with pytest.raises(ValueError, match="zone"):
            parse_upstream(bad)


def test_an_empty_non_terminal_above_an_srv_name_is_nodata() -> None:
    """``_tcp.web.net`` exists when ``_http._tcp.web.net`` does (RFC 8020: NXDOMAIN there
    would tell a caching stub that the SRV name does not exist either)."""
    records = Records()
    records.set_network("n1", "net", ["198.51.100.0/24"])
    records.put(Entry.build("e1", "n1", "web", "198.51.100.2/24", None, ["alias"], ["http:80/tcp"]))
    resolver = Resolver(records)
    view = frozenset({"n1"})
    for name in ("_tcp.web.net", "_tcp.web", "_tcp.alias"):
        reply = resolver.resolve(DNSRecord.question(name, "A"), view)
        assert reply is not None and reply.header.rcode == RCODE.NOERROR and not reply.rr, name
    reply = resolver.resolve(DNSRecord.question("_udp.web.net", "A"), view)
    assert reply is not None and reply.header.rcode == RCODE.NXDOMAIN
    srv = resolver.resolve(DNSRecord.question("_http._tcp.web.net", "SRV"), view)
    assert srv is not None and len(srv.rr) == 1
