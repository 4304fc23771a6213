"""Upstreams in every form, the forwarded-answer cache, the batched UDP path, per-sandbox DNS settings.

Fake upstreams and the server listen on the test process's loopback (no
namespace, nothing added anywhere).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, SOA, A, DNSRecord

from libnet import sandbox_files
from libnet.dns import mmsg
from libnet.dns.cache import AnswerCache, lifetime, question_end
from libnet.dns.forwarder import Forwarder, parse_resolv_conf, parse_upstream
from libnet.dns.records import Records
from libnet.dns.resolver import Resolver, ResolverConfig
from libnet.dns.server import DnsServer
from libnet.dns.stats import DnsStats
from libnet.errors import BadRequest
from libnet.model import Sandbox


class Upstream(asyncio.DatagramProtocol):
    """``answer``: A 198.51.100.53 TTL 30; ``nxdomain``: with an SOA (TTL 300, minimum 60);
    ``nxdomain-nosoa``; ``servfail``; ``truncate``."""

    def __init__(self, mode: str = "answer") -> None:
        self.mode, self.seen = mode, 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.seen += 1
        q = DNSRecord.parse(data)
        reply = q.reply()
        if self.mode == "answer":
            reply.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("198.51.100.53"), ttl=30))
        elif self.mode.startswith("nxdomain"):
            reply.header.rcode = RCODE.NXDOMAIN
            if self.mode == "nxdomain":
                soa = SOA("ns.example.", "host.example.", (1, 3600, 600, 86400, 60))
                reply.add_auth(RR("example.", QTYPE.SOA, rdata=soa, ttl=300))
        elif self.mode == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
        elif self.mode == "truncate":
            reply.header.tc = 1
        self.transport.sendto(reply.pack(), addr)


async def upstream(mode: str = "answer", host: str = "127.0.0.1") -> tuple[Upstream, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(lambda: Upstream(mode), local_addr=(host, 0))
    return proto, transport.get_extra_info("sockname")[:2]


def query(name: str = "example.com", qid: int = 0x4242, qtype: str = "A") -> tuple[DNSRecord, bytes]:
    q = DNSRecord.question(name, qtype)
    q.header.id = qid
    return q, bytes(q.pack())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refused_port() -> tuple[str, int]:
    """A loopback UDP port nothing listens on (connected UDP gets ECONNREFUSED)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    addr = s.getsockname()
    s.close()
    return addr


# --- parsing ------------------------------------------------------------------


