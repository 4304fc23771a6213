"""The frames of neighbour announcements (libnet.kernel.announce): what the receiving kernel checks."""

from __future__ import annotations

import ipaddress
import struct

from libnet.kernel.announce import ETH_P_ARP, ETH_P_IPV6, frames, garp, unsolicited_na
from libnet.kernel.neighbours import Neighbour
from libnet.kernel.probe import checksum

MAC = "02:42:c6:33:64:09"
HW = bytes.fromhex("0242c6336409")


def test_a_gratuitous_arp_reply_names_the_peer_as_sender_and_target() -> None:
    """arp_process updates an existing (also INCOMPLETE) entry of the sender IP with arp_accept=0;
    sender = target (RFC 5227 announcement) with equal hardware addresses makes it a gratuitous one."""
    frame = garp("198.51.100.9", MAC)
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == HW and struct.unpack("!H", frame[12:14])[0] == ETH_P_ARP
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 2)
    ip = ipaddress.IPv4Address("198.51.100.9").packed
    assert frame[22:] == HW + ip + HW + ip


def test_an_unsolicited_na_is_one_linux_accepts() -> None:
    """RFC 4861 7.1.2 / 7.2.6: hop limit 255, code 0, valid checksum, Solicited clear (to a multicast
    address), Override set, a target link-layer address option."""
    frame = unsolicited_na("2001:db8::9", MAC)
    assert frame[:6] == bytes.fromhex("333300000001") and frame[6:12] == HW
    assert struct.unpack("!H", frame[12:14])[0] == ETH_P_IPV6
    ip6, icmp = frame[14:54], frame[54:]
    version, plen, nh, hops = struct.unpack("!IHBB", ip6[:8])
    src, dst = ip6[8:24], ip6[24:40]
    assert version >> 28 == 6 and plen == len(icmp) == 32 and nh == 58 and hops == 255
    assert src == ipaddress.IPv6Address("2001:db8::9").packed and dst == ipaddress.IPv6Address("ff02::1").packed
    assert icmp[0] == 136 and icmp[1] == 0
    assert checksum(src + dst + struct.pack("!I3xB", len(icmp), 58) + icmp) == 0  # the checksum verifies
    flags = struct.unpack("!I", icmp[4:8])[0]
    assert flags & 0x20000000 and not flags & 0x40000000 and not flags & 0x80000000  # O set, S and R clear
    assert icmp[8:24] == src and icmp[24:26] == b"\x02\x01" and icmp[26:32] == HW


def test_each_family_gets_its_frame_and_malformed_entries_are_left_out() -> None:
    out = frames([Neighbour("198.51.100.9", MAC), Neighbour("2001:db8::9", MAC), Neighbour("198.51.100.10", "zz")])
    assert [ethertype for _, ethertype in out] == [ETH_P_ARP, ETH_P_IPV6]
