"""Bulk neighbour/FDB messages: encoding, chunking, acks and errors, without root."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from libnet.errors import KernelObjectExists
from libnet.kernel import neighbours as nb
from libnet.kernel import rtnl
from libnet.kernel.neighbours import FLOOD_MAC, FdbEntry, Neighbour, NeighbourSocket


def test_neighbour_message_round_trip() -> None:
    msg = nb.encode_neighbour(7, nb.NLM_F_REQUEST | nb.NLM_F_CREATE, 3, Neighbour("198.51.100.2", "02:42:c6:33:64:02"))
    [(mtype, flags, seq, payload)] = list(rtnl.iter_messages(msg))
    assert (mtype, flags, seq) == (nb.RTM_NEWNEIGH, nb.NLM_F_REQUEST | nb.NLM_F_CREATE, 7)
    fam, ifindex, state, _f, attrs = nb.decode_neighbour(payload)
    assert (fam, ifindex, state) == (socket.AF_INET, 3, nb.NUD_PERMANENT)
    assert attrs[nb.NDA_DST] == socket.inet_aton("198.51.100.2")
    assert nb.mac_str(attrs[nb.NDA_LLADDR]) == "02:42:c6:33:64:02"
    assert len(msg) % 4 == 0


def test_fdb_message_v6_and_delete() -> None:
    msg = nb.encode_fdb(9, nb.NLM_F_REQUEST, 4, FdbEntry(FLOOD_MAC, "2001:db8:ffff::12"), delete=True)
    [(mtype, _flags, _seq, payload)] = list(rtnl.iter_messages(msg))
    fam, ifindex, _state, flags, attrs = nb.decode_neighbour(payload)
    assert (mtype, fam, ifindex, flags) == (nb.RTM_DELNEIGH, nb.AF_BRIDGE, 4, nb.NTF_SELF)
    assert attrs[nb.NDA_DST] == socket.inet_pton(socket.AF_INET6, "2001:db8:ffff::12")
    assert attrs[nb.NDA_LLADDR] == bytes(6)


def test_bad_input_is_rejected_before_sending() -> None:
    with pytest.raises(ValueError):
        nb.encode_neighbour(1, 0, 1, Neighbour("198.51.100.300", "02:00:00:00:00:01"))
    with pytest.raises(ValueError):
        nb.mac_bytes("02:00:00:00:01")


class FakeKernel:
    """Stands in for the netlink socket: records sends, answers like the kernel."""

    def __init__(self, fail: dict[str, int]) -> None:
        self.fail = fail  # IP -> errno
        self.sent: list[list[tuple[int, int, int]]] = []
        self.replies: list[bytes] = []

    def send(self, data: bytes) -> None:
        msgs = list(rtnl.iter_messages(data))
        self.sent.append([(t, f, s) for t, f, s, _ in msgs])
        out = b""
        for _t, flags, seq, payload in msgs:
            attrs = nb.decode_neighbour(payload)[4]
            ip = socket.inet_ntoa(attrs[nb.NDA_DST]) if len(attrs[nb.NDA_DST]) == 4 else ""
            err = -self.fail.get(ip, 0)
            if err or flags & nb.NLM_F_ACK:
                out += struct.pack("=IHHII", 36, nb.NLMSG_ERROR, 0, seq, 0) + struct.pack("=i", err) + bytes(16)
        self.replies.append(out)

    def recv(self, _size: int) -> bytes:
        return self.replies.pop(0)

    def close(self) -> None:
        pass


def _socket(fake: FakeKernel) -> NeighbourSocket:
    s = NeighbourSocket.__new__(NeighbourSocket)
    s.sock = fake
    s._seq = 1
    return s


def test_chunks_ack_only_the_last_message() -> None:
    fake = FakeKernel({})
    entries = [Neighbour(f"198.51.{i >> 8}.{i & 255}", "02:00:00:00:00:01") for i in range(2500)]
    _socket(fake).replace_neighbours(5, entries)
    assert [len(c) for c in fake.sent] == [1000, 1000, 500]
    for chunk in fake.sent:
        assert [bool(f & nb.NLM_F_ACK) for _, f, _ in chunk].count(True) == 1
        assert chunk[-1][1] & nb.NLM_F_ACK
        assert all(f & nb.NLM_F_REPLACE and f & nb.NLM_F_CREATE for _, f, _ in chunk)


def test_failure_names_the_entry_and_gone_is_fine_on_delete() -> None:
    bad = Neighbour("198.51.100.7", "02:00:00:00:00:07")
    entries = [Neighbour("198.51.100.6", "02:00:00:00:00:06"), bad]
    with pytest.raises(KernelObjectExists) as err:
        _socket(FakeKernel({"198.51.100.7": errno.EEXIST})).replace_neighbours(5, entries)
    assert err.value.ids["entry"] == bad and err.value.ids["failed"] == 1
    _socket(FakeKernel({"198.51.100.7": errno.ENOENT})).delete_neighbours(5, entries)


def test_flood_entries_are_appended_unicast_replaced() -> None:
    fake = FakeKernel({})
    _socket(fake).replace_fdb(5, [FdbEntry("02:00:00:00:00:01", "203.0.113.12"), FdbEntry(FLOOD_MAC, "203.0.113.12")])
    (unicast,), (flood,) = fake.sent
    assert unicast[1] & nb.NLM_F_REPLACE and not unicast[1] & nb.NLM_F_APPEND
    assert flood[1] & nb.NLM_F_APPEND and not flood[1] & nb.NLM_F_REPLACE
