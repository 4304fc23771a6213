"""A batch asks for one acknowledgement (its last message's); failures are still
named by position, and answers left over from an interrupted exchange never
count for a later batch.  Read-only requests in the test process's own namespace
(``RTM_GETLINK``: no privilege needed, nothing changed)."""

from __future__ import annotations

import errno
import socket

from libnet.kernel import rtnl
from libnet.kernel.wire import HDR, NLM_F_ACK, NLM_F_DUMP_INTR, NLM_F_REQUEST, RTM_GETLINK, iter_messages

NO_SUCH_INDEX = 0x7FFFFFF0


class _Recording(socket.socket):
    sent: list[bytes]

    def send(self, data, *args, **kwargs):  # type: ignore[no-untyped-def,override]
        self.sent.append(bytes(data))
        return super().send(data, *args, **kwargs)


def _socket() -> rtnl.RtnlSocket:
    sock = _Recording(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    sock.sent = []
    return rtnl.RtnlSocket(sock)


def _get(index: int) -> rtnl.Request:
    return (RTM_GETLINK, 0, rtnl.ifinfo(index), f"get link {index}")


def test_only_the_last_message_asks_for_an_acknowledgement() -> None:
    lo = socket.if_nametoindex("lo")
    with _socket() as s:
        failed = s.request_each([_get(lo), _get(NO_SUCH_INDEX), _get(lo), _get(NO_SUCH_INDEX), _get(lo)])
        assert failed == {1: errno.ENODEV, 3: errno.ENODEV}
        (data,) = s.sock.sent  # type: ignore[attr-defined]
        flags = [f for _t, f, _s, _p in iter_messages(data)]
        assert flags == [NLM_F_REQUEST] * 4 + [NLM_F_REQUEST | NLM_F_ACK]
        # a failing last message ends the batch with its error
        assert s.request_each([_get(lo), _get(NO_SUCH_INDEX)]) == {1: errno.ENODEV}


def test_an_answer_left_from_an_interrupted_exchange_is_not_taken_for_this_batch() -> None:
    lo = socket.if_nametoindex("lo")
    with _socket() as s:
        # a request whose answer (an error) nobody read: as after a receive that was interrupted
        seq = s.next_seq()
        body = rtnl.ifinfo(NO_SUCH_INDEX)
        s.sock.send(HDR.pack(16 + len(body), RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body)
        assert s.request_each([_get(lo), _get(lo)]) == {}
        s.request([_get(lo)])  # no stale error raised either


def test_an_empty_batch_sends_nothing() -> None:
    # a netlink send of nothing fails with ENODATA (a bare OSError, no typed error); a batch
    # built from an empty list (no gateway routes to set) is simply done
    with _socket() as s:
        assert s.request_each([]) == {}
        s.request([])
        assert s.sock.sent == []  # type: ignore[attr-defined]
        s.request([_get(socket.if_nametoindex("lo"))])  # and the socket works on


class _Interrupting(rtnl.RtnlSocket):
    """Flags the answers of the first ``times`` dumps ``NLM_F_DUMP_INTR``, as the kernel does
    when the table changed while it was read."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.left, self.dumps = times, 0

    def _dump_once(self, mtype, body, what):  # type: ignore[no-untyped-def]
        self.dumps += 1
        self._flag = self.left > 0
        self.left -= 1
        return super()._dump_once(mtype, body, what)

    def recv(self) -> bytes:
        data = bytearray(super().recv())
        if self._flag:
            off = 0
            while off + 16 <= len(data):
                length, mtype, flags, seq, pid = HDR.unpack_from(data, off)
                HDR.pack_into(data, off, length, mtype, flags | NLM_F_DUMP_INTR, seq, pid)
                off += (length + 3) & ~3
        return bytes(data)


def test_an_interrupted_dump_is_taken_again(caplog) -> None:
    """A dump flagged NLM_F_DUMP_INTR may miss entries (the table changed while it was read):
    taken again, not used; before, its answers were used as they were."""
    with _Interrupting(2) as s:
        addresses = s.addresses()
        assert s.dumps == 3
        assert any(a.cidr == "127.0.0.1/8" for a in addresses)
    with _Interrupting(100) as s:  # never whole: the last one, said so, after DUMP_ATTEMPTS
        assert any(a.cidr == "127.0.0.1/8" for a in s.addresses())
        assert s.dumps == rtnl.DUMP_ATTEMPTS
        assert "interrupted by changes" in caplog.text
