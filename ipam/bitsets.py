"""In-memory sets of used addresses, with serial "next free" search.

Addresses are integers in an inclusive range ``[lo, hi]``.

- :class:`Bitmap` (IPv4): one bit per address, so a /16 costs 8 KiB and a /8
  2 MiB; the next free address is found by a C-speed scan for a byte that is
  not ``0xff``.
- :class:`SparseSet` (IPv6): only the used addresses, so a /48 or a /64
  costs what is allocated, never what the pool could hold (a bitmap of a /64
  would need 2^64 bits).

Both search *serially*: from just after a cursor, wrapping at the end, so a
just-released address is handed out again only after the rest of the range.
"""

from __future__ import annotations

import re
from typing import Protocol

_NOT_FULL = re.compile(rb"[^\xff]")


class AddressSet(Protocol):
    """A set of used addresses in ``[lo, hi]`` with a serial free search."""

    lo: int
    hi: int

    def add(self, n: int) -> None: ...
    def discard(self, n: int) -> None: ...
    def __contains__(self, n: object) -> bool: ...
    def __len__(self) -> int: ...
    def next_free(self, after: int) -> int | None:
        """First free address after ``after`` (wrapping), or None when full."""
        ...


class Bitmap:
    """Used addresses as bits; see the module docstring."""

    def __init__(self, lo: int, hi: int) -> None:
        if hi < lo:
            raise ValueError("empty range")
        self.lo, self.hi = lo, hi
        self.size = hi - lo + 1
        self._bits = bytearray((self.size + 7) // 8)
        # bits past the end are permanently "used" so the scan never returns them
        for i in range(self.size, len(self._bits) * 8):
            self._bits[i >> 3] |= 1 << (i & 7)
        self._count = 0

    def add(self, n: int) -> None:
        i = n - self.lo
        if not 0 <= i < self.size:
            raise ValueError(f"{n} outside the range")
        byte, bit = i >> 3, 1 << (i & 7)
        if not self._bits[byte] & bit:
            self._bits[byte] |= bit
            self._count += 1

    def discard(self, n: int) -> None:
        i = n - self.lo
        if 0 <= i < self.size:
            byte, bit = i >> 3, 1 << (i & 7)
            if self._bits[byte] & bit:
                self._bits[byte] &= ~bit & 0xFF
                self._count -= 1

    def __contains__(self, n: object) -> bool:
        if not isinstance(n, int):
            return False
        i = n - self.lo
        return 0 <= i < self.size and bool(self._bits[i >> 3] & (1 << (i & 7)))

    def __len__(self) -> int:
        return self._count

    def _scan(self, start: int, end: int) -> int | None:
        """First clear bit index in [start, end) or None."""
        i = start
        while i < end:
            if i & 7 == 0:
                m = _NOT_FULL.search(self._bits, i >> 3, (end + 7) >> 3)
                if m is None:
                    return None
                i = m.start() << 3
            if i >= end:
                return None
            if not self._bits[i >> 3] & (1 << (i & 7)):
                return i
            i += 1
        return None

    def next_free(self, after: int) -> int | None:
        if self._count >= self.size:
            return None
        start = after - self.lo + 1
        if not 0 <= start < self.size:
            start = 0
        if not self._bits[start >> 3] & (1 << (start & 7)):
            return self.lo + start  # the usual case in serial allocation: the very next one
        i = self._scan(start, self.size)
        if i is None:
            i = self._scan(0, start)
        return None if i is None else self.lo + i


class SparseSet:
    """Used addresses as a Python set; see the module docstring."""

    def __init__(self, lo: int, hi: int) -> None:
        if hi < lo:
            raise ValueError("empty range")
        self.lo, self.hi = lo, hi
        self.size = hi - lo + 1
        self._used: set[int] = set()
        self._high = 0  # most members since the set was last rebuilt

    def add(self, n: int) -> None:
        if not self.lo <= n <= self.hi:
            raise ValueError(f"{n} outside the range")
        self._used.add(n)
        self._high = max(self._high, len(self._used))

    def discard(self, n: int) -> None:
        self._used.discard(n)
        # a Python set never shrinks its table: rebuild it once it is mostly
        # empty, so memory follows what is allocated now (amortised O(1))
        if self._high > 1024 and len(self._used) * 8 < self._high:
            self._used = set(self._used)
            self._high = len(self._used)

    def __contains__(self, n: object) -> bool:
        return n in self._used

    def __len__(self) -> int:
        return len(self._used)

    def next_free(self, after: int) -> int | None:
        if len(self._used) >= self.size:
            return None
        n = after + 1 if self.lo <= after < self.hi else self.lo
        # at most len(used) consecutive used addresses: time bounded by what is allocated
        for _ in range(len(self._used) + 1):
            if n not in self._used:
                return n
            n = n + 1 if n < self.hi else self.lo
        return None


def address_set(lo: int, hi: int, v6: bool) -> AddressSet:
    """The right set for a pool: a bitmap for IPv4, sparse for IPv6."""
    return SparseSet(lo, hi) if v6 else Bitmap(lo, hi)
