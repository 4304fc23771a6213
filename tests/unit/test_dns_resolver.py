"""The resolver, pure: golden wire tests (question and answer as bytes), then behaviour."""

from __future__ import annotations

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from libnet.dns.records import Entry, Records, parse_service, reverse_to_address
from libnet.dns.resolver import Resolver, ResolverConfig
from libnet.errors import InvalidOption

VIEW = frozenset({"n1"})


@pytest.fixture
def records() -> Records:
    r = Records()
    r.set_network("n1", "front", ["198.51.100.0/24", "2001:db8:1::/64"])
    r.set_network("n2", "back", ["198.51.101.0/24"])
    r.put(Entry.build("e1", "n1", "web", "198.51.100.2/24", "2001:db8:1::2/64", ["www"], ["http:80/tcp"]))
    r.put(Entry.build("e2", "n2", "db", "198.51.101.2/24", None))
    r.put(Entry.build("e3", "n1", "cache", "198.51.100.3/24", None))
    return r


def answer(records: Records, query_hex: str, view=VIEW) -> str | None:
    reply = Resolver(records).resolve(DNSRecord.parse(bytes.fromhex(query_hex)), view)
    return None if reply is None else bytes(reply.pack()).hex()


# (question, expected answer) as wire bytes; id 0x1234, RD set.  Answers: QR AA RD RA (0x8580).
GOLDEN = {
    "A web": (
        "123401000001000000000000037765620000010001",
        "123485800001000100000000037765620000010001c00c00010001000002580004c6336402",
    ),
    "AAAA web.front": (
        "123401000001000000000000037765620566726f6e7400001c0001",
        "123485800001000100000000"
        "037765620566726f6e7400"
        "001c0001"
        "c00c001c00010000025800"
        "1020010db8000100000000000000000002",
    ),
    # not libnet's in this view: forwarded (answering would tell the sandbox what exists elsewhere)
    "A db, a name of a network the sandbox is not on: forwarded": (
        "1234010000010000000000000264620000010001",
        None,
    ),
    "AAAA cache (IPv4 only): empty NOERROR": (
        "12340100000100000000000005636163686500001c0001",
        "12348580000100000000000005636163686500001c0001",
    ),
    "PTR 198.51.100.2": (
        "1234010000010000000000000132033130300235310331393807696e2d61646472046172706100000c0001",
        "123485800001000100000000"
        "0132033130300235310331393807696e2d61646472046172706100"
        "000c0001"
        "c00c000c00010000025800"
        "0b037765620566726f6e7400",
    ),
    "SRV _http._tcp.web, addresses in the additional section": (
        "123401000001000000000000055f68747470045f746370037765620000210001",
        "123485800001000100000002"
        "055f68747470045f7463700377656200"
        "00210001"
        "c00c00210001000002580011"
        "00000000"
        "0050"
        "037765620566726f6e7400"
        "037765620566726f6e7400"
        "000100010000025800"
        "04c6336402"
        "c03d001c00010000025800"
        "1020010db8000100000000000000000002",
    ),
}


@pytest.mark.parametrize("case", list(GOLDEN))
def test_golden_wire(records: Records, case: str) -> None:
    query, expected = GOLDEN[case]
    assert answer(records, query) == expected


def test_ipv6_ptr(records: Records) -> None:
    q = DNSRecord.question("2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa", "PTR")
    reply = Resolver(records).resolve(q, VIEW)
    assert [str(rr.rdata) for rr in reply.rr] == ["web.front."]
    # an unknown address inside the view's subnet: ours, NXDOMAIN; outside any: forwarded
    q = DNSRecord.question("99.100.51.198.in-addr.arpa", "PTR")
    assert Resolver(records).resolve(q, VIEW).header.rcode == RCODE.NXDOMAIN
    assert Resolver(records).resolve(DNSRecord.question("1.0.0.10.in-addr.arpa", "PTR"), VIEW) is None


def test_unknown_names_outside_libnet_are_forwarded(records: Records) -> None:
    res = Resolver(records)
    assert res.resolve(DNSRecord.question("example.com", "A"), VIEW) is None
    assert res.resolve(DNSRecord.question("example.com", "AAAA"), VIEW) is None
    assert res.resolve(DNSRecord.question("nothere.front", "A"), VIEW).header.rcode == RCODE.NXDOMAIN
    assert res.resolve(DNSRecord.question("web.back", "A"), VIEW) is None  # "back" is not in the view


def test_aliases_round_robin_in_shuffled_order(records: Records) -> None:
    for i in range(4, 8):
        records.put(Entry.build(f"w{i}", "n1", f"web{i}", f"198.51.100.{i}/24", None, ["pool"]))
    res = Resolver(records)
    orders = set()
    for _ in range(50):
        reply = res.resolve(DNSRecord.question("pool", "A"), VIEW)
        orders.add(tuple(str(rr.rdata) for rr in reply.rr))
    assert {frozenset(o) for o in orders} == {frozenset(f"198.51.100.{i}" for i in range(4, 8))}
    assert len(orders) > 1


def test_ttl_and_edns(records: Records) -> None:
    q = DNSRecord.question("www", "A")
    q.add_ar(EDNS0(udp_len=1232))
    reply = Resolver(records, ResolverConfig(ttl=5)).resolve(q, VIEW)
    assert reply.rr[0].ttl == 5
    assert any(rr.rtype == QTYPE.OPT for rr in reply.ar)


def test_not_a_query_and_two_questions(records: Records) -> None:
    q = DNSRecord.question("web", "A")
    q.header.opcode = 2  # STATUS
    assert Resolver(records).resolve(q, VIEW).header.rcode == RCODE.NOTIMP
    q = DNSRecord.question("web", "A")
    q.add_question(DNSRecord.question("www", "A").q)
    assert Resolver(records).resolve(q, VIEW).header.rcode == RCODE.FORMERR


def test_records_follow_changes(records: Records) -> None:
    seen = []
    records.listeners.append(lambda: seen.append(1))
    records.remove("e1")
    assert seen and records.lookup(VIEW, "web") == []
    records.replace_remote("n1", [Entry.build("r1", "n1", "remote", "198.51.100.9/24", None)])
    assert [e.endpoint_id for e in records.lookup(VIEW, "remote.front")] == ["r1"]
    records.replace_remote("n1", [])
    assert records.lookup(VIEW, "remote") == []
    records.remove_network("n2")
    assert records.lookup(frozenset({"n2"}), "db") == []


def test_services_and_reverse_names() -> None:
    assert str(parse_service("HTTP:8080")) == "http:8080/tcp"
    for bad in ("http", "http:0", "http:70000/tcp", "_x:80", "http:80/icmp", 80):
        with pytest.raises(InvalidOption):
            parse_service(bad)
    assert reverse_to_address("4.3.2.1.in-addr.arpa") == "1.2.3.4"
    assert reverse_to_address("3.2.1.in-addr.arpa") is None
    assert reverse_to_address("x.3.2.1.in-addr.arpa") is None
