"""Answers one DNS question from libnet's records (pure: ``query -> answer``).

- Only the names of the sandbox's own networks are visible (its *view*).
- A known name answers A and AAAA with what it has; a name with no IPv6
  address answers AAAA with an empty NOERROR -- never forwarded (Docker sent
  those upstream, where they timed out).  Other types of a known name: empty
  NOERROR too.
- Several endpoints behind one name (an alias): every address, in an order
  shuffled per answer (round robin).
- PTR for the view's addresses (IPv4 and IPv6) gives ``name.network``; SRV
  for ``_service._proto.<name>`` gives the endpoints offering it, with their
  addresses in the additional section.
- Unknown names in libnet's namespace (a network's domain, an endpoint name
  of another network, a reverse name inside a view network's subnet):
  NXDOMAIN.  Anything else: ``None``, meaning "forward upstream".
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from dnslib import AAAA, EDNS0, OPCODE, PTR, QTYPE, RCODE, RR, SRV, A, DNSHeader, DNSRecord

from libnet.dns.records import Entry, Records, reverse_to_address

DEFAULT_TTL = 600
#: the largest UDP payload libnet advertises and accepts (RFC 9715's 1232 is
#: the safe default on the Internet; inside a host 4096 is fine)
MAX_UDP_PAYLOAD = 4096


@dataclass(frozen=True)
class ResolverConfig:
    ttl: int = DEFAULT_TTL


class Resolver:
    """See the module docstring."""

    def __init__(self, records: Records, config: ResolverConfig | None = None) -> None:
        self.records = records
        self.ttl = (config or ResolverConfig()).ttl

    def resolve(self, request: DNSRecord, view: frozenset[str]) -> DNSRecord | None:
        """The reply to ``request``, or ``None`` when it must go upstream."""
        if request.header.opcode != OPCODE.QUERY:
            return self._error(request, RCODE.NOTIMP)
        if len(request.questions) != 1 or request.header.qr:
            return self._error(request, RCODE.FORMERR)
        q = request.q
        if q.qclass not in (1, 255):  # IN, ANY
            return None
        name = str(q.qname).rstrip(".").lower()
        qtype = q.qtype
        if qtype == QTYPE.PTR:
            return self._ptr(request, view, name)
        if qtype == QTYPE.SRV:
            return self._srv(request, view, name)
        entries = self.records.lookup(view, name)
        if not entries:
            return self._error(request, RCODE.NXDOMAIN) if self.records.is_libnet_name(name) else None
        reply = self._reply(request)
        rrs = []
        if qtype in (QTYPE.A, QTYPE.ANY):
            rrs += [RR(q.qname, QTYPE.A, rdata=A(ip), ttl=self.ttl) for ip in _unique(e.ipv4 for e in entries)]
        if qtype in (QTYPE.AAAA, QTYPE.ANY):
            rrs += [RR(q.qname, QTYPE.AAAA, rdata=AAAA(ip), ttl=self.ttl) for ip in _unique(e.ipv6 for e in entries)]
        random.shuffle(rrs)
        for rr in rrs:
            reply.add_answer(rr)
        return reply

    def _ptr(self, request: DNSRecord, view: frozenset[str], name: str) -> DNSRecord | None:
        address = reverse_to_address(name)
        if address is None:
            return None
        entries = self.records.by_address(view, address)
        if not entries:
            return self._error(request, RCODE.NXDOMAIN) if self.records.in_libnet_subnet(view, address) else None
        reply = self._reply(request)
        for target in _unique(self._fqdn(e) for e in entries):
            reply.add_answer(RR(request.q.qname, QTYPE.PTR, rdata=PTR(target), ttl=self.ttl))
        return reply

    def _srv(self, request: DNSRecord, view: frozenset[str], name: str) -> DNSRecord | None:
        labels = name.split(".")
        if len(labels) < 3 or not labels[0].startswith("_") or not labels[1].startswith("_"):
            return self._error(request, RCODE.NXDOMAIN) if self.records.is_libnet_name(name) else None
        service, proto, host = labels[0][1:], labels[1][1:], ".".join(labels[2:])
        entries = self.records.lookup(view, host)
        if not entries:
            return self._error(request, RCODE.NXDOMAIN) if self.records.is_libnet_name(host) else None
        reply = self._reply(request)
        offering = [(e, s) for e in entries for s in e.services if s.name == service and s.protocol == proto]
        random.shuffle(offering)
        for e, s in offering:
            target = self._fqdn(e)
            reply.add_answer(RR(request.q.qname, QTYPE.SRV, rdata=SRV(0, 0, s.port, target), ttl=self.ttl))
            if e.ipv4:
                reply.add_ar(RR(target, QTYPE.A, rdata=A(e.ipv4), ttl=self.ttl))
            if e.ipv6:
                reply.add_ar(RR(target, QTYPE.AAAA, rdata=AAAA(e.ipv6), ttl=self.ttl))
        return reply

    def _fqdn(self, e: Entry) -> str:
        return f"{e.name}.{self.records.network_name(e.network_id)}."

    @staticmethod
    def _reply(request: DNSRecord) -> DNSRecord:
        """An authoritative NOERROR reply echoing the question (and EDNS0 if asked)."""
        reply = DNSRecord(
            header=DNSHeader(id=request.header.id, qr=1, aa=1, ra=1, rd=request.header.rd, q=1),
            q=request.q,
        )
        if any(rr.rtype == QTYPE.OPT for rr in request.ar):
            reply.add_ar(EDNS0(udp_len=MAX_UDP_PAYLOAD))
        return reply

    @classmethod
    def _error(cls, request: DNSRecord, rcode: int) -> DNSRecord:
        reply = cls._reply(request)
        reply.header.rcode = rcode
        if rcode != RCODE.NXDOMAIN:
            reply.header.aa = 0
        return reply


def _unique(items) -> list:
    return list(dict.fromkeys(i for i in items if i))


def servfail(request: DNSRecord) -> DNSRecord:
    """A SERVFAIL reply to ``request`` (forwarding failed)."""
    return Resolver._error(request, RCODE.SERVFAIL)
