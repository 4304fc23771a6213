"""The ``libnet-ipam`` CNI IPAM plugin: addresses from libnet's IPAM for a main
plugin such as the reference ``bridge``.

Config (the ``ipam`` section of the main plugin's config)::

    "ipam": {"type": "libnet-ipam",
             "network": "pool-name",                 # default: the config's name
             "socket": "/run/libnet/libnet.sock",
             "subnet": "198.51.100.0/24", "subnet6": "2001:db8:7::/64",
             "gateway": "...", "gateway6": "...",
             "routes": [{"dst": "0.0.0.0/0"}]}

The pool is a libnet ``null`` network (addresses only: libnet programs
nothing for it) used if it exists, created on first use from
``subnet``/``subnet6`` with the label ``libnet.way-out=true`` (the main
plugin gives its containers their way out, so their DNS forwards).  ADD is
one request to the agent (``POST /v1/cni/ipam/add``, ``agent/cni_api.py``):
the container becomes a libnet sandbox on ``CNI_NETNS`` -- the runtime's
namespace, never removed by libnet, in which the ``null`` driver touches
nothing -- holding one endpoint on the pool, named after ``K8S_POD_NAME``
when that is a DNS label (else ``cni-`` + a hash of container id and
interface name).  So libnet's DNS answers at 127.0.0.11 in the container with
the names of the pool's other containers; the result's ``dns`` names that
resolver, but the reference ``bridge`` 1.1 puts its own config's ``dns`` in
its result, so the conflist's bridge entry carries ``"dns": {"nameservers":
["127.0.0.11"]}`` (podman writes it into resolv.conf).  ADD twice replays
the same addresses; DEL (``POST /v1/cni/ipam/del``) releases them and drops
the sandbox, an unknown one is success.  Static addresses come from
``runtimeConfig.ips``, ``args.cni.ips`` or ``CNI_ARGS`` ``IP=``.
"""

from __future__ import annotations

import sys

