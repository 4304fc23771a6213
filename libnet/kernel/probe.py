"""One ICMP echo: whether an address answers, from a namespace (the proof of a working tunnel).

Encrypted overlays use it to check a WireGuard tunnel both ways before a
join (:meth:`libnet.encryption.tunnel.Tunnel.await_peers`): an echo to a
peer host's tunnel address leaves only through WireGuard (the route and
guard of the tunnel range) and its reply comes back only through it, so a
reply proves a completed handshake and a path in both directions -- a
handshake's timestamp alone stays fresh for minutes after the peer died.
Raw ICMP sockets need CAP_NET_RAW (the agent runs as root).
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import time

from libnet.kernel import netns

ECHO_REQUEST = {4: 8, 6: 128}
ECHO_REPLY = {4: 0, 6: 129}


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo(ns: str | None, address: str, timeout: float = 1.0) -> bool:
    """Send one echo request to ``address`` from namespace ``ns`` (None: this process's) and
    wait up to ``timeout`` s for its reply (matched by identifier, sequence and source).

    Returns False on no reply or when the request cannot be sent (no route, dropped by a
    firewall rule); raises ``OSError`` only when the socket cannot be made."""
    ip = ipaddress.ip_address(address)
    family, proto = (
        (socket.AF_INET6, socket.IPPROTO_ICMPV6) if ip.version == 6 else (socket.AF_INET, socket.IPPROTO_ICMP)
    )
    ident, seq = os.getpid() & 0xFFFF, int(time.monotonic() * 1000) & 0xFFFF
    header = struct.pack("!BBHHH", ECHO_REQUEST[ip.version], 0, 0, ident, seq)
    payload = b"libnet-tunnel-probe"
    if ip.version == 4:  # the kernel fills ICMPv6's checksum itself
        header = struct.pack("!BBHHH", ECHO_REQUEST[4], 0, checksum(header + payload), ident, seq)
    sock = netns.open_socket(ns, family, socket.SOCK_RAW, proto)
    try:
        sock.setblocking(False)
        try:
            sock.sendto(header + payload, (address, 0))
        except OSError:  # no route, or a rule dropped it (EPERM)
            return False
        deadline = time.monotonic() + timeout
        poller = select.poll()  # not select.select: it refuses a descriptor >= FD_SETSIZE (ValueError)
        poller.register(sock, select.POLLIN)
        while (left := deadline - time.monotonic()) > 0:
            if not poller.poll(left * 1000):
                return False
            try:
                data, src = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return False
            icmp = data[(data[0] & 0x0F) * 4 :] if ip.version == 4 else data
            if len(icmp) < 8 or ipaddress.ip_address(src[0].split("%", 1)[0]) != ip:
                continue
            kind, _, _, got_ident, got_seq = struct.unpack("!BBHHH", icmp[:8])
            if kind == ECHO_REPLY[ip.version] and got_ident == ident and got_seq == seq:
                return True
        return False
    finally:
        sock.close()
