"""The kernel's WireGuard through netlink (pyroute2), for hosts with the ``wireguard`` module.

The interface is a ``wireguard`` link made in the host namespace; its
configuration goes through generic netlink (:class:`pyroute2.WireGuard`).
Peers are replaced as a whole set: every desired peer is set (its allowed
addresses replaced), and every peer the device has that is not desired is
removed.  Both netlink handles come from factories so the logic is tested
with fakes (this kind of machine has no module to test against).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from libnet.encryption.backend import WgConfig
from libnet.errors import Unavailable


def _ipr(ns: str | None) -> Any:
    from pyroute2.iproute import IPRoute, NetNS

    return NetNS(ns) if ns else IPRoute()


def _wg(ns: str | None) -> Any:
    from pyroute2.netlink.generic.wireguard import WireGuard

    return WireGuard(netns=ns) if ns else WireGuard()


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


class KernelBackend:
    """See the module docstring."""

    name = "kernel"

    def __init__(
        self,
        host_ns: str | None,
        ipr: Callable[[str | None], Any] = _ipr,
        wg: Callable[[str | None], Any] = _wg,
    ) -> None:
        self.host_ns, self._ipr, self._wg = host_ns, ipr, wg

    def describe(self, ifname: str) -> dict[str, Any]:
        return {"backend": self.name}

    def rx_bytes(self, ifname: str) -> int:
        wg = self._wg(self.host_ns)
        try:
            return sum(
                int(peer.get_attr("WGPEER_A_RX_BYTES") or 0)
                for msg in wg.info(ifname)
                for peer in msg.get_attr("WGDEVICE_A_PEERS") or []
            )
        finally:
            wg.close()

    def handshakes(self, ifname: str) -> dict[str, float]:
        wg = self._wg(self.host_ns)
        try:
            out = {}
            for msg in wg.info(ifname):
                for peer in msg.get_attr("WGDEVICE_A_PEERS") or []:
                    raw = peer.get_attr("WGPEER_A_PUBLIC_KEY")
                    when = peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
                    key = raw if isinstance(raw, str) else base64.b64encode(raw).decode()
                    out[key] = float(when.get("tv_sec", 0)) if hasattr(when, "get") else 0.0
            return out
        except Exception as exc:  # pyroute2's NetlinkError: no such device
            raise Unavailable(f"wireguard peers of {ifname}: {exc}", ifname=ifname) from None
        finally:
            wg.close()

    def alive(self, ifname: str) -> bool:
        ipr = self._ipr(self.host_ns)
        try:
            return bool(ipr.link_lookup(ifname=ifname))
        finally:
            ipr.close()

    def create(self, ifname: str) -> None:
        if self.alive(ifname):
            return
        ipr = self._ipr(self.host_ns)
        try:
            ipr.link("add", ifname=ifname, kind="wireguard")
        except Exception as exc:  # pyroute2's NetlinkError or a missing module
            raise Unavailable(f"cannot make the wireguard link {ifname}: {exc}", ifname=ifname) from None
        finally:
            ipr.close()

    def delete(self, ifname: str) -> None:
        ipr = self._ipr(self.host_ns)
        try:
            for index in ipr.link_lookup(ifname=ifname):
                ipr.link("del", index=index)
        finally:
            ipr.close()

    def configured_peers(self, ifname: str) -> set[str]:
        """Public keys (base64) of the peers the device has."""
        wg = self._wg(self.host_ns)
        try:
            keys = set()
            for msg in wg.info(ifname):
                for peer in msg.get_attr("WGDEVICE_A_PEERS") or []:
                    raw = peer.get_attr("WGPEER_A_PUBLIC_KEY")
                    keys.add(raw if isinstance(raw, str) else base64.b64encode(raw).decode())
            return keys
        finally:
            wg.close()

    def configure(self, ifname: str, config: WgConfig) -> None:
        """Key and port; stale peers removed; peers the device lacks added.  A peer the
        device has is not set again (its allowed addresses would be replaced, leaving
        it without any for a moment); a host's key never changes address or port: a
        rotation brings a new key."""
        have = self.configured_peers(ifname)
        stale = have - {p.public_key for p in config.peers}
        wg = self._wg(self.host_ns)
        try:
            wg.set(ifname, private_key=config.private_key, listen_port=config.listen_port)
            for key in sorted(stale):
                wg.set(ifname, peer={"public_key": key, "remove": True})
            for p in config.peers:
                if p.public_key in have:
                    continue
                addr, port = _split(p.endpoint)
                wg.set(
                    ifname,
                    peer={
                        "public_key": p.public_key,
                        "endpoint_addr": addr,
                        "endpoint_port": port,
                        "allowed_ips": list(p.allowed_ips),
                        "replace_allowed_ips": True,
                        "persistent_keepalive": p.keepalive,
                    },
                )
        finally:
            wg.close()
