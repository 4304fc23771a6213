"""The ``libnet`` CNI plugin: attach a container's namespace to a libnet network
through the local agent (``libnet cni install`` puts it in a CNI bin dir).

Config (a conflist entry; only ``cniVersion``, ``name``, ``type`` are required)::

    {"cniVersion": "1.0.0", "name": "web", "type": "libnet",
     "network": "web",                       # the libnet network (default: name)
     "socket": "/run/libnet/libnet.sock",    # the agent's API socket (default)
     "driver": "bridge", "subnet": "198.51.100.0/24", "subnet6": "2001:db8:1::/64",
     "gateway": "...", "gateway6": "...", "internal": false, "options": {"mtu": "1400"},
     "dns": {"nameservers": [...], "search": [...], "options": [...]}}

The network is used if it exists; if not, it is created on first use when the
config has ``driver``, ``subnet`` or ``subnet6`` (IPv6 only with ``subnet6``
or ``"ipv6": true``); otherwise ADD fails with code 101.  The container's
sandbox has the container id as its id and ``CNI_NETNS`` as its namespace;
its endpoint on the network is named after ``K8S_POD_NAME`` when that is a DNS
label (what podman sets to the container name), so other containers resolve it
through libnet's DNS at 127.0.0.11.  That resolver serves the whole sandbox
(the names of all its libnet networks), so the result names it only for the
sandbox's first interface, eth0: podman removes a disconnected interface's
nameservers from resolv.conf.

ADD twice for the same container, network and interface replays the first
result (the endpoint is not touched).  DEL is idempotent: an unknown container,
network or endpoint is success.  ADD and DEL are one request each to the
agent (``POST /v1/cni/add``, ``/v1/cni/del``: ``agent/cni_api.py`` does the
steps next to the controller).  CHECK compares ``prevResult``, the stored
endpoint and the interface, addresses and default routes in the namespace.
CNI 1.1's STATUS and GC are one request each too (``/v1/cni/status``,
``/v1/cni/gc``; GC removes only attachments CNI ADDs made).
"""

from __future__ import annotations

import sys

