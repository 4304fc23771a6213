"""Link indexes by name come from an ioctl on the namespace's socket, not an RTM_GETLINK round trip."""

from __future__ import annotations

import socket

from libnet.kernel import rtnl


class _NoMessages(socket.socket):
    def send(self, *args, **kwargs):  # type: ignore[no-untyped-def,override]
        raise AssertionError("a link index needs no netlink message")


def test_link_indexes_send_no_message() -> None:
    sock = _NoMessages(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    with rtnl.RtnlSocket(sock) as s:
        assert s.link_indexes(["lo", "lnnosuch0", "x" * 16, ""]) == [socket.if_nametoindex("lo"), None, None, None]
        assert s.link_index("lo") == socket.if_nametoindex("lo")
