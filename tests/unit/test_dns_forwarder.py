"""Forwarding against fake upstreams on loopback; the server's wire helpers."""

from __future__ import annotations

import asyncio
import struct

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, A, DNSRecord

from libnet.dns.forwarder import Forwarder, parse_upstream, upstreams_from_resolv_conf
from libnet.dns.server import fit, formerr, udp_limit


class Upstream(asyncio.DatagramProtocol):
    """Answers every A question with 198.51.100.53 (or stays silent, or truncates)."""

    def __init__(self, mode: str = "answer") -> None:
        self.mode, self.seen = mode, 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.seen += 1
        if self.mode == "silent":
            return
        q = DNSRecord.parse(data)
        reply = q.reply()
        if self.mode == "truncate":
            reply.header.tc = 1
        else:
            reply.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("198.51.100.53"), ttl=30))
        self.transport.sendto(reply.pack(), addr)


async def upstream(mode: str = "answer") -> tuple[Upstream, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(lambda: Upstream(mode), local_addr=("127.0.0.1", 0))
    return proto, transport.get_extra_info("sockname")


def query(name: str = "example.com", qid: int = 0x4242) -> tuple[DNSRecord, bytes]:
    q = DNSRecord.question(name, "A")
    q.header.id = qid
    return q, bytes(q.pack())


async def test_forwards_and_keeps_the_client_id() -> None:
    _, addr = await upstream()
    fwd = Forwarder(lambda: [addr])
    q, data = query()
    answer = DNSRecord.parse(await fwd.forward(q, data))
    assert answer.header.id == 0x4242 and str(answer.rr[0].rdata) == "198.51.100.53"
    assert fwd.stats.forwarded == 1 and fwd.inflight == 0


async def test_a_silent_upstream_times_out_then_the_next_answers() -> None:
    silent, a = await upstream("silent")
    _, b = await upstream()
    fwd = Forwarder(lambda: [a, b], timeout=0.2)
    q, data = query()
    answer = DNSRecord.parse(await fwd.forward(q, data))
    assert silent.seen == 1 and answer.header.rcode == RCODE.NOERROR and answer.rr


async def test_servfail_when_all_fail_and_others_unaffected() -> None:
    _, silent = await upstream("silent")
    _, good = await upstream()
    slow = Forwarder(lambda: [silent], timeout=0.3)
    fast = Forwarder(lambda: [good])
    q, data = query()
    started = asyncio.get_running_loop().time()
    pending = asyncio.ensure_future(slow.forward(q, data))
    ok = DNSRecord.parse(await fast.forward(*query("example.org")))
    assert ok.rr and asyncio.get_running_loop().time() - started < 0.25  # not stuck behind the silent one
    failed = DNSRecord.parse(await pending)
    assert failed.header.rcode == RCODE.SERVFAIL and failed.header.id == 0x4242 and slow.stats.failed == 1


async def test_in_flight_bound_answers_servfail_at_once() -> None:
    _, silent = await upstream("silent")
    fwd = Forwarder(lambda: [silent], timeout=0.5, max_inflight=2)
    held = [asyncio.ensure_future(fwd.forward(*query(qid=i))) for i in range(2)]
    await asyncio.sleep(0.05)
    over = DNSRecord.parse(await asyncio.wait_for(fwd.forward(*query(qid=9)), 0.1))
    assert over.header.rcode == RCODE.SERVFAIL and fwd.stats.rejected == 1
    await asyncio.gather(*held)


async def test_truncated_upstream_answer_is_passed_on() -> None:
    _, addr = await upstream("truncate")
    answer = DNSRecord.parse(await Forwarder(lambda: [addr]).forward(*query()))
    assert answer.header.tc == 1


async def test_tcp_forwarding() -> None:
    async def serve(reader, writer) -> None:
        size = struct.unpack("!H", await reader.readexactly(2))[0]
        q = DNSRecord.parse(await reader.readexactly(size))
        reply = q.reply()
        for i in range(60):  # larger than any UDP answer
            reply.add_answer(RR(q.q.qname, QTYPE.A, rdata=A(f"198.51.100.{i + 1}"), ttl=30))
        wire = reply.pack()
        writer.write(struct.pack("!H", len(wire)) + wire)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    addr = server.sockets[0].getsockname()
    async with server:
        answer = DNSRecord.parse(await Forwarder(lambda: [addr]).forward(*query(), tcp=True))
    assert len(answer.rr) == 60 and answer.header.id == 0x4242


def test_upstream_parsing() -> None:
    assert parse_upstream("198.51.100.53") == ("198.51.100.53", 53)
    assert parse_upstream("198.51.100.53:5353") == ("198.51.100.53", 5353)
    assert parse_upstream("2001:db8::53") == ("2001:db8::53", 53)
    assert parse_upstream("[2001:db8::53]:5353") == ("2001:db8::53", 5353)
    assert parse_upstream("fe80::1%eth0") == ("fe80::1%eth0", 53)  # the zone is kept: without it fe80:: is unreachable
    for bad in ("resolver.example", "198.51.100.53:0", "198.51.100.53:99999"):
        with pytest.raises(ValueError):
            parse_upstream(bad)
    text = "# x\nnameserver 127.0.0.53\nnameserver bogus\nsearch example\nnameserver 2001:db8::1\n"
    assert upstreams_from_resolv_conf(text) == [("127.0.0.53", 53), ("2001:db8::1", 53)]


def test_udp_size_limits_and_truncation() -> None:
    q = DNSRecord.question("big", "A")
    assert udp_limit(q) == 512
    reply = q.reply()
    for i in range(60):
        reply.add_answer(RR("big", QTYPE.A, rdata=A(f"198.51.100.{i + 1}")))
    short = DNSRecord.parse(fit(reply, 512))
    assert short.header.tc == 1 and not short.rr and str(short.q.qname) == "big."
    assert len(DNSRecord.parse(fit(reply, 4096)).rr) == 60
    q.add_ar(EDNS0(udp_len=1232))
    assert udp_limit(q) == 1232
    q.ar[0].rclass = 100
    assert udp_limit(q) == 512
    q.ar[0].rclass = 65000
    assert udp_limit(q) == 4096


def test_formerr_from_a_header_only() -> None:
    assert formerr(b"\x12") is None
    bad = formerr(b"\x12\x34\x01\x00" + b"\xff" * 8)
    assert bad[:2] == b"\x12\x34" and bad[3] & 0x0F == RCODE.FORMERR and bad[2] & 0x80
    assert formerr(b"\x12\x34\x81\x00" + b"\0" * 8) is None  # a response: never answered
