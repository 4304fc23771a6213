"""Encrypted overlay throughput: libnet's ``-o encrypted`` overlay vs the same path built by hand and the plain overlay.

Two test hosts on a switch.  iperf3, one TCP stream, container to container, for the same duration:

- libnet encrypted: a container on each host on a libnet overlay with ``encrypted`` (two controllers,
  one cluster store): VXLAN inside the hosts' WireGuard tunnels, the backend libnet chose
  (``wireguard-go`` where the kernel has no module);
- hand-built WireGuard: the same data path made with ``wireguard-go``, ``wg``, ``ip`` and ``bridge``
  commands -- per host a WireGuard interface (MTU underlay - 60) with a tunnel address, a VXLAN
  device on that address (MTU - 50, static flood entry to the other host's tunnel address), a
  bridge and a container veth;
- libnet plain: a plain overlay network on the same controllers (VXLAN on the underlay).

Rounds alternate between the three so the machine's noise hits all of them; medians are reported.
Then the first host rotates its key (twice; once with ``--quick``) during a ping stream (25/s) from
its container to the other: ``metrics.rotation_lost_packets`` (target 0) of ``rotation_sent_packets``.
Ratios: ``vs_handbuilt_wireguard`` (target >= 0.9: libnet adds nothing to the data path) and
``vs_plain_overlay`` (reported: the cost of encryption; userspace WireGuard is CPU-bound here).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import subprocess
import tempfile
import time

from benchmarks.common import emit, parser, progress, require
from benchmarks.overlay_bench import iperf_rounds, place_on
from libnet import Controller
from libnet.encryption.backend import SOCKET_DIR
from libnet.testing.cluster import PingStream
from libnet.testing.hosts import Testbed, host_config

NAME = "encryption_bench"
TUNNEL_RANGE = "198.51.100.240/28"  # libnet's tunnel addresses
HAND_TUNNEL = "198.51.100.22{}"  # the hand-built tunnel's addresses (/29)
HAND_CONTAINER = "198.51.100.20{}"  # the hand-built containers (198.51.100.192/28)
HAND_PORT = 51830


def _wg(*args: str, stdin: str = "") -> str:
    return subprocess.run(["wg", *args], input=stdin, capture_output=True, text=True, check=True, timeout=10).stdout


def handbuilt(bed: Testbed, tmp: str) -> tuple[str, str]:
    """The encrypted data path built by hand (see the module docstring); returns the two containers' namespaces."""
    h1, h2 = bed.hosts
    mtu_wg = bed.mtu - 60
    mtu = mtu_wg - 50
    keys = []
    for i in (1, 2):
        private = _wg("genkey").strip()
        path = os.path.join(tmp, f"hand{i}.key")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(private + "\n")
        keys.append((path, _wg("pubkey", stdin=private + "\n").strip()))
    names = []
    for i, (me, other) in enumerate(((h1, h2), (h2, h1)), start=1):
        ifname = f"hbw{os.getpid() % 100000}{i}"  # unique on the machine: wireguard-go's socket path is shared
        env = {**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"}
        bed.spawn(me.ns, ["wireguard-go", "-f", ifname], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(SOCKET_DIR, f"{ifname}.sock")):
            if time.monotonic() > deadline:
                raise SystemExit(f"wireguard-go did not bring up {ifname}")
            time.sleep(0.02)
        peer = 3 - i
        _wg(
            "set", ifname, "private-key", keys[i - 1][0], "listen-port", str(HAND_PORT),
            "peer", keys[peer - 1][1], "endpoint", f"{other.ipv4}:{HAND_PORT}",
            "allowed-ips", f"{HAND_TUNNEL.format(peer)}/32",
        )  # fmt: skip
        c = bed.namespace(f"hw{i}")
        names.append(c)
        for cmd in (
            ["ip", "addr", "add", f"{HAND_TUNNEL.format(i)}/29", "dev", ifname],
            ["ip", "link", "set", ifname, "mtu", str(mtu_wg), "up"],
            ["ip", "link", "add", "hbr", "type", "bridge"],
            ["ip", "link", "add", "vxw", "type", "vxlan", "id", "4001", "local", HAND_TUNNEL.format(i),
             "dstport", "4789"],
            ["ip", "link", "set", "vxw", "mtu", str(mtu), "master", "hbr", "up"],
            ["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vxw", "dst", HAND_TUNNEL.format(peer)],
            ["ip", "link", "add", "hbv", "mtu", str(mtu), "type", "veth", "peer", "name", "eth0", "mtu", str(mtu),
             "netns", c],
            ["ip", "link", "set", "hbv", "master", "hbr", "up"],
            ["ip", "link", "set", "hbr", "up"],
        ):  # fmt: skip
            bed.run(me.ns, cmd, check=True)
        bed.run(c, ["ip", "addr", "add", f"{HAND_CONTAINER.format(i)}/28", "dev", "eth0"], check=True)
        bed.run(c, ["ip", "link", "set", "eth0", "up"], check=True)
    return names[0], names[1]


async def libnet_overlays(bed: Testbed, tmp: str) -> tuple[list[Controller], dict[str, list]]:
    """Two controllers; an encrypted and a plain overlay with a container of each host on both."""
    ctls = []
    for h in bed.hosts:
        cfg = dataclasses.replace(host_config(bed, h, tmp), encryption_range=TUNNEL_RANGE)
        ctls.append(await Controller(cfg).start())
    await ctls[0].create_network("enc", "overlay", ipv4_subnet="198.51.100.0/25", options={"encrypted": True})
    await ctls[0].create_network("plain", "overlay", ipv4_subnet="198.51.100.128/26")
    return ctls, await place_on(ctls, ["enc", "plain"])


async def rotation_loss(bed: Testbed, ctl: Controller, src: str, dst: str, times: int) -> tuple[int, int]:
    """(sent, lost) of a ping stream (25/s) from ``src`` to ``dst`` while ``ctl``'s host rotates its key
    ``times`` times."""
    with tempfile.NamedTemporaryFile(suffix=".ping") as out:
        stream = PingStream(bed, src, dst, out.name)
        await asyncio.sleep(1)
        for i in range(times):
            progress(f"key rotation {i + 1}/{times} during a ping stream")
            await ctl.driver("overlay").rotate_keys()  # type: ignore[attr-defined]
        await asyncio.sleep(1)
        return stream.stop()


def main() -> dict:
    args = parser(NAME, __doc__).parse_args()
    require("iperf3", "iperf3")
    require("wireguard-go", "wireguard-go")
    require("wg", "wireguard-tools")
    seconds, rounds = (1, 1) if args.quick else (5, 3)
    backend = ""
    with Testbed(2) as bed, tempfile.TemporaryDirectory() as tmp:
        hw1, hw2 = handbuilt(bed, tmp)
        loop = asyncio.new_event_loop()
        ctls, placed = loop.run_until_complete(libnet_overlays(bed, tmp))
        try:
            status = loop.run_until_complete(ctls[0].driver("overlay").encryption_status())  # type: ignore[attr-defined]
            backend = status["backend"] if status else ""
            (e1, _), (e2, enc2) = placed["enc"]
            (p1, _), (p2, plain2) = placed["plain"]
            enc_target = str(ipaddress.ip_interface(enc2.ipv4).ip)
            plain_target = str(ipaddress.ip_interface(plain2.ipv4).ip)
            legs = {
                "encrypted": (e2, e1, enc_target),
                "handbuilt": (hw2, hw1, HAND_CONTAINER.format(2)),
                "plain": (p2, p1, plain_target),
            }
            med = iperf_rounds(bed, legs, seconds, rounds, port=5301)
            sent, lost = loop.run_until_complete(rotation_loss(bed, ctls[0], e1, enc_target, 1 if args.quick else 2))
        finally:
            for c in ctls:
                # the tunnels outlive a controller (as an agent's do): this run's go with it
                loop.run_until_complete(c.driver("overlay").stop_tunnel())  # type: ignore[attr-defined]
                loop.run_until_complete(c.close())
            loop.close()
    metrics = {
        "encrypted_overlay_gbps": round(med["encrypted"], 4),
        "rotation_lost_packets": lost,
        "rotation_sent_packets": sent,
    }
    peers = {"handbuilt_wireguard_gbps": round(med["handbuilt"], 4), "plain_overlay_gbps": round(med["plain"], 4)}
    ratios = {
        "vs_handbuilt_wireguard": round(med["encrypted"] / med["handbuilt"], 3),
        "vs_plain_overlay": round(med["encrypted"] / med["plain"], 3),
    }
    params = {"seconds": seconds, "rounds": rounds, "streams": 1, "underlay": "ipv4", "backend": backend}
    return emit(NAME, params, metrics, peers, ratios)


if __name__ == "__main__":
    main()