def test_every_upstream_form() -> None:
    assert parse_upstream(" 198.51.100.53 ") == ("198.51.100.53", 53)
    assert parse_upstream("198.51.100.53:5353") == ("198.51.100.53", 5353)
    assert parse_upstream("2001:DB8::53") == ("2001:db8::53", 53)
    assert parse_upstream("[2001:db8::53]:5353") == ("2001:db8::53", 5353)
    assert parse_upstream("[2001:db8::53]") == ("2001:db8::53", 53)
    assert parse_upstream("fe80::1%eth0") == ("fe80::1%eth0", 53)
    assert parse_upstream("[fe80::1%eth0]:5353") == ("fe80::1%eth0", 5353)
    assert parse_upstream("fe80::1%2") == ("fe80::1%2", 53)
    assert parse_upstream("127.0.0.53") == ("127.0.0.53", 53)
    assert parse_upstream("::1") == ("::1", 53)
    for bad, why in (
        ("resolver.example", "not an IP address"),
        ("fe80::1", "needs a zone"),
        ("198.51.100.53%eth0", "IPv6 addresses only"),
        ("fe80::1%", "bad zone"),
        ("0.0.0.0", "cannot be"),
        ("198.51.100.53:0", "port"),
        ("198.51.100.53:99999", "port"),
        ("198.51.100.53:x", "port"),
        ("[2001:db8::53", "expected"),
        ("[2001:db8::53]x", "expected"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_upstream(bad)


def test_resolv_conf_in_every_form() -> None:
    text = (
        "# a comment\n"
        "; another\n"
        "nameserver 127.0.0.53   # systemd-resolved, a trailing comment\n"
        "nameserver\t2001:db8::1\t\n"
        "  nameserver fe80::1%eth0\n"
        "nameserver 198.51.100.1;comment\n"
        "nameserver 198.51.100.2\n"
        "nameserver 198.51.100.3\r\n"
        "nameserver 198.51.100.2\n"  # a duplicate
        "nameserver fe80::2\n"  # no zone: skipped, and said why
        "nameserver resolver.example\n"
        "nameserver\n"
        "search example.org example.net\n"
        "options ndots:2 edns0 timeout:1\n"
        "domain example.com\n"
    )
    ups, problems = parse_resolv_conf(text)
    assert ups == [
        ("127.0.0.53", 53),
        ("2001:db8::1", 53),
        ("fe80::1%eth0", 53),
        ("198.51.100.1", 53),
        ("198.51.100.2", 53),
        ("198.51.100.3", 53),  # more than glibc's 3: all of them
    ]
    assert len(problems) == 3 and "needs a zone" in problems[0] and "not an IP" in problems[1]
    assert parse_resolv_conf("search example.org\noptions ndots:1\n") == ([], [])


# --- forwarding: failures said once, no upstream, zones --------------------------------


async def test_no_upstream_is_servfail_and_said_once(caplog) -> None:
    fwd = Forwarder(lambda: [])
    with caplog.at_level(logging.WARNING, "libnet.dns.forwarder"):
        for i in range(3):
            q, data = query(qid=i)
            assert DNSRecord.parse(await fwd.forward(q, data)).header.rcode == RCODE.SERVFAIL
    said = [r for r in caplog.records if "no upstream" in r.getMessage()]
    assert len(said) == 1 and "never falls back" in said[0].getMessage()
    assert fwd.stats.no_upstream == 3


async def test_a_failing_upstream_is_logged_once_with_why_and_counted(caplog) -> None:
    dead = refused_port()
    _, good = await upstream()
    fwd = Forwarder(lambda: [dead, good], cache_size=0)
    fwd.dns_stats = DnsStats()
    with caplog.at_level(logging.WARNING, "libnet.dns.forwarder"):
        for i in range(3):
            answer = DNSRecord.parse(await fwd.forward(*query(f"n{i}.example", qid=i)))
            assert answer.header.rcode == RCODE.NOERROR and answer.rr
    said = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert len(said) == 1 and f"127.0.0.1:{dead[1]}" in said[0] and "refused" in said[0]
    assert fwd.upstream_failures == {f"127.0.0.1:{dead[1]}": 3}
    assert fwd.dns_stats.upstream_failures == {f"127.0.0.1:{dead[1]}": 3}
    assert fwd.forwarded == 3


async def test_a_zoned_ipv6_upstream_is_reached_with_its_zone() -> None:
    """``::1%lo``: the zone is looked up (in the forwarding namespace) and used;
    before, the zone was dropped, which for fe80:: made every query SERVFAIL."""
    try:
        _, (_, port) = await upstream(host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    fwd = Forwarder(lambda: [parse_upstream(f"[::1%lo]:{port}")])
    answer = DNSRecord.parse(await fwd.forward(*query()))
    assert answer.rr and str(answer.rr[0].rdata) == "198.51.100.53"
    bad = Forwarder(lambda: [parse_upstream(f"[::1%nosuchif0]:{port}")])
    answer = DNSRecord.parse(await bad.forward(*query()))
    assert answer.header.rcode == RCODE.SERVFAIL
    assert "nosuchif0" in str(bad.upstream_failures)


# --- the cache -----------------------------------------------------------------------


async def test_positive_answers_are_kept_for_their_ttl_with_ttls_decremented() -> None:
    up, addr = await upstream()
    clock = Clock()
    fwd = Forwarder(lambda: [addr], clock=clock)
    first = DNSRecord.parse(await fwd.forward(*query("Example.COM", qid=1)))
    assert first.rr[0].ttl == 30 and up.seen == 1
    clock.now += 10.4
    q, data = query("eXample.com", qid=2)
    again = await fwd.forward(q, data)
    parsed = DNSRecord.parse(again)
    assert up.seen == 1 and parsed.header.id == 2 and parsed.rr[0].ttl == 20
    assert again[12 : 12 + len("eXample") + 1].endswith(b"eXample")  # the client's letter case
    assert fwd.cached == 1 and fwd.stats.misses == 1
    clock.now += 20
    await fwd.forward(*query("example.com", qid=3))
    assert up.seen == 2  # expired: asked again


async def test_negative_answers_per_rfc_2308() -> None:
    up, addr = await upstream("nxdomain")
    clock = Clock()
    fwd = Forwarder(lambda: [addr], clock=clock)
    await fwd.forward(*query("gone.example"))
    clock.now += 59
    answer = DNSRecord.parse(await fwd.forward(*query("gone.example")))
    assert up.seen == 1 and answer.header.rcode == RCODE.NXDOMAIN and answer.auth[0].ttl == 241
    clock.now += 2  # past the SOA minimum (60), under the SOA's TTL (300)
    await fwd.forward(*query("gone.example"))
    assert up.seen == 2
    for mode in ("nxdomain-nosoa", "servfail", "truncate"):
        up, addr = await upstream(mode)
        fwd = Forwarder(lambda addr=addr: [addr], clock=clock)
        for _ in range(2):
            await fwd.forward(*query("x.example"))
        assert up.seen == 2, mode  # never kept


async def test_the_key_holds_the_upstreams_and_the_query_bits() -> None:
    a_up, a = await upstream()
    b_up, b = await upstream()
    fwd = Forwarder(lambda: [a])
    await fwd.forward(*query())
    await fwd.forward(*query(), upstreams=(b,))  # a sandbox with its own --dns: not the host's answer
    assert (a_up.seen, b_up.seen) == (1, 1)
    q, _ = query()
    q.add_ar(EDNS0(udp_len=1232))
    await fwd.forward(q, bytes(q.pack()))  # EDNS present: another key
    assert a_up.seen == 2
    await fwd.forward(*query(qtype="AAAA"))
    assert a_up.seen == 3


async def test_bounded_lru_off_at_zero_and_flushed_when_upstreams_change() -> None:
    up, addr = await upstream()
    fwd = Forwarder(lambda: [addr], cache_size=2)
    for name in ("a.example", "b.example", "a.example", "c.example", "a.example", "b.example"):
        await fwd.forward(*query(name))
    assert up.seen == 4 and len(fwd.cache) == 2  # b was least recently used when c came
    off = Forwarder(lambda: [addr], cache_size=0)
    for _ in range(2):
        await off.forward(*query())
    assert up.seen == 6 and len(off.cache) == 0

    _, other = await upstream()
    clock = Clock()
    host = [addr]
    fwd = Forwarder(lambda: list(host), clock=clock)
    await fwd.forward(*query())
    entry = next(iter(fwd.cache._entries.values()))
    host[:] = [other]
    clock.now += 2  # past the re-check interval
    fwd.current()
    assert len(fwd.cache) == 0 and entry.reply(query()[1], clock()) is None  # referenced copies expire too


def test_wire_helpers_on_odd_messages() -> None:
    assert question_end(b"\x00" * 11) is None
    q, data = query()
    assert question_end(data) == len(data)
    assert lifetime(data, len(data)) is None  # a query, not an answer
    cache = AnswerCache(4)
    assert cache.put(("k",), b"\x12\x34\x81\x80" + b"\x00" * 8, 12, 0.0) is None  # counts lie: nothing kept
    cut = q.reply()
    cut.add_answer(RR("example.com", QTYPE.A, rdata=A("198.51.100.1"), ttl=30))
    wire = bytes(cut.pack())
    assert lifetime(wire[:-2], len(data)) is None


# --- the server: plain and batched UDP paths -----------------------------------------------


@pytest.fixture(params=["plain", "batched"])
def batched(request) -> bool:
    if request.param == "batched" and not mmsg.available():
        pytest.skip("no recvmmsg here")
    return request.param == "batched"


async def test_server_answers_from_both_caches_on_both_paths(batched: bool) -> None:
    up, addr = await upstream()
    records = Records()
    records.set_network("n1", "front", ["198.51.100.0/24"])
    from libnet.dns.records import Entry

    records.put(Entry.build("e1", "n1", "web", "198.51.100.7/24", None, [], []))
    fwd = Forwarder(lambda: [addr])
    server = DnsServer(Resolver(records, ResolverConfig()), fwd, "127.0.0.1", 0, v6_address=None, batched=batched)
    await server.attach("sb1", None, frozenset({"n1"}))
    listener = server._listeners["sb1"]
    port = listener._udp[0].getsockname()[1]
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setblocking(False)
    loop = asyncio.get_running_loop()

    async def ask(data: bytes) -> bytes:
        await loop.sock_sendto(client, data, ("127.0.0.1", port))
        return await asyncio.wait_for(loop.sock_recv(client, 65535), 2)

    try:
        for i in range(3):
            local = DNSRecord.parse(await ask(query("web", qid=10 + i)[1]))
            assert local.header.id == 10 + i and str(local.rr[0].rdata) == "198.51.100.7"
            out = DNSRecord.parse(await ask(query("outside.example", qid=20 + i)[1]))
            assert out.header.id == 20 + i and str(out.rr[0].rdata) == "198.51.100.53"
        assert up.seen == 1 and fwd.cached == 2 and server.stats.cached >= 2
        # a burst: every one answered, with its own ID
        burst = [query("web" if i % 2 else "outside.example", qid=1000 + i)[1] for i in range(150)]
        for data in burst:
            await loop.sock_sendto(client, data, ("127.0.0.1", port))
        ids = set()
        for _ in burst:
            ids.add(DNSRecord.parse(await asyncio.wait_for(loop.sock_recv(client, 65535), 2)).header.id)
        assert ids == set(range(1000, 1150))
        # garbage and an oversize datagram: FORMERR (or silence), the server goes on
        await loop.sock_sendto(client, b"\x12\x34\x01\x00" + b"\xff" * 8, ("127.0.0.1", port))
        assert (await asyncio.wait_for(loop.sock_recv(client, 65535), 2))[3] & 0xF == RCODE.FORMERR
        big = b"\x56\x78\x01\x00" + struct.pack("!HHHH", 1, 0, 0, 0) + b"\x01a" * 3000
        await loop.sock_sendto(client, big, ("127.0.0.1", port))
        reply = await asyncio.wait_for(loop.sock_recv(client, 65535), 2)
        assert reply[:2] == b"\x56\x78" and reply[3] & 0xF == RCODE.FORMERR
        assert DNSRecord.parse(await ask(query("web", qid=7)[1])).rr
    finally:
        client.close()
        await server.close()


async def test_a_sandbox_forwards_to_its_own_servers(batched: bool) -> None:
    host_up, host_addr = await upstream()
    own_up, own_addr = await upstream("nxdomain")
    fwd = Forwarder(lambda: [host_addr])
    records = Records()
    records.set_network("n1", "front", ["198.51.100.0/24"])
    server = DnsServer(Resolver(records, ResolverConfig()), fwd, "127.0.0.1", 0, v6_address=None, batched=batched)
    await server.attach("own", None, frozenset({"n1"}), (own_addr,))
    await server.attach("plain", None, frozenset({"n1"}))
    loop = asyncio.get_running_loop()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setblocking(False)
    try:
        rcodes = {}
        for sid in ("own", "plain"):
            port = server._listeners[sid]._udp[0].getsockname()[1]
            await loop.sock_sendto(client, query("x.example")[1], ("127.0.0.1", port))
            rcodes[sid] = DNSRecord.parse(await asyncio.wait_for(loop.sock_recv(client, 65535), 3)).header.rcode
        assert rcodes == {"own": RCODE.NXDOMAIN, "plain": RCODE.NOERROR}
        assert (own_up.seen, host_up.seen) == (1, 1)
    finally:
        client.close()
        await server.close()


# --- per-sandbox DNS settings ----------------------------------------------------------------


def test_sandbox_dns_settings_are_checked() -> None:
    assert sandbox_files.check_dns(
        ["198.51.100.1", "2001:db8::1", "fe80::1%eth0", "198.51.100.1"],
        ["Example.org.", "svc.example"],
        ["ndots:2", "rotate", "timeout:3", "ndots:3", "edns0"],
    ) == (
        ["198.51.100.1", "2001:db8::1", "fe80::1%eth0"],
        ["Example.org", "svc.example"],
        ["rotate", "timeout:3", "ndots:3", "edns0"],
    )
    assert sandbox_files.check_dns(None, ["."], None) == ([], ["."], [])
    for bad in (
        (["dns.example"], None, None),
        (["198.51.100.1:53"], None, None),
        (["[2001:db8::1]:53"], None, None),
        (["fe80::1"], None, None),
        ([1], None, None),
        ("198.51.100.1", None, None),
        (None, ["-bad.example"], None),
        (None, ["a..b"], None),
        (None, ["x" * 64 + ".example"], None),
        (None, [".", "example.org"], None),
        (None, None, ["ndots:16"]),
        (None, None, ["ndots:-1"]),
        (None, None, ["timeout:0"]),
        (None, None, ["attempts:9"]),
        (None, None, ["rotate:1"]),
        (None, None, ["nonsense"]),
        (None, None, ["x"] * 40),
    ):
        with pytest.raises(BadRequest):
            sandbox_files.check_dns(*bad)  # type: ignore[arg-type]


def test_sandbox_resolv_conf_with_its_own_settings() -> None:
    host = "nameserver 127.0.0.53\nsearch host.example\noptions edns0 ndots:5\n"
    text = sandbox_files.resolv_conf_embedded(host, "127.0.0.11", ["svc.example"], ["ndots:2", "rotate"])
    assert text.splitlines()[1:] == ["nameserver 127.0.0.11", "search svc.example", "options ndots:2 rotate"]
    text = sandbox_files.resolv_conf_embedded(host, "127.0.0.11", ["."], None)
    assert "search" not in text and "options ndots:0 edns0" in text
    assert "search host.example" in sandbox_files.resolv_conf_embedded(host, "127.0.0.11")
    plain = sandbox_files.resolv_conf(host, ["198.51.100.1"], None, ["timeout:2"])
    assert plain.splitlines()[1:] == ["nameserver 198.51.100.1", "search host.example", "options timeout:2"]


def test_old_sandbox_records_still_load() -> None:
    old = {"id": "a" * 64, "netns": "/var/run/netns/x", "owned": True, "hostname": "h", "endpoints": []}
    sb = Sandbox.from_data(old)
    assert (sb.dns, sb.dns_search, sb.dns_options) == ([], [], [])
    new = Sandbox.from_data({**old, "dns": ["198.51.100.1"], "dns_options": ["rotate"]})
    assert Sandbox.from_data(new.to_data()) == new


async def test_sandbox_dns_options_through_the_api(tmp_path) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from agent.api import AgentState, make_app
    from agent.metrics import Metrics
    from ipam.ipam import StoreIpam
    from libnet import Config, Controller
    from libnet.store.memory import MemoryStore
    from libnet.testing.fakes import FakeDriver, FakeNamespaces

    (tmp_path / "resolv.conf").write_text("nameserver 198.51.100.53\nsearch host.example\noptions edns0\n")
    store = MemoryStore()
    ctl = Controller(
        Config(state_dir=str(tmp_path / "state"), resolv_conf=str(tmp_path / "resolv.conf")),
        store=store,
        ipam=StoreIpam(store),
        drivers={"bridge": FakeDriver("bridge")},
        namespaces=FakeNamespaces(),
    )
    await ctl.start()
    app = make_app(AgentState(ctl, "node-1", Metrics()))
    async with TestClient(TestServer(app)) as client:
        for bad in (
            {"dns": ["dns.example"]},
            {"dns": "198.51.100.1"},
            {"dns_search": ["bad..name"]},
            {"dns_options": ["ndots:99"]},
            {"dns_options": ["frobnicate"]},
        ):
            r = await client.post("/v1/sandboxes", json={"hostname": "app", **bad})
            assert r.status == 400, bad
        assert await ctl.sandboxes() == []  # nothing made by a refused request
        r = await client.post(
            "/v1/sandboxes",
            json={
                "hostname": "app",
                "dns": ["2001:db8::53", "198.51.100.9"],
                "dns_search": ["svc.example"],
                "dns_options": ["ndots:2", "rotate"],
            },
        )
        assert r.status == 201
        sb = await r.json()
        assert sb["dns"] == ["2001:db8::53", "198.51.100.9"] and sb["dns_options"] == ["ndots:2", "rotate"]
        stored = await ctl.sandbox(sb["id"])
        assert stored.dns_search == ["svc.example"]
    await ctl.close()


@pytest.mark.skipif(not mmsg.available(), reason="no recvmmsg here")
def test_batch_arenas_are_resident_only_where_written() -> None:
    """A server's batch arenas (2 x BATCH x SLOT bytes per family) cost RSS only for the
    slots datagrams used (issue 22: they were 1 MiB of every agent's RSS), and a batch
    still carries datagrams both ways."""
    import gc
    import time

    def rss_kib() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    gc.collect()
    before = rss_kib()
    batches = [mmsg.Batch(socket.AF_INET) for _ in range(4)]
    assert rss_kib() - before < 512  # written in full, they were 2,048 KiB
    batch = batches[0]
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as cli,
    ):
        srv.bind(("127.0.0.1", 0))
        srv.setblocking(False)
        cli.settimeout(5)
        cli.sendto(b"question", srv.getsockname())
        deadline = time.monotonic() + 5
        n = 0
        while not n and time.monotonic() < deadline:
            n = batch.recv(srv.fileno())
        assert n == 1 and batch.datagram(0) == b"question" and not batch.truncated(0)


async def test_tcp_listener_answers_queries_and_closes_with_the_sandbox() -> None:
    """DNS over TCP on a sandbox's listener (a reader on the listening socket: no
    asyncio.Server per family per sandbox, issue 22): two queries on one connection,
    two connections at once; after detach the port refuses and open clients are closed."""
    from libnet.dns.records import Entry

    records = Records()
    records.set_network("n1", "front", ["198.51.100.0/24"])
    records.put(Entry.build("e1", "n1", "web", "198.51.100.7/24", None, [], []))
    _, addr = await upstream()
    server = DnsServer(Resolver(records, ResolverConfig()), Forwarder(lambda: [addr]), "127.0.0.1", 0, v6_address=None)
    await server.attach("sb1", None, frozenset({"n1"}))
    listener = server._listeners["sb1"]
    port = listener._tcp[0].getsockname()[1]

    async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, qid: int) -> DNSRecord:
        data = query("web", qid=qid)[1]
        writer.write(struct.pack("!H", len(data)) + data)
        size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 5))[0]
        return DNSRecord.parse(await asyncio.wait_for(reader.readexactly(size), 5))

    first = await asyncio.open_connection("127.0.0.1", port)
    second = await asyncio.open_connection("127.0.0.1", port)
    try:
        for qid, conn in ((1, first), (2, second), (3, first)):
            answer = await ask(*conn, qid)
            assert answer.header.id == qid and str(answer.rr[0].rdata) == "198.51.100.7"
        assert len(listener._clients) == 2
        await server.detach("sb1")
        assert await asyncio.wait_for(first[0].read(), 5) == b""  # closed by the server
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
    finally:
        for _, writer in (first, second):
            writer.close()
        await server.close()


