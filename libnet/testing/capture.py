"""A capture of every frame on the test switch (scapy), for proofs of what crosses the underlay.

Used by the encryption tests and ``make demo``: while containers talk over an
encrypted overlay, the frames on the switch's bridge (``sw0`` in the switch
namespace) must show WireGuard's UDP between the hosts and never the inner
addresses, the network's VXLAN or a payload marker.
"""

from __future__ import annotations

import threading
from typing import Any

from libnet.kernel import netns
from libnet.testing.hosts import Testbed


class Capture:
    """Every frame on the switch's bridge, from construction to :meth:`stop` (raw bytes)."""

    def __init__(self, bed: Testbed, timeout: float = 120) -> None:
        self.frames: list[bytes] = []
        self._stop, ready = threading.Event(), threading.Event()

        def sniff() -> None:
            from scapy.all import sniff as scapy_sniff

            scapy_sniff(
                iface="sw0",
                timeout=timeout,
                prn=lambda p: self.frames.append(bytes(p)),
                store=False,
                stop_filter=lambda p: self._stop.is_set(),
                started_callback=ready.set,
            )

        self._thread = threading.Thread(target=netns.run_in, args=(bed.switch, sniff), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the capture on the test switch did not start")

    def stop(self, bed: Testbed) -> list[Any]:
        """Stop (one more frame is sent, so the stop filter runs); every frame, parsed as Ethernet."""
        from scapy.layers.l2 import Ether

        self._stop.set()
        bed.ping(bed.hosts[0].ns, bed.hosts[1].ipv4)
        self._thread.join(15)
        return [Ether(f) for f in self.frames]


def vxlan_vnis(packets: list[Any]) -> set[int]:
    """The VNIs of the VXLAN packets among ``packets``."""
    from scapy.layers.inet import UDP
    from scapy.layers.vxlan import VXLAN

    return {p[VXLAN].vni for p in packets if UDP in p and p[UDP].dport == 4789 and VXLAN in p}


def udp_count(packets: list[Any], port: int) -> int:
    """How many of ``packets`` are UDP from or to ``port`` (WireGuard's: 51820)."""
    from scapy.layers.inet import UDP

    return sum(1 for p in packets if UDP in p and port in (p[UDP].sport, p[UDP].dport))
