"""Per-namespace sysctls.

``/proc/sys/net`` shows the namespace of the thread that opens it, so reads
and writes run on a thread inside the namespace (:func:`netns.run_in`).
"""

from __future__ import annotations

import os

from libnet.errors import BadRequest
from libnet.kernel import netns
from libnet.kernel.errors import translate


def _path(key: str | tuple[str, ...]) -> str:
    # a tuple keeps interface names with dots intact: ("net", "ipv6", "conf", "eth0.5", "accept_dad")
    parts = key.split(".") if isinstance(key, str) else list(key)
    if not parts or any(not p or p in (".", "..") or "/" in p for p in parts):
        raise BadRequest(f"invalid sysctl key {key!r}", key=str(key))
    return os.path.join("/proc/sys", *parts)


def get(ns: str | None, key: str | tuple[str, ...]) -> str:
    """Read a sysctl (``"net.ipv4.ip_forward"``) in namespace ``ns``."""
    path = _path(key)

    def body() -> str:
        with open(path) as f:
            return f.read().strip()

    try:
        return netns.run_in(ns, body)
    except OSError as exc:
        raise translate(exc, "read sysctl", key=str(key), netns=ns) from exc


def set(ns: str | None, key: str | tuple[str, ...], value: int | str) -> None:  # noqa: A001
    """Write a sysctl in namespace ``ns``."""
    path = _path(key)

    def body() -> None:
        with open(path, "w") as f:
            f.write(str(value))

    try:
        netns.run_in(ns, body)
    except OSError as exc:
        raise translate(exc, "write sysctl", key=str(key), netns=ns) from exc


def set_forwarding(ns: str | None, enabled: bool = True) -> None:
    """Turn IPv4 and IPv6 forwarding on or off for the whole namespace."""
    set(ns, "net.ipv4.ip_forward", int(enabled))
    set(ns, ("net", "ipv6", "conf", "all", "forwarding"), int(enabled))


def set_accept_dad(ns: str | None, ifname: str, value: int) -> None:
    """IPv6 duplicate address detection on one interface (0 = off)."""
    set(ns, ("net", "ipv6", "conf", ifname, "accept_dad"), value)


def set_disable_ipv6(ns: str | None, ifname: str, disabled: bool) -> None:
    """Disable or enable IPv6 on one interface (``"all"``/``"default"`` too)."""
    set(ns, ("net", "ipv6", "conf", ifname, "disable_ipv6"), int(disabled))
