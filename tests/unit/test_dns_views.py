"""The resolver per sandbox view (issue 15): internal networks, per-view
ownership of names, and what RFC 1035/2181/6891/8020 ask of a stub-facing server.
Pure: records and resolver only, no sockets."""

from __future__ import annotations

import itertools

import pytest
from dnslib import EDNS0, OPCODE, QTYPE, RCODE, DNSRecord

from libnet.dns.records import Entry, Records, parse_reverse, reverse_name
from libnet.dns.resolver import NEGATIVE_TTL, Resolver
from libnet.dns.stats import DnsStats, Histogram

FRONT = frozenset({"n1"})  # a normal network
SEALED = frozenset({"n3"})  # internal only
MIXED = frozenset({"n1", "n3"})


@pytest.fixture
def records() -> Records:
    r = Records()
    r.set_network("n1", "front", ["198.51.100.0/24", "2001:db8:1::/64"])
    r.set_network("n2", "dev", ["198.51.101.0/24"])
    r.set_network("n3", "sealed", ["198.51.102.0/24"], external=False)
    r.put(Entry.build("e1", "n1", "web", "198.51.100.2/24", "2001:db8:1::2/64", ["www"], ["http:80/tcp"]))
    r.put(Entry.build("e2", "n2", "gopher", "198.51.101.2/24", None))
    r.put(Entry.build("e3", "n3", "vault", "198.51.102.2/24", None))
    return r


def ask(records: Records, name: str, qtype: str = "A", view=FRONT, stats: DnsStats | None = None, **kw):
    q = DNSRecord.question(name, qtype)
    for k, v in kw.items():
        setattr(q.header, k, v)
    return Resolver(records, stats=stats).resolve(q, view)


def rcode(reply) -> str:
    return "forward" if reply is None else RCODE.get(reply.header.rcode)


# --- fault 1: internal networks ------------------------------------------------


def test_an_internal_only_view_refuses_what_it_would_forward(records: Records) -> None:
    stats = DnsStats()
    for name, qtype in (("example.com", "A"), ("example.com", "AAAA"), ("x", "A"), ("a.b.c", "TXT")):
        reply = ask(records, name, qtype, SEALED, stats)
        assert rcode(reply) == "REFUSED" and not reply.rr and not reply.header.aa
    assert rcode(ask(records, "1.0.0.10.in-addr.arpa", "PTR", SEALED)) == "REFUSED"
    assert rcode(ask(records, "gopher", view=SEALED)) == "REFUSED"  # another network's name: not ours either
    q = DNSRecord.question("example.com", "A", "CH")
    assert rcode(Resolver(records).resolve(q, SEALED)) == "REFUSED"
    assert stats.refused == 4
    # its own names are answered as usual
    assert [str(rr.rdata) for rr in ask(records, "vault", view=SEALED).rr] == ["198.51.102.2"]
    assert rcode(ask(records, "no-such.sealed", view=SEALED)) == "NXDOMAIN"
    # with one normal network beside it: forwarded; with none at all: refused
    assert ask(records, "example.com", view=MIXED) is None
    assert rcode(ask(records, "example.com", view=frozenset())) == "REFUSED"
    # a network the records do not know (yet) gives no way out
    assert rcode(ask(records, "example.com", view=frozenset({"unknown"}))) == "REFUSED"


def test_the_internal_flag_is_a_change(records: Records) -> None:
    seen = []
    records.listeners.append(lambda: seen.append(1))
    records.set_network("n1", "front", ["198.51.100.0/24", "2001:db8:1::/64"])
    assert not seen
    records.set_network("n1", "front", ["198.51.100.0/24", "2001:db8:1::/64"], external=False)
    assert seen and rcode(ask(records, "example.com")) == "REFUSED"


# --- fault 2: ownership from the view only --------------------------------------


