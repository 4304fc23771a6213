"""The forwarded-answer cache: upstream answers kept for their TTL, shared by the host's sandboxes.

Works on wire bytes, never re-encoding: a stored answer remembers where each
record's TTL sits, and a reply from the cache is the stored answer with the
client's ID and question (its letter case), and every TTL decremented by the
answer's age.  Kept:

- positive answers (NOERROR with records) for the smallest TTL of their records;
- negative answers (NXDOMAIN, or NOERROR without records: NODATA) per
  RFC 2308: for the SOA record's TTL or its MINIMUM field, whichever is
  smaller, at most 3 hours; a negative answer without an SOA is not kept;
- never: truncated answers, SERVFAIL/REFUSED/FORMERR, other opcodes, a TTL of 0.

The key is the upstream set (so sandboxes with their own ``--dns`` servers
never share answers with the host's), the question (name case-folded, type,
class) and the query bits an answer depends on: RD, CD, EDNS present, DO.
Bounded in entries, least recently used first out; :meth:`AnswerCache.flush`
empties it (the forwarder calls it when the host's upstreams change).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Hashable

MAX_TTL = 86400  # a day: no answer is kept longer, whatever it says
MAX_NEGATIVE_TTL = 10800  # RFC 2308 section 5: negative answers at most 3 hours
_OPT, _SOA = 41, 6


def question_end(wire: bytes) -> int | None:
    """Offset just past the (single) question of a DNS message; None when it
    is not exactly one plain question (compressed or cut short)."""
    if len(wire) < 12 or wire[4:6] != b"\x00\x01":
        return None
    i = 12
    while True:
        if i >= len(wire):
            return None
        n = wire[i]
        if n == 0:
            break
        if n & 0xC0:
            return None
        i += n + 1
    i += 5
    return i if i <= len(wire) else None


def _skip_name(wire: bytes, i: int) -> int:
    while True:
        n = wire[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        if n & 0xC0:
            raise ValueError("bad label")
        i += n + 1


def records(wire: bytes, start: int) -> list[tuple[int, int, int, int, int]]:
    """(section, type, TTL offset, TTL, rdata end) of every record after the question;
    ValueError (or IndexError) on a malformed message."""
    counts = struct.unpack_from("!HHH", wire, 6)
    out = []
    i = start
    for section, count in enumerate(counts):
        for _ in range(count):
            i = _skip_name(wire, i)
            rtype, _, ttl, rdlen = struct.unpack_from("!HHIH", wire, i)
            end = i + 10 + rdlen
            if end > len(wire):
                raise ValueError("record runs past the message")
            out.append((section, rtype, i + 4, ttl, end))
            i = end
    return out


def lifetime(wire: bytes, qend: int) -> tuple[int, list[int]] | None:
    """How long ``wire`` (an upstream's answer) may be kept, and its TTL offsets; None: not at all."""
    flags = wire[2] << 8 | wire[3]
    rcode, opcode = flags & 0xF, (flags >> 11) & 0xF
    if not flags & 0x8000 or flags & 0x0200 or opcode != 0 or rcode not in (0, 3):
        return None
    try:
        rrs = records(wire, qend)
    except (ValueError, IndexError, struct.error):
        return None
    ttls = [(off, ttl) for _, rtype, off, ttl, _ in rrs if rtype != _OPT]
    answers = [r for r in rrs if r[0] == 0]
    if rcode == 0 and answers:
        ttl = min(t for _, t in ttls)
        cap = MAX_TTL
    else:  # negative: RFC 2308 wants the SOA of the authority section
        soas = [
            (ttl, struct.unpack_from("!I", wire, end - 4)[0]) for sec, rt, _, ttl, end in rrs if sec == 1 and rt == _SOA
        ]
        if not soas:
            return None
        ttl = min([min(soas[0]), *(t for _, t in ttls)])
        cap = MAX_NEGATIVE_TTL
    ttl = min(ttl, cap)
    if ttl <= 0:
        return None
    return ttl, [off for off, _ in ttls]


class Entry:
    """One kept answer; :meth:`reply` makes the answer to a query from it."""

    __slots__ = ("_age", "_tail", "expires", "offsets", "qend", "stored", "ttls", "wire")

    def __init__(self, wire: bytes, qend: int, ttl: int, offsets: list[int], now: float) -> None:
        self.wire, self.qend, self.offsets = wire, qend, offsets
        self.ttls = [struct.unpack_from("!I", wire, off)[0] for off in offsets]
        self.stored, self.expires = now, now + ttl
        self._age, self._tail = 0, wire[qend:]

    def reply(self, query: bytes, now: float) -> bytes | None:
        """The answer to ``query`` (same question, any ID and letter case) with
        TTLs decremented by the answer's age; None once expired."""
        if now >= self.expires:
            return None
        age = int(now - self.stored)
        if age != self._age:
            patched = bytearray(self.wire)
            for off, ttl in zip(self.offsets, self.ttls, strict=True):
                struct.pack_into("!I", patched, off, max(ttl - age, 0))
            self._age, self._tail = age, bytes(patched[self.qend :])
        return query[:2] + self.wire[2:12] + query[12 : self.qend] + self._tail


class AnswerCache:
    """See the module docstring.  ``size`` entries at most; 0 keeps nothing."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[Hashable, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(
        upstreams: tuple[tuple[str, int], ...], query: bytes, qend: int, edns: bool, do: bool
    ) -> tuple[tuple[tuple[str, int], ...], bytes, bytes, tuple[int, int, bool, bool]]:
        """The cache key of ``query`` (its question ends at ``qend``) sent to ``upstreams``."""
        bits = (query[2] & 0x01, query[3] & 0x10, edns, do)  # RD, CD, EDNS, DO
        return (upstreams, query[12 : qend - 4].lower(), query[qend - 4 : qend], bits)

    def get(self, key: Hashable, now: float) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry.expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: Hashable, wire: bytes, qend: int, now: float) -> Entry | None:
        """Keep ``wire`` (the upstream's answer) if it may be kept; the new entry or None."""
        if self.size <= 0 or len(wire) < qend:
            return None
        kept = lifetime(wire, qend)
        if kept is None:
            return None
        entry = Entry(wire, qend, kept[0], kept[1], now)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return entry

    def flush(self) -> None:
        """Forget everything; entries still referenced elsewhere (the server's
        per-sandbox caches) expire at once."""
        for entry in self._entries.values():
            entry.expires = 0.0
        self._entries.clear()
