"""Answers one DNS question from libnet's records (pure: ``query, view -> answer``).

:meth:`Resolver.resolve` has three outcomes: a reply to send, ``None`` for
"forward it upstream", or a REFUSED reply for "this sandbox may not forward".

What is libnet's is decided from the asking sandbox's *view* (the networks it
is on) only, see :mod:`libnet.dns.records`:

- A known name answers A and AAAA with what it has; a name with no IPv6
  address answers AAAA with an empty NOERROR (NODATA) -- never forwarded
  (Docker sent those upstream, where they timed out).  Every other type of a
  known name: NODATA too.  Several endpoints behind one name (an alias): every
  address, in an order shuffled per answer (round robin).
- PTR for the view's addresses (IPv4 and IPv6) gives ``name.network``; SRV for
  ``_service._proto.<name>`` gives the endpoints offering it, with their
  addresses in the additional section.
- Unknown names under a view network's domain (``no-such.mynet``), unknown
  services of a known name, reverse names inside a view network's subnet:
  NXDOMAIN at once.  A network's domain itself (``mynet``) and partial reverse
  names inside a view subnet exist (they have names below them): NODATA.
- Anything else is not libnet's: forwarded.  That includes single-label
  names that are no endpoint of the view (``printer``): Docker forwards them
  too, and the host's resolver may know them (search domains are the stub's
  business, not ours), and names of endpoints or networks the sandbox is not
  on (answering those would tell it what exists elsewhere).

RFC conformance (1035, 2181, 6891, 8020) for a stub-facing server:

- NXDOMAIN for a name holds for every type, and names below a nonexistent
  name are NXDOMAIN too (RFC 8020); a name that exists answers NODATA for
  types it lacks.  Negative answers for names in a network's domain or reverse
  zone carry that zone's SOA in the authority section (RFC 2308), with a short
  negative TTL (:data:`NEGATIVE_TTL`: containers come and go).  Negative
  answers for single-label names and aliases carry none: no zone above them is
  libnet's, and a negative answer without SOA is not cached (RFC 2308 s.5).
- EDNS (RFC 6891): an OPT record in the query is answered with one (our
  payload size); a version above 0 gets BADVERS; two OPT records, or one
  outside the additional section, get FORMERR (without OPT).
- A message with QR set, or with no question or several, gets FORMERR
  (RFC 9619: one question); an opcode other than QUERY gets NOTIMP.  Zone
  transfers of libnet's zones: NOTIMP.  Classes other than IN (and ANY) are
  not libnet's.

Internal networks (the CVE-2024-29018 kind): a sandbox whose networks are all
``internal`` must not reach anything outside, and forwarding its questions
from the host's namespace would carry data out in the names themselves.  So
for such a view, whatever would be forwarded is answered REFUSED here and
never leaves.  Docker's fix ends in SERVFAIL (its forwarding loop skips the
host-namespace upstreams and finds none left); libnet answers REFUSED because
this is policy, not a failure: it is final (SERVFAIL invites retries and is
what an unreachable upstream looks like), it is counted apart from upstream
failures, and stub resolvers (glibc, musl) give the same "cannot resolve" to
the application either way.  A sandbox on an internal and a normal network
forwards as usual.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from dnslib import AAAA, EDNS0, OPCODE, PTR, QTYPE, RCODE, RR, SOA, SRV, A, DNSHeader, DNSRecord

from libnet.dns.records import Entry, Records, Service, Subnet, parse_reverse, reverse_name
from libnet.dns.stats import DnsStats

DEFAULT_TTL = 600
#: TTL and SOA minimum of negative answers (RFC 2308), at most the records' TTL
NEGATIVE_TTL = 5
#: the largest UDP payload libnet advertises and accepts (RFC 9715's 1232 is
#: the safe default on the Internet; inside a host 4096 is fine)
MAX_UDP_PAYLOAD = 4096
#: extended RCODE BADVERS (RFC 6891): 16, its upper 8 bits go in the OPT record
BADVERS = 16
_ZONE_TRANSFER = (QTYPE.AXFR, QTYPE.IXFR)
_ADDRESS_TYPES = (QTYPE.A, QTYPE.AAAA, QTYPE.ANY)


@dataclass(frozen=True)
class ResolverConfig:
    ttl: int = DEFAULT_TTL


class Resolver:
    """See the module docstring.  ``stats`` counts the negative outcomes."""

    def __init__(self, records: Records, config: ResolverConfig | None = None, stats: DnsStats | None = None) -> None:
        self.records = records
        self.ttl = (config or ResolverConfig()).ttl
        self.negative_ttl = min(self.ttl, NEGATIVE_TTL)
        self.stats = stats if stats is not None else DnsStats()

    def resolve(self, request: DNSRecord, view: frozenset[str]) -> DNSRecord | None:
        """The reply to ``request``; ``None`` when it must go upstream."""
        header = request.header
        if header.qr or len(request.questions) != 1:
            return self._formerr(request)
        if header.opcode != OPCODE.QUERY:
            self.stats.notimp += 1
            return self._error(request, RCODE.NOTIMP)
        opts = [rr for rr in request.ar if rr.rtype == QTYPE.OPT]
        if len(opts) > 1 or any(rr.rtype == QTYPE.OPT for rr in (*request.rr, *request.auth)):
            return self._formerr(request)
        if opts and (opts[0].ttl >> 16) & 0xFF:  # EDNS version > 0
            self.stats.badvers += 1
            reply = self._reply(request, edns=False)
            reply.add_ar(EDNS0(ext_rcode=BADVERS >> 4, udp_len=MAX_UDP_PAYLOAD))
            reply.header.rcode = BADVERS & 0xF
            reply.header.aa = 0
            return reply
        q = request.q
        if q.qclass not in (1, 255):  # IN, ANY
            return self._outside(request, view)
        name = str(q.qname).rstrip(".").lower()
        reverse = parse_reverse(name)
        if reverse is not None:
            return self._reverse(request, view, *reverse)
        return self._name(request, view, name)

    # --- forward names ------------------------------------------------------

    def _name(self, request: DNSRecord, view: frozenset[str], name: str) -> DNSRecord | None:
        qtype = request.q.qtype
        zone = self.records.zone(view, name)
        entries = self.records.lookup(view, name)
        if entries:
            return self._existing(request, zone, self._addresses(request, entries))
        offering = self._services(view, name)
        if offering is not None:
            host_zone = self.records.zone(view, name.split(".", 2)[2])
            if not offering:  # a known name without that service
                return self._nxdomain(request, host_zone)
            if qtype not in (QTYPE.SRV, QTYPE.ANY):
                return self._existing(request, host_zone, [])
            return self._existing(request, host_zone, *self._srv(request, offering))
        host = self._service_parent(view, name)
        if host is not None:  # "_tcp.<name>": an empty non-terminal above an SRV name, not NXDOMAIN (RFC 8020)
            return self._existing(request, self.records.zone(view, host), [])
        if zone is None:
            return self._outside(request, view)
        if name != zone:
            return self._nxdomain(request, zone)
        # the network's domain itself: it exists (names lie below it)
        soa = [self._soa(zone, self.ttl)] if qtype in (QTYPE.SOA, QTYPE.ANY) else []
        return self._existing(request, zone, soa)

    def _addresses(self, request: DNSRecord, entries: list[Entry]) -> list[RR]:
        qname, qtype = request.q.qname, request.q.qtype
        rrs = []
        if qtype in (QTYPE.A, QTYPE.ANY):
            rrs += [RR(qname, QTYPE.A, rdata=A(ip), ttl=self.ttl) for ip in _unique(e.ipv4 for e in entries)]
        if qtype in (QTYPE.AAAA, QTYPE.ANY):
            rrs += [RR(qname, QTYPE.AAAA, rdata=AAAA(ip), ttl=self.ttl) for ip in _unique(e.ipv6 for e in entries)]
        random.shuffle(rrs)
        return rrs

    def _service_parent(self, view: frozenset[str], name: str) -> str | None:
        """For ``_proto.<name>`` with a service of that protocol on ``<name>``: ``<name>``
        (``_http._tcp.<name>`` exists below it, so ``_tcp.<name>`` exists too)."""
        label, _, host = name.partition(".")
        if not host or not label.startswith("_"):
            return None
        entries = self.records.lookup(view, host)
        return host if any(s.protocol == label[1:] for e in entries for s in e.services) else None

    def _services(self, view: frozenset[str], name: str) -> list[tuple[Entry, Service]] | None:
        """For ``_service._proto.<name>`` with ``<name>`` known in the view: the
        (entry, service) pairs offering it (maybe none); None for other names."""
        labels = name.split(".", 2)
        if len(labels) < 3 or not labels[0].startswith("_") or not labels[1].startswith("_"):
            return None
        entries = self.records.lookup(view, labels[2])
        if not entries:
            return None
        service, proto = labels[0][1:], labels[1][1:]
        return [(e, s) for e in entries for s in e.services if s.name == service and s.protocol == proto]

    def _srv(self, request: DNSRecord, offering: list[tuple[Entry, Service]]) -> tuple[list[RR], list[RR]]:
        """SRV records, and their targets' addresses for the additional section."""
        random.shuffle(offering)
        answers, extra = [], []
        for e, s in offering:
            target = self._fqdn(e)
            answers.append(RR(request.q.qname, QTYPE.SRV, rdata=SRV(0, 0, s.port, target), ttl=self.ttl))
            if e.ipv4:
                extra.append(RR(target, QTYPE.A, rdata=A(e.ipv4), ttl=self.ttl))
            if e.ipv6:
                extra.append(RR(target, QTYPE.AAAA, rdata=AAAA(e.ipv6), ttl=self.ttl))
        return answers, extra

    # --- reverse names ------------------------------------------------------

    def _reverse(self, request: DNSRecord, view: frozenset[str], prefix: Subnet, whole: bool) -> DNSRecord | None:
        subnet = self.records.reverse_zone(view, prefix)
        if subnet is None:
            return self._outside(request, view)
        zone = reverse_name(subnet)
        if not whole:  # a name below a node of our reverse zone that cannot exist
            return self._nxdomain(request, zone)
        if prefix.num_addresses > 1:  # a partial reverse name inside our subnet: it has names below
            soa = [self._soa(zone, self.ttl)] if request.q.qtype in (QTYPE.SOA, QTYPE.ANY) else []
            return self._existing(request, zone, soa)
        entries = self.records.by_address(view, str(prefix.network_address))
        if not entries:
            return self._nxdomain(request, zone)
        rrs = []
        if request.q.qtype in (QTYPE.PTR, QTYPE.ANY):
            rrs = [
                RR(request.q.qname, QTYPE.PTR, rdata=PTR(target), ttl=self.ttl)
                for target in _unique(self._fqdn(e) for e in entries)
            ]
        return self._existing(request, zone, rrs)

    # --- outcomes -----------------------------------------------------------

    def _existing(
        self, request: DNSRecord, zone: str | None, answers: list[RR], additional: Iterable[RR] = ()
    ) -> DNSRecord:
        """A name that exists: its records of the asked type, or NODATA (with the zone's SOA if any)."""
        if request.q.qtype in _ZONE_TRANSFER:
            self.stats.notimp += 1
            return self._error(request, RCODE.NOTIMP)
        reply = self._reply(request)
        for rr in answers:
            reply.add_answer(rr)
        for rr in additional:
            reply.add_ar(rr)
        if not answers and zone is not None:
            reply.add_auth(self._soa(zone, self.negative_ttl))
        return reply

    def _nxdomain(self, request: DNSRecord, zone: str | None) -> DNSRecord:
        self.stats.nxdomain += 1
        reply = self._error(request, RCODE.NXDOMAIN)
        if zone is not None:
            reply.add_auth(self._soa(zone, self.negative_ttl))
        return reply

    def _outside(self, request: DNSRecord, view: frozenset[str]) -> DNSRecord | None:
        """Not libnet's: forward (None) -- unless the view has no way out."""
        if self.records.forwards(view):
            return None
        self.stats.refused += 1
        return self._error(request, RCODE.REFUSED)

    def _formerr(self, request: DNSRecord) -> DNSRecord:
        """FORMERR, echoing the question only if there was exactly one, never with OPT."""
        self.stats.formerr += 1
        h = request.header
        one = len(request.questions) == 1
        return DNSRecord(
            header=DNSHeader(id=h.id, qr=1, opcode=h.opcode, rd=h.rd, ra=1, rcode=RCODE.FORMERR, q=int(one)),
            q=request.q if one else None,
        )

    def _soa(self, zone: str, ttl: int) -> RR:
        minimum = self.negative_ttl
        return RR(
            zone + ".",
            QTYPE.SOA,
            rdata=SOA(zone + ".", "hostmaster." + zone + ".", (1, self.ttl, self.ttl, self.ttl, minimum)),
            ttl=ttl,
        )

    def _fqdn(self, e: Entry) -> str:
        return f"{e.name}.{self.records.network_name(e.network_id)}."

    @staticmethod
    def _reply(request: DNSRecord, edns: bool = True) -> DNSRecord:
        """An authoritative NOERROR reply echoing the question (and EDNS0 if asked)."""
        reply = DNSRecord(
            header=DNSHeader(
                id=request.header.id, qr=1, opcode=request.header.opcode, aa=1, ra=1, rd=request.header.rd, q=1
            ),
            q=request.q,
        )
        if edns and any(rr.rtype == QTYPE.OPT for rr in request.ar):
            reply.add_ar(EDNS0(udp_len=MAX_UDP_PAYLOAD))
        return reply

    @classmethod
    def _error(cls, request: DNSRecord, rcode: int) -> DNSRecord:
        reply = cls._reply(request)
        reply.header.rcode = rcode
        if rcode != RCODE.NXDOMAIN:
            reply.header.aa = 0
        return reply


def _unique(items: Iterable[str | None]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def servfail(request: DNSRecord) -> DNSRecord:
    """A SERVFAIL reply to ``request`` (forwarding failed)."""
    return Resolver._error(request, RCODE.SERVFAIL)