def test_a_network_name_hides_no_top_level_domain_outside_its_view(records: Records) -> None:
    assert ask(records, "go.dev") is None
    assert ask(records, "gopher") is None and ask(records, "gopher.dev") is None
    assert ask(records, "1.101.51.198.in-addr.arpa", "PTR") is None  # dev's subnet, not in the view
    assert ask(records, "2.101.51.198.in-addr.arpa", "PTR") is None
    # on network dev the domain is libnet's
    dev = frozenset({"n2"})
    assert rcode(ask(records, "go.dev", view=dev)) == "NXDOMAIN"
    assert [str(rr.rdata) for rr in ask(records, "gopher.dev", view=dev).rr] == ["198.51.101.2"]
    assert rcode(ask(records, "1.101.51.198.in-addr.arpa", "PTR", view=dev)) == "NXDOMAIN"


def _build(steps: tuple[str, ...]) -> Records:
    r = Records()
    actions = {
        "front": lambda: r.set_network("n1", "front", ["198.51.100.0/24"]),
        "dev": lambda: r.set_network("n2", "dev", ["198.51.101.0/24"]),
        "web": lambda: r.put(Entry.build("e1", "n1", "web", "198.51.100.2/24", None)),
        "gopher": lambda: r.put(Entry.build("e2", "n2", "gopher", "198.51.101.2/24", None)),
        "go": lambda: r.put(Entry.build("e4", "n2", "go", "198.51.101.4/24", None)),
    }
    for step in steps:
        actions[step]()
    return r


QUESTIONS = [
    ("go.dev", "A"),
    ("go.dev", "AAAA"),
    ("gopher", "A"),
    ("go", "A"),
    ("web", "A"),
    ("no-such.front", "A"),
    ("2.101.51.198.in-addr.arpa", "PTR"),
    ("9.100.51.198.in-addr.arpa", "PTR"),
]


def test_the_same_question_gets_the_same_answer_whatever_happened_elsewhere() -> None:
    """Every order of the other network's events, and whether they happened at all."""
    outcomes: dict[tuple[str, str], set[str]] = {}
    base = ("front", "web")
    for extra in itertools.chain.from_iterable(itertools.permutations(("dev", "gopher", "go"), n) for n in range(4)):
        for steps in {base + extra, extra + base}:
            r = _build(steps)
            for name, qtype in QUESTIONS:
                reply = ask(r, name, qtype)
                got = rcode(reply) + "".join(sorted(str(rr.rdata) for rr in (reply.rr if reply else [])))
                outcomes.setdefault((name, qtype), set()).add(got)
    assert {k: v for k, v in outcomes.items() if len(v) > 1} == {}
    assert outcomes[("go.dev", "A")] == {"forward"} and outcomes[("no-such.front", "A")] == {"NXDOMAIN"}


# --- conformance ----------------------------------------------------------------


def test_nxdomain_holds_for_every_type_and_below(records: Records) -> None:
    for qtype in ("A", "AAAA", "MX", "TXT", "SRV", "PTR", "CNAME", "ANY", "SOA", "NS"):
        reply = ask(records, "no-such.front", qtype)
        assert rcode(reply) == "NXDOMAIN" and reply.header.aa, qtype
        (soa,) = reply.auth
        assert soa.rtype == QTYPE.SOA and str(soa.rname) == "front." and soa.ttl == NEGATIVE_TTL
        assert rcode(ask(records, "deeper.no-such.front", qtype)) == "NXDOMAIN"
    assert rcode(ask(records, "x.y.web.front", "A")) == "NXDOMAIN"


def test_existing_names_answer_nodata_for_types_they_lack(records: Records) -> None:
    for name in ("web", "www", "web.front", "www.front"):
        for qtype in ("MX", "TXT", "SRV", "CNAME", "NS", "SOA", "PTR", "CAA"):
            reply = ask(records, name, qtype)
            assert rcode(reply) == "NOERROR" and reply.rr == [] and reply.header.aa, (name, qtype)
            # SOA only where a zone of ours is above the name (single labels have none: not cached)
            assert [str(rr.rname) for rr in reply.auth] == (["front."] if "." in name else [])
    reply = ask(records, "web", "ANY")
    assert sorted(QTYPE.get(rr.rtype) for rr in reply.rr) == ["A", "AAAA"]


