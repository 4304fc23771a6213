"""Batched UDP I/O for the DNS server: ``recvmmsg(2)``/``sendmmsg(2)`` from libc through ctypes.

Profiling the server's UDP path (py-spy, dnsperf against a warm cache) put
~90% of the time in ``sendto``/``recvfrom`` -- one system call per datagram
each way, plus a Python address tuple made and parsed per datagram.  These
two calls move up to :data:`BATCH` datagrams per system call, and the peer's
address stays a raw ``sockaddr`` that goes back out untouched.

One :class:`Batch` per address family and server: a receive arena of
``BATCH`` slots of :data:`SLOT` bytes and a send arena of the same shape,
used synchronously within one readiness callback (the one event loop never
runs two at once).  A datagram longer than ``SLOT`` arrives cut short and is
flagged (:meth:`Batch.truncated`); the server answers it FORMERR -- no DNS
query over UDP is that long.  Where libc lacks these calls (not Linux),
:func:`available` is False and the server uses ``recvfrom``/``sendto``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import socket
import struct
import sys

BATCH = 64
SLOT = 4096
MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


_SOCKADDR = 28  # sockaddr_in6; a sockaddr_in (16) fits
_libc = None
if sys.platform.startswith("linux"):
    try:
        _lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _recvmmsg, _sendmmsg = _lib.recvmmsg, _lib.sendmmsg
        _recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
        _sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
        _recvmmsg.restype = _sendmmsg.restype = ctypes.c_int
        _libc = _lib
    except (OSError, AttributeError):
        _libc = None


def available() -> bool:
    """Whether recvmmsg/sendmmsg can be used here."""
    return _libc is not None and ctypes.sizeof(ctypes.c_void_p) == ctypes.sizeof(ctypes.c_size_t)


def _arena(size: int) -> ctypes.Array[ctypes.c_char]:
    """``size`` zeroed bytes in anonymous memory that become resident only as they are written:
    a quiet server touches the first slots, not 2 x 256 KiB per family (``create_string_buffer``
    writes every byte, so it all counted in the agent's RSS: issue 22)."""
    area = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return (ctypes.c_char * size).from_buffer(area)  # keeps ``area`` alive (its _objects)


class Batch:
    """The arenas and message vectors for one address family (see the module docstring)."""

    def __init__(self, family: int) -> None:
        self.family = family
        size, word = ctypes.sizeof(_Mmsghdr), ctypes.sizeof(ctypes.c_size_t)
        self._keep = []  # the ctypes objects behind the raw addresses below
        self.rbuf, self.sbuf = _arena(BATCH * SLOT), _arena(BATCH * SLOT)
        names = ctypes.create_string_buffer(BATCH * _SOCKADDR)
        riov, siov = (_Iovec * BATCH)(), (_Iovec * BATCH)()
        rmsg, smsg = (_Mmsghdr * BATCH)(), (_Mmsghdr * BATCH)()
        self._keep += [names, riov, siov, rmsg, smsg]
        base_r, base_s, base_n = ctypes.addressof(self.rbuf), ctypes.addressof(self.sbuf), ctypes.addressof(names)
        self.name_addr = [base_n + i * _SOCKADDR for i in range(BATCH)]
        for i in range(BATCH):
            riov[i].base, riov[i].len = base_r + i * SLOT, SLOT
            siov[i].base, siov[i].len = base_s + i * SLOT, 0
            r, s = rmsg[i].hdr, smsg[i].hdr
            r.name, r.namelen, r.iov, r.iovlen = self.name_addr[i], _SOCKADDR, ctypes.addressof(riov[i]), 1
            s.name, s.namelen, s.iov, s.iovlen = self.name_addr[i], _SOCKADDR, ctypes.addressof(siov[i]), 1
        self.rmsg_addr, self.smsg_addr, self.msg_size = ctypes.addressof(rmsg), ctypes.addressof(smsg), size
        # word views for the per-datagram fields (all naturally aligned)
        self.rview = memoryview(self.rbuf).cast("B")
        self.sview = memoryview(self.sbuf).cast("B")
        self.rmsg32 = memoryview(rmsg).cast("B").cast("I")
        self.smsgW = memoryview(smsg).cast("B").cast("N")  # type: ignore[call-overload]  # typeshed lacks size_t "N"
        self.siovW = memoryview(siov).cast("B").cast("N")  # type: ignore[call-overload]  # typeshed lacks size_t "N"
        self.namesB = memoryview(names).cast("B")
        len_off = _Mmsghdr.len.offset
        flags_off = _Mmsghdr.hdr.offset + _Msghdr.flags.offset
        self.stride32, self.len32, self.flags32 = size // 4, len_off // 4, flags_off // 4
        self.strideW, self.nameW = size // word, (_Mmsghdr.hdr.offset + _Msghdr.name.offset) // word
        assert size % word == 0 and len_off % 4 == 0 and flags_off % 4 == 0

    def recv(self, fd: int) -> int:
        """Datagrams now waiting on ``fd``, up to BATCH; 0 when none; -errno on another error."""
        n: int = _recvmmsg(fd, self.rmsg_addr, BATCH, MSG_DONTWAIT, None)
        if n < 0:
            err = ctypes.get_errno()
            return 0 if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR) else -err
        return n

    def datagram(self, i: int) -> bytes:
        n = self.rmsg32[i * self.stride32 + self.len32]
        return self.rview[i * SLOT : i * SLOT + min(n, SLOT)].tobytes()

    def truncated(self, i: int) -> bool:
        return bool(self.rmsg32[i * self.stride32 + self.flags32] & MSG_TRUNC)

    def address(self, i: int) -> tuple[str, int] | tuple[str, int, int, int]:
        """Datagram ``i``'s source as Python's socket module writes it."""
        raw = self.namesB[i * _SOCKADDR : (i + 1) * _SOCKADDR].tobytes()
        port = struct.unpack_from("!H", raw, 2)[0]
        if self.family == socket.AF_INET:
            return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
        flow = struct.unpack_from("!I", raw, 4)[0]
        scope = struct.unpack_from("=I", raw, 24)[0]
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, flow, scope

    def send(self, fd: int, count: int) -> int:
        """Send the first ``count`` queued replies; a reply the kernel refuses is
        skipped (as a failed ``sendto`` would be).  Returns how many went out."""
        done = sent = 0
        while done < count:
            n = _sendmmsg(fd, self.smsg_addr + done * self.msg_size, count - done, 0)
            if n <= 0:
                done += 1  # the first one failed: drop it, go on with the rest
                continue
            done += n
            sent += n
        return sent
