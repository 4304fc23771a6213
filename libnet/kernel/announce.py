"""Announcing neighbours on a link: gratuitous ARP (IPv4) and unsolicited Neighbor Advertisements (IPv6).

Why: an overlay's ``vxlan0`` answers ARP and ND for remote endpoints from its
neighbour entries (proxy).  A container that asks for a brand-new remote peer
a moment before this host has programmed the entry gets no answer, and Linux
asks again only after ``retrans_time`` (1 s): its first packets wait a second.
Announcing the new entries into the local containers' ports right after
programming them completes such a pending resolution at once.

What the receiver does with them (Linux, ``net/ipv4/arp.c`` ``arp_process``;
``net/ipv6/ndisc.c`` ``ndisc_recv_na``):

- an ARP packet whose sender IP has an entry in the receiver's table --
  also an INCOMPLETE one, still waiting for an answer -- updates it with the
  sender MAC, whatever ``arp_accept`` says (``arp_accept`` only governs
  *creating* entries from unsolicited ARP, off by default).  The frame sent
  here is a gratuitous reply (RFC 5227 section 3, "ARP Announcement" in the
  reply form): sender = target = the peer's IP, sender hardware = target
  hardware = its MAC, broadcast.  The entry becomes STALE (a broadcast reply
  does not confirm reachability), which sends the queued packets at once;
  a container without an entry for the address ignores it.  A container with
  ``drop_gratuitous_arp`` set drops it (and keeps the one-second wait).
- an unsolicited Neighbor Advertisement (RFC 4861 section 7.2.6: to the
  all-nodes address, Solicited flag clear, Override flag set, with the
  Target Link-Layer Address option; hop limit 255, section 7.1.2) updates an
  existing entry, INCOMPLETE included (section 7.2.5), to STALE.

The frames are sent with one ``AF_PACKET`` socket on the named links, which
puts them on that device's wire only: sent on the host side of a container's
veth they reach that container and nothing else (never a bridge, whose
flooding would carry them to every remote VTEP).  The socket belongs to the
namespace of the thread that calls :func:`announce`.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from collections.abc import Iterable, Sequence

from libnet.kernel.neighbours import Neighbour
from libnet.kernel.probe import checksum

log = logging.getLogger("libnet.kernel")

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
_BROADCAST = b"\xff" * 6
_ALL_NODES = ipaddress.IPv6Address("ff02::1").packed
_ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"  # RFC 2464 section 7
_ARPOP_REPLY = 2
_ND_NEIGHBOR_ADVERT = 136
_NA_OVERRIDE = 0x20000000
_ND_OPT_TARGET_LL_ADDR = 2
_ICMPV6 = 58


def _mac(mac: str) -> bytes:
    raw = bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"not an Ethernet address: {mac!r}")
    return raw


def garp(ip: str, mac: str) -> bytes:
    """A broadcast gratuitous ARP reply for ``ip`` at ``mac`` (an Ethernet frame, 42 bytes)."""
    hw, addr = _mac(mac), ipaddress.IPv4Address(ip).packed
    eth = _BROADCAST + hw + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, _ARPOP_REPLY) + hw + addr + hw + addr
    return eth + arp


def unsolicited_na(ip: str, mac: str) -> bytes:
    """An unsolicited Neighbor Advertisement for ``ip`` at ``mac`` to all nodes, Override set
    (an Ethernet frame, 86 bytes); its IPv6 source is ``ip`` itself."""
    hw, target = _mac(mac), ipaddress.IPv6Address(ip).packed
    body = struct.pack("!I", _NA_OVERRIDE) + target + struct.pack("!BB", _ND_OPT_TARGET_LL_ADDR, 1) + hw
    pseudo = target + _ALL_NODES + struct.pack("!I3xB", 4 + len(body), _ICMPV6)
    csum = checksum(pseudo + struct.pack("!BBH", _ND_NEIGHBOR_ADVERT, 0, 0) + body)
    icmp = struct.pack("!BBH", _ND_NEIGHBOR_ADVERT, 0, csum) + body
    ip6 = struct.pack("!IHBB", 6 << 28, len(icmp), _ICMPV6, 255) + target + _ALL_NODES
    return _ALL_NODES_MAC + hw + struct.pack("!H", ETH_P_IPV6) + ip6 + icmp


def frames(neighbours: Iterable[Neighbour]) -> list[tuple[bytes, int]]:
    """(frame, EtherType) for each neighbour: a gratuitous ARP for IPv4, an NA for IPv6; malformed ones left out."""
    out: list[tuple[bytes, int]] = []
    for n in neighbours:
        try:
            if ipaddress.ip_address(n.ip).version == 4:
                out.append((garp(n.ip, n.mac), ETH_P_ARP))
            else:
                out.append((unsolicited_na(n.ip, n.mac), ETH_P_IPV6))
        except ValueError as exc:
            log.debug("not announcing %s at %s: %s", n.ip, n.mac, exc)
    return out


#: frames one call sends at most (6-18 us each on the reference VM: ~10-40 ms); the programmer
#: handles one batch at a time, so a host with hundreds of containers on a network must not hold
#: every network's programming for seconds to save some of them a retransmission
MAX_FRAMES = 2048


def announce(links: Sequence[str], neighbours: Iterable[Neighbour], max_frames: int = MAX_FRAMES) -> int:
    """Send each neighbour's announcement on each of ``links`` (names, in the calling thread's
    namespace); returns the frames sent, at most ``max_frames`` (the links past the budget get
    none: logged).  Never raises: a link gone meanwhile or a socket refused is logged at debug
    level (an announcement only saves a retransmission; nothing depends on it)."""
    if not links:
        return 0
    out = frames(neighbours)
    if not out:
        return 0
    if len(links) * len(out) > max_frames:
        log.debug(
            "announcing %d frames into %d of %d ports only (budget %d frames)",
            len(out),
            max_frames // len(out),
            len(links),
            max_frames,
        )
        links = links[: max_frames // len(out)]
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: receives nothing
    except OSError as exc:
        log.debug("no packet socket for neighbour announcements: %s", exc)
        return 0
    sent = 0
    with sock:
        for link in links:
            for frame, ethertype in out:
                try:
                    sock.sendto(frame, (link, ethertype))
                except OSError as exc:  # ENODEV: the container left meanwhile; ENETDOWN
                    log.debug("neighbour announcement on %s: %s", link, exc)
                    break
                sent += 1
    return sent
