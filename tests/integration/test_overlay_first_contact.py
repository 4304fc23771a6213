"""First contact with a brand-new remote container: no one-second wait for ARP/ND (issue 22).

A container that asks for a new peer's address a moment before its host has
programmed the peer's neighbour entry gets no answer from ``vxlan0``'s proxy,
and Linux asks again only after ``retrans_time`` (1 s).  The programmer
announces new entries into the local containers' ports (gratuitous ARP,
unsolicited NA), which completes the pending resolution at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
import threading
import time

import pytest

from libnet import Controller
from libnet.kernel import netns
from libnet.kernel.probe import checksum
from libnet.testing.capture import Capture
from libnet.testing.hosts import Testbed, host_config

pytestmark = pytest.mark.root

#: host 1 programs the new peer this long after its container sent the first echo (whose ARP/NS
#: then went out unanswered); the retransmission would come ~1 s after that echo
HOLD = 0.2


def ip(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).ip)


def first_reply(ns: str, addr: str, timeout: float, asked: threading.Event) -> tuple[float, float | None]:
    """ICMP echo from inside ``ns`` to ``addr`` every 20 ms: (monotonic time of the first request,
    of the first reply or None within ``timeout``); ``asked`` is set once the first went out.
    Blocking: run it on a thread."""
    v6 = ipaddress.ip_address(addr).version == 6
    family, proto, request, reply = (
        (socket.AF_INET6, socket.IPPROTO_ICMPV6, 128, 129) if v6 else (socket.AF_INET, socket.IPPROTO_ICMP, 8, 0)
    )
    ident = 0x5A00 | (6 if v6 else 4)
    sock = netns.open_socket(ns, family, socket.SOCK_RAW, proto)
    sock.settimeout(0.02)
    first: float | None = None
    try:
        deadline = time.monotonic() + timeout
        seq = 0
        while time.monotonic() < deadline:
            seq += 1
            head = struct.pack("!BBHHH", request, 0, 0, ident, seq) + b"first-contact"
            if not v6:  # the kernel fills in ICMPv6 checksums
                head = head[:2] + struct.pack("!H", checksum(head)) + head[4:]
            with contextlib.suppress(OSError):
                sock.sendto(head, (addr, 0))
                first = first if first is not None else time.monotonic()
                asked.set()
            until = time.monotonic() + 0.02
            while (left := until - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data, peer = sock.recvfrom(2048)
                except (TimeoutError, OSError):
                    break
                icmp = data if v6 else data[(data[0] & 0x0F) * 4 :]
                if peer[0] == addr and icmp[0] == reply and struct.unpack("!H", icmp[4:6])[0] == ident:
                    return first or 0.0, time.monotonic()
        return first or 0.0, None
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def controllers(bed: Testbed, tmp_path):
    ctls: list[Controller] = []
    try:
        for h in bed.hosts:
            ctls.append(await Controller(host_config(bed, h, str(tmp_path))).start())
        yield ctls
    finally:
        for c in ctls:
            await c.close()


async def test_a_container_reaches_a_brand_new_peer_right_after_its_entry_is_programmed(tmp_path) -> None:
    """Host 1 programs host 2's new container only ``HOLD`` s after host 1's container has asked for
    its addresses (ARP and ND, unanswered then): the first echo reply comes within 0.2 s of programming,
    not after the one-second retransmission.  The announcements go only into host 1's container
    ports: none crosses the underlay (sent through ``br0`` they would flood to every VTEP)."""
    from scapy.layers.inet6 import ICMPv6ND_NA
    from scapy.layers.l2 import ARP

    with Testbed(2) as bed:
        async with controllers(bed, tmp_path) as ctls:
            await ctls[0].create_network("ov", "overlay", ipv4_subnet="198.51.100.0/25", ipv6_subnet="2001:db8:77::/64")
            sa = await ctls[0].create_sandbox(hostname="a")
            await ctls[0].connect("ov", sa.id)
            drv = ctls[0].driver("overlay")
            await drv.programmer.settled()

            asked = [threading.Event(), threading.Event()]  # each prober's first echo went out
            mark, held = drv.programmer.mark, []

            async def later(nid: str) -> None:
                for event in asked:
                    await asyncio.to_thread(event.wait, 10)
                await asyncio.sleep(HOLD)
                mark(nid)

            drv.programmer.mark = lambda nid: held.append(asyncio.create_task(later(nid)))  # type: ignore[method-assign]
            programmed: dict[str, float] = {}
            apply = drv.programmer.ops.apply

            def timed_apply(nid, remove, add) -> None:  # type: ignore[no-untyped-def]
                apply(nid, remove, add)
                for n in add.neighbours:
                    programmed.setdefault(n.ip, time.monotonic())

            drv.programmer.ops.apply = timed_apply  # type: ignore[method-assign]

            cap = Capture(bed, timeout=30)
            sb = await ctls[1].create_sandbox(hostname="b")
            eb = await ctls[1].connect("ov", sb.id)
            results = await asyncio.gather(
                asyncio.to_thread(first_reply, sa.netns, ip(eb.ipv4), 3.0, asked[0]),
                asyncio.to_thread(first_reply, sa.netns, ip(eb.ipv6), 3.0, asked[1]),
            )
            await asyncio.gather(*held)
            packets = cap.stop(bed)
            v4, v6 = ip(eb.ipv4), ip(eb.ipv6)
            crossed = [p for p in packets if ARP in p and p[ARP].psrc == p[ARP].pdst == v4]
            crossed += [p for p in packets if ICMPv6ND_NA in p and p[ICMPv6ND_NA].tgt == v6]
            assert not crossed, [p.summary() for p in crossed]
            for addr, (sent, replied) in zip((ip(eb.ipv4), ip(eb.ipv6)), results, strict=True):
                assert addr in programmed, f"{addr} was never programmed on host 1"
                assert sent < programmed[addr], f"{addr}: the first echo went out after programming"
                assert replied is not None, f"{addr}: no reply within 3 s"
                late = replied - programmed[addr]
                assert late < 0.2, f"{addr}: first reply {late:.3f} s after programming (ARP/ND retransmission?)"