from .client import DEFAULT_SOCKET, AgentRefused, Client, q
from .common import (
    CHECK_FAILED,
    INTERFACE_NAME,
    INVALID_CONFIG,
    NO_SUCH_NETWORK,
    UNKNOWN_CONTAINER,
    Call,
    CniError,
    agent_client,
    ask_status,
    check_args,
    collect,
    dns_label,
    requested_ips,
    run,
    shape,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

RESOLVER = "127.0.0.11"  # libnet's embedded DNS, in the container's namespace
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
    return agent_client(ipam.get("socket", DEFAULT_SOCKET), "ipam.socket")


def _pool_name(call: Call, ipam: dict[str, Any]) -> str:
    name = ipam.get("network", call.conf["name"])
    if not name:
        raise CniError(INVALID_CONFIG, "ipam.network must name a libnet network")
    return str(name)


def _create_fields(ipam: dict[str, Any]) -> dict[str, Any] | None:
    """The pool's fields when it must be made (None: ``subnet``/``subnet6`` not given)."""
    if "subnet" not in ipam and "subnet6" not in ipam:
        return None
    body: dict[str, Any] = {"ipv6": "subnet6" in ipam}
    for key, field in (
        ("subnet", "ipv4_subnet"),
        ("gateway", "ipv4_gateway"),
        ("subnet6", "ipv6_subnet"),
        ("gateway6", "ipv6_gateway"),
    ):
        if key in ipam:
            body[field] = ipam[key]
    return body


def _result(call: Call, ipam: dict[str, Any], nw: dict[str, Any], ep: dict[str, Any]) -> dict[str, Any]:
    ips = []
    for addr, gw in ((ep.get("ipv4"), nw.get("ipv4_gateway")), (ep.get("ipv6"), nw.get("ipv6_gateway"))):
        if addr:
            entry = {"address": addr}
            if gw:
                entry["gateway"] = gw.split("/")[0]
            ips.append(entry)
    # the resolver libnet serves in the container's namespace: a main plugin that keeps its IPAM's dns
    # passes it on; the reference bridge 1.1 replaces it by its own config's dns (README, "CNI")
    dns: dict[str, Any] = {"nameservers": [RESOLVER]}
    out: dict[str, Any] = {"ips": ips, "routes": list(ipam.get("routes", [])), "dns": dns}
    return shape(out, call.version)


def add(call: Call) -> dict[str, Any]:
    """One request to the agent (``POST /v1/cni/ipam/add``, ``agent/cni_api.py``), then the result."""
    ipam = _section(call)
    check_args(call.args, KNOWN_ARGS)
    v4, v6 = requested_ips(call)
    name = _pool_name(call, ipam)
    body: dict[str, Any] = {
        "container_id": call.container_id,
        "netns": call.netns,
        "ifname": call.ifname,
        "network": name,
        "fallback_name": endpoint_name(call.container_id, call.ifname),
        "create": _create_fields(ipam),
        "name": dns_label(call.args.get("K8S_POD_NAME")),
        "ipv4": v4,
        "ipv6": v6,
    }
    try:
        out = _client(ipam).request("POST", "/v1/cni/ipam/add", {k: v for k, v in body.items() if v is not None})
    except AgentRefused as exc:
        if exc.status == 404 and exc.type == "NoSuchNetwork":
            raise CniError(
                NO_SUCH_NETWORK, f"libnet network {name!r} does not exist", "give ipam.subnet/subnet6"
            ) from None
        if exc.status == 409 and exc.type == "InterfaceNameRefused":
            raise CniError(INTERFACE_NAME, str(exc), "a container takes one interface's addresses per pool") from None
        raise
    return _result(call, ipam, out["network"], out["endpoint"])


def delete(call: Call) -> None:
    """One request to the agent; an unknown container, pool or endpoint is success there."""
    ipam = _section(call)
    body = {"container_id": call.container_id, "network": _pool_name(call, ipam)}
    if call.ifname:  # the endpoint an older libnet-ipam made for this interface, if any
        body["legacy_name"] = endpoint_name(call.container_id, call.ifname)
    _client(ipam).request("POST", "/v1/cni/ipam/del", body)
    return None


def _held(client: Client, call: Call, ipam: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The container's sandbox and its endpoint on the pool (None: none)."""
    try:
        nw = client.request("GET", f"/v1/networks/{q(_pool_name(call, ipam))}")
        sb = client.request("GET", f"/v1/sandboxes/{q(call.container_id)}")
    except AgentRefused as exc:
        if exc.status == 404:
            return None
        raise
    for eid in sb.get("endpoints", []):
        try:
            ep = client.request("GET", f"/v1/endpoints/{q(eid)}")
        except AgentRefused as exc:
            if exc.status == 404:
                continue
            raise
        if ep.get("network_id") == nw["id"]:
            return dict(sb), dict(ep)
    return None


def check(call: Call) -> None:
    ipam = _section(call)
    client = _client(ipam)
    held = _held(client, call, ipam)
    if held is None:
        raise CniError(UNKNOWN_CONTAINER, f"libnet-ipam holds no addresses for {call.container_id}/{call.ifname}")
    sb, ep = held
    if ep.get("ifname") != call.ifname:
        raise CniError(CHECK_FAILED, f"libnet-ipam holds pool addresses for {ep.get('ifname')}, not {call.ifname}")
    if call.netns and sb.get("netns") != call.netns:
        raise CniError(
            CHECK_FAILED, f"libnet-ipam knows {call.container_id[:12]} on {sb.get('netns')}, not {call.netns}"
        )
    prev = call.conf.get("prevResult") or {}
    got = {ip.get("address") for ip in prev.get("ips", [])}
    want = {a for a in (ep.get("ipv4"), ep.get("ipv6")) if a}
    if prev and not want <= got:
        raise CniError(CHECK_FAILED, "prevResult does not carry the addresses libnet-ipam holds", str(sorted(want)))
    return None


def status(call: Call) -> None:
    """CNI 1.1 STATUS: ready when the agent answers and the pool exists or the config can make it."""
    ipam = _section(call)
    ask_status(_client(ipam), _pool_name(call, ipam), _create_fields(ipam) is not None)
    return None


def gc(call: Call) -> None:
    """CNI 1.1 GC (the main plugin passes it on): the pool's addresses held for attachments not
    listed as valid are released."""
    ipam = _section(call)
    collect(_client(ipam), call, _pool_name(call, ipam))
    return None


def main() -> int:
    return run({"ADD": add, "DEL": delete, "CHECK": check, "STATUS": status, "GC": gc})


if __name__ == "__main__":
    sys.exit(main())