def test_a_network_domain_itself_exists(records: Records) -> None:
    reply = ask(records, "front", "A")
    assert rcode(reply) == "NOERROR" and reply.rr == [] and str(reply.auth[0].rname) == "front."
    reply = ask(records, "front", "SOA")
    assert [QTYPE.get(rr.rtype) for rr in reply.rr] == ["SOA"] and str(reply.rr[0].rdata.mname) == "front."


def test_services(records: Records) -> None:
    reply = ask(records, "_http._tcp.web", "SRV")
    assert [str(rr.rdata) for rr in reply.rr] == ["0 0 80 web.front."]
    assert sorted(QTYPE.get(rr.rtype) for rr in reply.ar) == ["A", "AAAA"]
    # the service name exists: other types are NODATA, not forwarded
    reply = ask(records, "_http._tcp.web.front", "A")
    assert rcode(reply) == "NOERROR" and reply.rr == []
    # a known name without that service: NXDOMAIN for every type
    for qtype in ("SRV", "A"):
        assert rcode(ask(records, "_ftp._tcp.web", qtype)) == "NXDOMAIN"
    # an unknown host: not ours unless in a view domain
    assert ask(records, "_http._tcp.example.com", "SRV") is None
    assert rcode(ask(records, "_http._tcp.nobody.front", "SRV")) == "NXDOMAIN"


def test_reverse_zones(records: Records) -> None:
    reply = ask(records, "2.100.51.198.in-addr.arpa", "PTR")
    assert [str(rr.rdata) for rr in reply.rr] == ["web.front."]
    reply = ask(records, "2.100.51.198.in-addr.arpa", "A")  # exists: NODATA
    assert rcode(reply) == "NOERROR" and reply.rr == [] and str(reply.auth[0].rname) == "100.51.198.in-addr.arpa."
    reply = ask(records, "9.100.51.198.in-addr.arpa", "PTR")
    assert rcode(reply) == "NXDOMAIN" and str(reply.auth[0].rname) == "100.51.198.in-addr.arpa."
    assert rcode(ask(records, "x.2.100.51.198.in-addr.arpa", "PTR")) == "NXDOMAIN"
    assert rcode(ask(records, "100.51.198.in-addr.arpa", "PTR")) == "NOERROR"  # our subnet's node
    assert ask(records, "51.198.in-addr.arpa", "PTR") is None  # above our subnet: not ours
    assert ask(records, "in-addr.arpa", "SOA") is None
    v6 = "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
    assert [str(rr.rdata) for rr in ask(records, v6, "PTR").rr] == ["web.front."]
    assert rcode(ask(records, "f" + v6[1:], "PTR")) == "NXDOMAIN"
    assert ask(records, "1.0.0.0.ip6.arpa", "PTR") is None


def test_reverse_name_parsing() -> None:
    assert parse_reverse("5.100.51.198.in-addr.arpa")[0].compressed == "198.51.100.5/32"
    assert parse_reverse("100.51.198.in-addr.arpa") == (parse_reverse("0.100.51.198.in-addr.arpa")[0].supernet(8), True)
    assert parse_reverse("x.5.100.51.198.in-addr.arpa")[1] is False
    assert parse_reverse("01.100.51.198.in-addr.arpa")[1] is False  # not a canonical octet
    assert parse_reverse("example.com") is None
    net, whole = parse_reverse("8.b.d.0.1.0.0.2.ip6.arpa")
    assert net.compressed == "2001:db8::/32" and whole
    assert reverse_name(parse_reverse("100.51.198.in-addr.arpa")[0]) == "100.51.198.in-addr.arpa"


def test_single_label_unknown_names_are_forwarded(records: Records) -> None:
    for name in ("printer", "localhost", "dev", "sealed"):  # networks not in the view included
        assert ask(records, name) is None


