"""The ``libnet-ipam`` CNI IPAM plugin: addresses from libnet's IPAM for a main
plugin such as the reference ``bridge``.

Config (the ``ipam`` section of the main plugin's config)::

    "ipam": {"type": "libnet-ipam",
             "network": "pool-name",                 # default: the config's name
             "socket": "/run/libnet/libnet.sock",
             "subnet": "198.51.100.0/24", "subnet6": "2001:db8:7::/64",
             "gateway": "...", "gateway6": "...",
             "routes": [{"dst": "0.0.0.0/0"}]}

The pool is a libnet network (driver ``null`` when created here: addresses
only, nothing programmed) used if it exists, created on first use from
``subnet``/``subnet6``.  Each container interface holds one endpoint named
``cni-`` + a hash of container id and interface name: ADD twice replays the
same addresses, DEL releases them (an unknown one is success).  Static
addresses come from ``runtimeConfig.ips``, ``args.cni.ips`` or ``CNI_ARGS``
``IP=``.
"""

from __future__ import annotations

import sys

from .client import DEFAULT_SOCKET, AgentRefused, Client, q
from .common import (
    CHECK_FAILED,
    INVALID_CONFIG,
    NO_SUCH_NETWORK,
    UNKNOWN_CONTAINER,
    Call,
    CniError,
    check_args,
    requested_ips,
    run,
    shape,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

KNOWN_ARGS = ("K8S_POD_NAME", "K8S_POD_NAMESPACE", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID", "IP")


def _section(call: Call) -> dict[str, Any]:
    ipam = call.conf.get("ipam")
    if not isinstance(ipam, dict):
        raise CniError(INVALID_CONFIG, "the configuration has no ipam section")
    for key in ("network", "socket", "subnet", "subnet6", "gateway", "gateway6"):
        if key in ipam and not isinstance(ipam[key], str):
            raise CniError(INVALID_CONFIG, f"ipam.{key} must be a string")
    if "routes" in ipam and not (
        isinstance(ipam["routes"], list)
        and all(isinstance(r, dict) and isinstance(r.get("dst"), str) for r in ipam["routes"])
    ):
        raise CniError(INVALID_CONFIG, "ipam.routes must be a list of {dst, gw}")
    return ipam


def endpoint_name(container_id: str, ifname: str) -> str:
    """The libnet endpoint that holds this interface's addresses (a DNS label)."""
    return "cni-" + _sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:24]


def _sha256(data: bytes) -> Any:
    # the C module itself: :mod:`hashlib` loads OpenSSL's (~5 ms of a plugin's start)
    try:
        from _sha2 import sha256  # type: ignore[import-not-found,unused-ignore]  # Python >= 3.12
    except ImportError:
        try:
            from _sha256 import sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
        except ImportError:
            from hashlib import sha256  # type: ignore[assignment,unused-ignore]
    return sha256(data)


def _client(ipam: dict[str, Any]) -> Client:
    sock = ipam.get("socket", DEFAULT_SOCKET)
    if not sock.startswith("/"):
        raise CniError(INVALID_CONFIG, f"ipam.socket {sock!r} must be an absolute path")
    return Client(sock)


def _pool(client: Client, call: Call, ipam: dict[str, Any], create: bool) -> dict[str, Any] | None:
    name = ipam.get("network", call.conf["name"])
    try:
        return client.request("GET", f"/v1/networks/{q(name)}")
    except AgentRefused as exc:
        if exc.status != 404:
            raise
    if not create:
        return None
    if "subnet" not in ipam and "subnet6" not in ipam:
        raise CniError(NO_SUCH_NETWORK, f"libnet network {name!r} does not exist", "give ipam.subnet/subnet6")
    body: dict[str, Any] = {"name": name, "driver": "null", "ipv6": "subnet6" in ipam}
    for key, field in (
        ("subnet", "ipv4_subnet"),
        ("gateway", "ipv4_gateway"),
        ("subnet6", "ipv6_subnet"),
        ("gateway6", "ipv6_gateway"),
    ):
        if key in ipam:
            body[field] = ipam[key]
    try:
        client.request("POST", "/v1/networks", body)
    except AgentRefused as exc:
        if exc.status != 409:
            raise
    return client.request("GET", f"/v1/networks/{q(name)}")


def _result(call: Call, ipam: dict[str, Any], nw: dict[str, Any], ep: dict[str, Any]) -> dict[str, Any]:
    ips = []
    for addr, gw in ((ep.get("ipv4"), nw.get("ipv4_gateway")), (ep.get("ipv6"), nw.get("ipv6_gateway"))):
        if addr:
            entry = {"address": addr}
            if gw:
                entry["gateway"] = gw.split("/")[0]
            ips.append(entry)
    out: dict[str, Any] = {"ips": ips, "routes": list(ipam.get("routes", [])), "dns": {}}
    return shape(out, call.version)


def _endpoint(client: Client, nw: dict[str, Any], name: str) -> dict[str, Any] | None:
    try:
        return client.request("GET", f"/v1/endpoints/{q(name)}?network={q(nw['id'])}")
    except AgentRefused as exc:
        if exc.status == 404:
            return None
        raise


def add(call: Call) -> dict[str, Any]:
    ipam = _section(call)
    check_args(call.args, KNOWN_ARGS)
    v4, v6 = requested_ips(call)
    client = _client(ipam)
    nw = _pool(client, call, ipam, create=True)
    assert nw is not None
    name = endpoint_name(call.container_id, call.ifname)
    ep = _endpoint(client, nw, name)
    if ep is None:
        body: dict[str, Any] = {"network": nw["id"], "name": name}
        if v4:
            body["ipv4"] = v4
        if v6:
            body["ipv6"] = v6
        try:
            ep = client.request("POST", "/v1/endpoints", body)
        except AgentRefused as exc:
            if exc.status != 409 or (ep := _endpoint(client, nw, name)) is None:
                raise
    return _result(call, ipam, nw, ep)


def delete(call: Call) -> None:
    ipam = _section(call)
    client = _client(ipam)
    nw = _pool(client, call, ipam, create=False)
    if nw is None:
        return None
    try:
        client.request(
            "DELETE", f"/v1/endpoints/{q(endpoint_name(call.container_id, call.ifname))}?network={q(nw['id'])}"
        )
    except AgentRefused as exc:
        if exc.status != 404:
            raise
    return None


def check(call: Call) -> None:
    ipam = _section(call)
    client = _client(ipam)
    nw = _pool(client, call, ipam, create=False)
    ep = None if nw is None else _endpoint(client, nw, endpoint_name(call.container_id, call.ifname))
    if nw is None or ep is None:
        raise CniError(UNKNOWN_CONTAINER, f"libnet-ipam holds no addresses for {call.container_id}/{call.ifname}")
    prev = call.conf.get("prevResult") or {}
    got = {ip.get("address") for ip in prev.get("ips", [])}
    want = {a for a in (ep.get("ipv4"), ep.get("ipv6")) if a}
    if prev and not want <= got:
        raise CniError(CHECK_FAILED, "prevResult does not carry the addresses libnet-ipam holds", str(sorted(want)))
    return None


def main() -> int:
    return run({"ADD": add, "DEL": delete, "CHECK": check})


if __name__ == "__main__":
    sys.exit(main())