async def test_server_answers_over_tcp_and_bounds_its_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    from libnet.dns import server as server_mod
    from libnet.dns.records import Entry

    monkeypatch.setattr(server_mod, "_TCP_MAX", 2)
    records = Records()
    records.set_network("n1", "front", ["198.51.100.0/24"])
    records.put(Entry.build("e1", "n1", "web", "198.51.100.7/24", None, [], []))
    server = DnsServer(Resolver(records, ResolverConfig()), Forwarder(list), "127.0.0.1", 0, v6_address=None)
    await server.attach("sb1", None, frozenset({"n1"}))
    port = server._listeners["sb1"]._tcp[0].getsockname()[1]

    async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, qid: int) -> DNSRecord:
        data = query("web", qid=qid)[1]
        writer.write(struct.pack("!H", len(data)) + data)
        size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 2))[0]
        return DNSRecord.parse(await asyncio.wait_for(reader.readexactly(size), 2))

    clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    try:
        for i, (reader, writer) in enumerate(clients[:2]):
            for j in range(2):  # several queries on one connection
                reply = await ask(reader, writer, 100 + 10 * i + j)
                assert reply.header.id == 100 + 10 * i + j and str(reply.rr[0].rdata) == "198.51.100.7"
        reader, _ = clients[2]  # the third is over the limit: closed at once
        assert await asyncio.wait_for(reader.read(), 2) == b""
    finally:
        await server.close()
        for _, writer in clients:
            writer.close()
    assert server._listeners == {}
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)  # no listener any more