def test_edns(records: Records) -> None:
    q = DNSRecord.question("web", "A")
    q.add_ar(EDNS0(udp_len=1232))
    reply = Resolver(records).resolve(q, FRONT)
    (opt,) = [rr for rr in reply.ar if rr.rtype == QTYPE.OPT]
    assert opt.rclass == 4096 and reply.rr
    # also on negative answers
    q = DNSRecord.question("no-such.front", "A")
    q.add_ar(EDNS0(udp_len=1232))
    assert [rr.rtype for rr in Resolver(records).resolve(q, FRONT).ar] == [QTYPE.OPT]
    # no OPT in the query, none in the answer
    assert all(rr.rtype != QTYPE.OPT for rr in ask(records, "web").ar)
    # version 1: BADVERS (16: 1 in the OPT's extended RCODE, 0 in the header), OPT version 0
    stats = DnsStats()
    q = DNSRecord.question("web", "A")
    q.add_ar(EDNS0(udp_len=1232, version=1))
    reply = Resolver(records, stats=stats).resolve(q, FRONT)
    (opt,) = reply.ar
    assert reply.header.rcode == 0 and opt.ttl >> 24 == 1 and (opt.ttl >> 16) & 0xFF == 0 and not reply.rr
    assert DNSRecord.parse(reply.pack()).ar[0].ttl >> 24 == 1
    # two OPT records: FORMERR, without OPT
    q = DNSRecord.question("web", "A")
    q.add_ar(EDNS0(udp_len=1232))
    q.add_ar(EDNS0(udp_len=1232))
    reply = Resolver(records, stats=stats).resolve(DNSRecord.parse(q.pack()), FRONT)
    assert rcode(reply) == "FORMERR" and reply.ar == []
    assert (stats.badvers, stats.formerr) == (1, 1)


def test_header_checks(records: Records) -> None:
    stats = DnsStats()
    assert rcode(ask(records, "web", qr=1, stats=stats)) == "FORMERR"
    reply = ask(records, "web", opcode=OPCODE.STATUS, stats=stats)
    assert rcode(reply) == "NOTIMP" and reply.header.opcode == OPCODE.STATUS  # echoed: dig matches on it
    assert rcode(ask(records, "web", opcode=OPCODE.UPDATE, stats=stats)) == "NOTIMP"
    q = DNSRecord.question("web", "A")
    q.add_question(DNSRecord.question("www", "A").q)
    reply = Resolver(records, stats=stats).resolve(q, FRONT)
    assert rcode(reply) == "FORMERR" and reply.questions == [] and reply.header.id == q.header.id
    empty = DNSRecord.parse(bytes.fromhex("123401000000000000000000"))
    assert rcode(Resolver(records).resolve(empty, FRONT)) == "FORMERR"
    assert rcode(ask(records, "front", "AXFR", stats=stats)) == "NOTIMP"
    assert ask(records, "example.com", "AXFR") is None
    assert (stats.formerr, stats.notimp) == (2, 3)
    # case is kept in the echoed question and the answer's owner (0x20)
    reply = ask(records, "WeB.FrOnT")
    assert str(reply.q.qname) == "WeB.FrOnT." and str(reply.rr[0].rname) == "WeB.FrOnT."


def test_nxdomain_count_and_histogram() -> None:
    r = Records()
    r.set_network("n1", "front", ["198.51.100.0/24"])
    stats = DnsStats()
    for _ in range(3):
        ask(r, "nope.front", stats=stats)
    assert stats.nxdomain == 3
    h = Histogram()
    for s in (0.0001, 0.003, 0.003, 7.0):
        h.observe(s)
    cum = dict(h.cumulative())
    assert cum["0.0005"] == 1 and cum["0.005"] == 3 and cum["5.0"] == 3 and cum["+Inf"] == 4 and h.count == 4
    stats.upstream_failed("2001:db8::53", 53)
    stats.upstream_failed("198.51.100.53", 5353)
    assert stats.upstream_failures == {"[2001:db8::53]:53": 1, "198.51.100.53:5353": 1}
