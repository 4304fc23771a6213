"""ICMP reachability probes from inside test-host containers, for the convergence benchmarks.

A raw socket opened in the container's namespace sends an echo request every
20 ms and waits for the matching reply, so measuring costs no process per
probe; the monotonic time of the first reply is the time the container became
reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import struct
import time

from libnet.kernel import netns
from libnet.kernel.netlink import Netlink

#: seconds between echo requests
INTERVAL = 0.02


def pct(values: list[float], q: int) -> float:
    """The ``q``-th percentile (inclusive method), rounded to ms; the value itself for one sample."""
    return (
        round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 3)
        if len(values) > 1
        else round(values[0], 3)
    )


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


async def ping_until(ns: str, addr: str, deadline: float, ident: int) -> float | None:
    """ICMP echo from inside ``ns`` every 20 ms until ``addr`` answers: the monotonic time of the
    first reply, None if none came before ``deadline`` (monotonic seconds)."""
    sock = netns.open_socket(ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        seq = 0
        while time.monotonic() < deadline:
            seq += 1
            head = struct.pack("!BBHHH", 8, 0, 0, ident & 0xFFFF, seq)
            packet = struct.pack("!BBHHH", 8, 0, _checksum(head + b"libnet"), ident & 0xFFFF, seq) + b"libnet"
            with contextlib.suppress(OSError):  # no route yet
                sock.sendto(packet, (addr, 0))
            until = time.monotonic() + INTERVAL
            while time.monotonic() < until:
                try:
                    data, peer = await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), until - time.monotonic())
                except (TimeoutError, OSError):
                    break
                ihl = (data[0] & 0x0F) * 4
                if peer[0] == addr and data[ihl] == 0 and int.from_bytes(data[ihl + 4 : ihl + 6], "big") == ident:
                    return time.monotonic()
        return None
    finally:
        sock.close()


def flush_arp(ns: str) -> None:
    """Drop the neighbour entries a container's ``eth0`` learned (its ARP cache).

    All test hosts share the kernel's one neighbour table: each trial leaves
    one learned entry per probing container, and left there they outlive
    the trial by a minute or more (reachable, then stale until garbage
    collected).  At 50 hosts they pass ``gc_thresh3`` (1024) after twenty
    or so trials; new entries then fail ("neighbor table overflow") until
    old ones age out, and trials take seconds."""
    with Netlink(ns) as nl:
        nl.flush_learned_neighbours("eth0")