from . import wire
from .client import DEFAULT_SOCKET, AgentRefused, Client, q
from .common import (
    CHECK_FAILED,
    INTERFACE_NAME,
    INVALID_CONFIG,
    NO_SUCH_NETWORK,
    UNKNOWN_CONTAINER,
    UNSUPPORTED_FIELD,
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

KNOWN_ARGS = ("K8S_POD_NAME", "K8S_POD_NAMESPACE", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID", "IP")
RESOLVER = "127.0.0.11"
FIRST_IFNAME = "eth0"  # libnet numbers a container's interfaces eth0, eth1, ...
HOST_VETH_PREFIX = "lnv"  # the bridge driver's host-side veth: lnv + the endpoint id's first 12 digits
_CREATE_FIELDS = ("driver", "subnet", "subnet6")


def _client(call: Call) -> Client:
    return agent_client(call.conf.get("socket", DEFAULT_SOCKET), "socket")


def _network_name(call: Call) -> str:
    name = call.conf.get("network", call.conf["name"])
    if not isinstance(name, str) or not name:
        raise CniError(INVALID_CONFIG, f"network {name!r} must be a libnet network name")
    return name


def _validate(call: Call) -> None:
    conf = call.conf
    if conf.get("ipam"):
        raise CniError(
            UNSUPPORTED_FIELD,
            "the libnet plugin does its own IPAM: drop the ipam section",
            "use the bridge plugin with ipam type libnet-ipam for libnet addresses on a CNI bridge",
        )
    for key in ("driver", "subnet", "subnet6", "gateway", "gateway6"):
        if key in conf and not isinstance(conf[key], str):
            raise CniError(INVALID_CONFIG, f"{key} must be a string")
    if "options" in conf and not isinstance(conf["options"], dict):
        raise CniError(INVALID_CONFIG, "options must be an object of driver options")
    dns = conf.get("dns", {})
    lists = ("nameservers", "search", "options")
    if not isinstance(dns, dict) or any(not isinstance(dns.get(k, []), list) for k in lists):
        raise CniError(INVALID_CONFIG, "dns must be an object with lists nameservers, search, options")
    check_args(call.args, KNOWN_ARGS)


def _create_fields(call: Call) -> dict[str, Any] | None:
    """The fields of the network to create when it does not exist (None: do not create it)."""
    conf = call.conf
    if not any(k in conf for k in _CREATE_FIELDS):
        return None
    body: dict[str, Any] = {"driver": conf.get("driver", "bridge"), "ipv6": bool(conf.get("ipv6", "subnet6" in conf))}
    for key, field in (
        ("subnet", "ipv4_subnet"),
        ("gateway", "ipv4_gateway"),
        ("subnet6", "ipv6_subnet"),
        ("gateway6", "ipv6_gateway"),
        ("options", "options"),
        ("internal", "internal"),
    ):
        if key in conf:
            body[field] = conf[key]
    return body


def _sandbox(client: Client, cid: str) -> dict[str, Any] | None:
    try:
        return client.request("GET", f"/v1/sandboxes/{q(cid)}")
    except AgentRefused as exc:
        if exc.status == 404:
            return None
        raise


def _endpoints(client: Client, sb: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for eid in sb.get("endpoints", []):
        try:
            out.append(client.request("GET", f"/v1/endpoints/{q(eid)}"))
        except AgentRefused as exc:
            if exc.status != 404:
                raise
    return out


def _ip(cidr: str | None) -> str | None:
    return cidr.split("/")[0] if cidr else None


def build_result(call: Call, nw: dict[str, Any], ep: dict[str, Any]) -> dict[str, Any]:
    """The 1.0.0 result for ``ep``, after ``prevResult``'s interfaces if there is one."""
    prev = call.conf.get("prevResult") or {}
    interfaces = list(prev.get("interfaces", []))
    if nw.get("driver") == "bridge":  # the host side, in this namespace (bandwidth shapes it)
        interfaces.append({"name": HOST_VETH_PREFIX + ep["id"][:12]})
    index = len(interfaces)
    iface: dict[str, Any] = {"name": ep["ifname"], "mac": ep["mac"], "sandbox": call.netns}
    mtu = (nw.get("options") or {}).get("mtu")
    if mtu and str(mtu).isdigit():
        iface["mtu"] = int(mtu)
    interfaces.append(iface)
    ips, routes = list(prev.get("ips", [])), list(prev.get("routes", []))
    for addr, gw, default in (
        (ep.get("ipv4"), nw.get("ipv4_gateway"), "0.0.0.0/0"),
        (ep.get("ipv6"), nw.get("ipv6_gateway"), "::/0"),
    ):
        if not addr:
            continue
        entry: dict[str, Any] = {"address": addr, "interface": index}
        if gw and not nw.get("internal"):
            entry["gateway"] = _ip(gw)
            if ep.get("gateway"):
                routes.append({"dst": default, "gw": _ip(gw)})
        ips.append(entry)
    dns_conf = call.conf.get("dns") or {}
    # libnet's resolver serves the whole sandbox: named once, by its first interface.  podman adds
    # an interface's nameservers to resolv.conf on connect and removes them on disconnect, so
    # naming it on eth1 too would drop it from resolv.conf when eth1 is disconnected
    dns: dict[str, Any] = {"nameservers": [RESOLVER]} if ep.get("ifname") == FIRST_IFNAME else {}
    if dns_conf.get("search"):
        dns["search"] = list(dns_conf["search"])
    if dns_conf.get("options"):
        dns["options"] = list(dns_conf["options"])
    return shape({"interfaces": interfaces, "ips": ips, "routes": routes, "dns": dns}, call.version)


def add(call: Call) -> dict[str, Any]:
    """One request to the agent (``agent/cni_api.py``: network, sandbox, replay, connect), then the result."""
    _validate(call)
    v4, v6 = requested_ips(call)
    name = _network_name(call)
    body: dict[str, Any] = {
        "container_id": call.container_id,
        "netns": call.netns,
        "ifname": call.ifname,
        "network": name,
        "create": _create_fields(call),
        "name": dns_label(call.args.get("K8S_POD_NAME")),
        "ipv4": v4,
        "ipv6": v6,
    }
    dns = call.conf.get("dns") or {}
    for key, field in (("nameservers", "dns"), ("search", "dns_search"), ("options", "dns_options")):
        if dns.get(key):
            body[field] = list(dns[key])
    try:
        out = _client(call).request("POST", "/v1/cni/add", {k: v for k, v in body.items() if v is not None})
    except AgentRefused as exc:
        if exc.status == 404 and exc.type == "NoSuchNetwork":
            raise CniError(
                NO_SUCH_NETWORK,
                f"libnet network {name!r} does not exist",
                "create it (libnet network create) or give driver/subnet/subnet6 in the config",
            ) from None
        if exc.status == 409 and exc.type == "InterfaceNameRefused":
            raise CniError(
                INTERFACE_NAME, str(exc), "libnet numbers a container's interfaces eth0, eth1, ..."
            ) from None
        raise
    return build_result(call, out["network"], out["endpoint"])


def delete(call: Call) -> None:
    """One request to the agent; an unknown container, network or endpoint is success there."""
    body = {"container_id": call.container_id, "network": _network_name(call), "ifname": call.ifname}
    _client(call).request("POST", "/v1/cni/del", body)
    return None


def check(call: Call) -> None:
    _validate(call)
    prev = call.conf.get("prevResult")
    if not prev:
        raise CniError(INVALID_CONFIG, "CHECK needs prevResult")
    client = _client(call)
    sb = _sandbox(client, call.container_id)
    if sb is None:
        raise CniError(UNKNOWN_CONTAINER, f"libnet knows no container {call.container_id}")
    name = _network_name(call)
    try:
        nw = client.request("GET", f"/v1/networks/{q(name)}")
    except AgentRefused as exc:
        if exc.status == 404:
            raise CniError(NO_SUCH_NETWORK, f"libnet network {name!r} does not exist") from None
        raise
    ep = next((e for e in _endpoints(client, sb) if e["network_id"] == nw["id"]), None)
    if ep is None or ep.get("ifname") != call.ifname:
        raise CniError(CHECK_FAILED, f"container {call.container_id[:12]} has no {call.ifname} on {name}")
    want = {a for a in (ep.get("ipv4"), ep.get("ipv6")) if a}
    got_ips = {ip.get("address") for ip in prev.get("ips", [])}
    if not want <= got_ips:
        raise CniError(
            CHECK_FAILED,
            "prevResult does not carry the endpoint's addresses",
            f"endpoint {sorted(want)}, prevResult {sorted(a for a in got_ips if a)}",
        )
    iface = next(
        (i for i in prev.get("interfaces", []) if i["name"] == call.ifname and i.get("sandbox") == call.netns), None
    )
    if iface is None:
        raise CniError(CHECK_FAILED, f"prevResult has no interface {call.ifname} in {call.netns}")
    # the chain's final MAC: a later plugin (tuning) may have set it, as the reference plugins accept;
    # not on an overlay, whose peers reach the endpoint at the MAC libnet gave it (derived from its IPv4)
    mac = str(iface.get("mac") or ep["mac"]).lower()
    if nw.get("driver") == "overlay" and mac != ep["mac"].lower():
        raise CniError(
            CHECK_FAILED,
            f"{call.ifname} has MAC {mac} in prevResult: the overlay's peers reach it at {ep['mac']}",
            "a later plugin (tuning) must not change the MAC of an overlay endpoint",
        )
    _check_kernel(call, nw, ep, want, mac)
    return None


def _ip_json(netns: str, *args: str) -> Any:
    import subprocess  # CHECK only: not on the ADD/DEL path

    r = subprocess.run(["nsenter", f"--net={netns}", "ip", "-j", *args], capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        raise CniError(CHECK_FAILED, f"cannot read the namespace {netns}", r.stderr.strip()[:500])
    return wire.loads(r.stdout or "[]")


def _check_kernel(call: Call, nw: dict[str, Any], ep: dict[str, Any], want: set[str], mac: str) -> None:
    links = _ip_json(call.netns, "addr", "show", "dev", call.ifname) if call.ifname else []
    if not links:
        raise CniError(CHECK_FAILED, f"no interface {call.ifname} in {call.netns}")
    link = links[0]
    if link.get("address", "").lower() != mac:
        raise CniError(CHECK_FAILED, f"{call.ifname} has MAC {link.get('address')}, the result says {mac}")
    have = {f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])}
    missing = want - have
    if missing:
        raise CniError(CHECK_FAILED, f"{call.ifname} lacks {', '.join(sorted(missing))}")
    if ep.get("gateway") and not nw.get("internal"):
        for family, gw in (("-4", nw.get("ipv4_gateway")), ("-6", nw.get("ipv6_gateway"))):
            if gw and ep.get("ipv4" if family == "-4" else "ipv6"):
                routes = _ip_json(call.netns, family, "route", "show", "default")
                if not any(r.get("gateway") == _ip(gw) and r.get("dev") == call.ifname for r in routes):
                    raise CniError(CHECK_FAILED, f"no default route via {_ip(gw)} on {call.ifname}")


def status(call: Call) -> None:
    """CNI 1.1 STATUS: ready when the agent answers and the network exists or the config can make it."""
    _validate(call)
    ask_status(_client(call), _network_name(call), _create_fields(call) is not None)
    return None


def gc(call: Call) -> None:
    """CNI 1.1 GC: the network's attachments made by CNI ADDs and not listed as valid go."""
    collect(_client(call), call, _network_name(call))
    return None


def main() -> int:
    return run({"ADD": add, "DEL": delete, "CHECK": check, "STATUS": status, "GC": gc})


if __name__ == "__main__":
    sys.exit(main())
