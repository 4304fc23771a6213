"""Malformed and hostile requests to a real agent (issue 14, acceptance 1).

One agent in a test host holds a small world: a dual-stack network with a
container publishing a port, an internal network, an idle sandbox, a process
listening on a host port.  Each request in :data:`CASES` must be refused
with the expected status (400, 404, 405, 409 -- never a 500) and error kind,
and leave everything exactly as it was: the store's records, and in the
host's and every container's namespace the links, addresses, routes, the
namespace list, the nftables ruleset and the agent's state files.  The
comparison is against one snapshot taken before the first request, so a
change that a later request happened to undo is still caught.
"""

from __future__ import annotations

import concurrent.futures
import difflib
import hashlib
import http.client
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from typing import Any

import pytest

from libnet.testing.agents import AgentProcess
from libnet.testing.hosts import Testbed

pytestmark = pytest.mark.root

Body = bytes | dict | list | None

# --- the world the requests run against ----------------------------------------------------

FRONT4, FRONT6 = "198.51.100.0/25", "2001:db8:14::/64"
INTRA4 = "198.51.100.128/26"
WEB_IP = "198.51.100.10"
PUBLISHED = 8080
LISTENED = 9090  # a process of the host listens here


def _request(sock_path: str, method: str, path: str, body: Body = None, headers: dict | None = None):
    """One HTTP request over the agent's unix socket; ``body`` bytes are sent as they are."""
    conn = http.client.HTTPConnection("libnet", timeout=60)
    conn.sock = socket.socket(socket.AF_UNIX)
    conn.sock.settimeout(60)
    conn.sock.connect(sock_path)
    raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    try:
        conn.request(method, path, body=raw, headers=hdrs)
        r = conn.getresponse()
        data = r.read()
    finally:
        conn.close()
    try:
        doc = json.loads(data) if data else {}
    except ValueError:
        doc = {"raw": data[:200].decode(errors="replace")}
    return r.status, doc


def _nest(depth: int) -> bytes:
    return b'{"name": "deep", "options": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"


def _net(**fields: Any) -> dict:
    return {"name": "evil", **fields}


def _connect(**fields: Any) -> dict:
    return {"sandbox": "sb-two", **fields}


def _ports(*ports: Any) -> dict:
    return _connect(ports=list(ports))


def _pm(host_port: Any = 8181, container_port: Any = 80, protocol: Any = "tcp", **more: Any) -> dict:
    return {"host_port": host_port, "container_port": container_port, "protocol": protocol, **more}


BAD, MISSING, TAKEN, METHOD = 400, 404, 409, 405
B, N, C = "bad_request", "not_found", "conflict"

# (case id, method, path, body, status, kind); kind None: any error kind
CASES: list[tuple[str, str, str, Any, int, str | None]] = [
    # --- JSON itself ------------------------------------------------------------------------
    ("empty-object-no-name", "POST", "/v1/networks", b"{}", BAD, B),
    ("truncated", "POST", "/v1/networks", b'{"name": "x"', BAD, B),
    ("array", "POST", "/v1/networks", b"[]", BAD, B),
    ("null", "POST", "/v1/networks", b"null", BAD, B),
    ("number", "POST", "/v1/networks", b"42", BAD, B),
    ("string", "POST", "/v1/networks", b'"front"', BAD, B),
    ("not-utf8", "POST", "/v1/networks", b'{"name": "\xff\xfe"}', BAD, B),
    ("utf16-bom", "POST", "/v1/networks", '{"name": "x"}'.encode("utf-16"), BAD, B),
    ("nan", "POST", "/v1/networks", b'{"name": "evil", "options": {"mtu": NaN}}', BAD, B),
    ("infinity", "POST", "/v1/networks", b'{"name": "evil", "options": {"mtu": Infinity}}', BAD, B),
    ("minus-infinity", "POST", "/v1/networks", b'{"name": "evil", "options": {"mtu": -Infinity}}', BAD, B),
    ("1e400", "POST", "/v1/networks", b'{"name": "evil", "options": {"mtu": 1e400}}', BAD, B),
    ("huge-int", "POST", "/v1/networks", b'{"name": "evil", "options": {"mtu": ' + b"9" * 4000 + b"}}", BAD, B),
    ("nested-20", "POST", "/v1/networks", _nest(20), BAD, B),
    ("nested-5000", "POST", "/v1/networks", _nest(5000), BAD, B),
    ("nested-lists", "POST", "/v1/networks", b'{"name": "x", "labels": ' + b"[" * 3000 + b"]" * 3000 + b"}", BAD, B),
    ("body-over-1mib", "POST", "/v1/networks", b'{"name": "' + b"a" * (1 << 20) + b'"}', BAD, B),
    ("duplicate-keys", "POST", "/v1/networks", b'{"name": "front", "name": "-bad-"}', BAD, B),
    ("trailing-garbage", "POST", "/v1/networks", b'{"name": "evil"} {}', BAD, B),
    ("nul-in-json", "POST", "/v1/networks", b'{"name": "ev\\u0000il"}', BAD, B),
    ("unknown-field", "POST", "/v1/networks", _net(color="red"), BAD, B),
    ("unknown-field-proto", "POST", "/v1/networks", _net(__proto__={}), BAD, B),
    # --- network create: types --------------------------------------------------------------
    ("name-int", "POST", "/v1/networks", {"name": 7}, BAD, B),
    ("name-list", "POST", "/v1/networks", {"name": ["front"]}, BAD, B),
    ("name-bool", "POST", "/v1/networks", {"name": True}, BAD, B),
    ("name-object", "POST", "/v1/networks", {"name": {}}, BAD, B),
    ("driver-int", "POST", "/v1/networks", _net(driver=1), BAD, B),
    ("ipv6-string", "POST", "/v1/networks", _net(ipv6="yes"), BAD, B),
    ("ipv6-int", "POST", "/v1/networks", _net(ipv6=1), BAD, B),
    ("internal-string", "POST", "/v1/networks", _net(internal="true"), BAD, B),
    ("options-list", "POST", "/v1/networks", _net(options=["mtu=1400"]), BAD, B),
    ("labels-list", "POST", "/v1/networks", _net(labels=["a=b"]), BAD, B),
    ("labels-int-value", "POST", "/v1/networks", _net(labels={"a": 1}), BAD, B),
    ("labels-null-value", "POST", "/v1/networks", _net(labels={"a": None}), BAD, B),
    ("subnet-int", "POST", "/v1/networks", _net(ipv4_subnet=3325256704), BAD, B),
    ("subnet-list", "POST", "/v1/networks", _net(ipv4_subnet=["198.51.100.0/26"]), BAD, B),
    # --- network create: names --------------------------------------------------------------
    ("name-empty", "POST", "/v1/networks", {"name": ""}, BAD, B),
    ("name-leading-dash", "POST", "/v1/networks", {"name": "-x"}, BAD, B),
    ("name-trailing-dash", "POST", "/v1/networks", {"name": "x-"}, BAD, B),
    ("name-64", "POST", "/v1/networks", {"name": "a" * 64}, BAD, B),
    ("name-space", "POST", "/v1/networks", {"name": "a b"}, BAD, B),
    ("name-slash", "POST", "/v1/networks", {"name": "a/b"}, BAD, B),
    ("name-dotdot", "POST", "/v1/networks", {"name": ".."}, BAD, B),
    ("name-traversal", "POST", "/v1/networks", {"name": "../../etc"}, BAD, B),
    ("name-newline", "POST", "/v1/networks", {"name": "a\nb"}, BAD, B),
    ("name-nul", "POST", "/v1/networks", {"name": "a\x00b"}, BAD, B),
    ("name-unicode", "POST", "/v1/networks", {"name": "réseau"}, BAD, B),
    ("name-dot", "POST", "/v1/networks", {"name": "a.b"}, BAD, B),
    ("name-taken", "POST", "/v1/networks", {"name": "front"}, TAKEN, C),
    ("name-taken-internal", "POST", "/v1/networks", {"name": "intra"}, TAKEN, C),
    ("driver-unknown", "POST", "/v1/networks", _net(driver="nope"), None, None),
    ("driver-path", "POST", "/v1/networks", _net(driver="../bridge"), None, None),
    # --- network create: subnets and gateways -----------------------------------------------
    ("subnet-garbage", "POST", "/v1/networks", _net(ipv4_subnet="not-a-subnet"), BAD, B),
    ("subnet-octet", "POST", "/v1/networks", _net(ipv4_subnet="300.1.1.0/24"), BAD, B),
    ("subnet-prefix-33", "POST", "/v1/networks", _net(ipv4_subnet="198.51.100.0/33"), BAD, B),
    ("subnet-no-prefix-word", "POST", "/v1/networks", _net(ipv4_subnet="198.51.100.0/abc"), BAD, B),
    ("subnet-v6-as-v4", "POST", "/v1/networks", _net(ipv4_subnet="2001:db8:99::/64"), BAD, B),
    ("subnet-v4-as-v6", "POST", "/v1/networks", _net(ipv6_subnet="198.51.100.192/27"), BAD, B),
    ("subnet-too-small-v4", "POST", "/v1/networks", _net(ipv4_subnet="198.51.100.200/31"), BAD, B),
    ("subnet-host-v4", "POST", "/v1/networks", _net(ipv4_subnet="198.51.100.200/32"), BAD, B),
    ("subnet-loopback", "POST", "/v1/networks", _net(ipv4_subnet="127.0.0.0/8"), BAD, B),
    ("subnet-loopback-small", "POST", "/v1/networks", _net(ipv4_subnet="127.1.2.0/24"), BAD, B),
    ("subnet-multicast", "POST", "/v1/networks", _net(ipv4_subnet="224.0.0.0/24"), BAD, B),
    ("subnet-link-local", "POST", "/v1/networks", _net(ipv4_subnet="169.254.0.0/16"), BAD, B),
    ("subnet-unspecified", "POST", "/v1/networks", _net(ipv4_subnet="0.0.0.0/0"), BAD, B),
    ("subnet-this-net", "POST", "/v1/networks", _net(ipv4_subnet="0.0.0.0/8"), BAD, B),
    ("subnet-reserved", "POST", "/v1/networks", _net(ipv4_subnet="240.0.0.0/24"), BAD, B),
    ("subnet-broadcast", "POST", "/v1/networks", _net(ipv4_subnet="255.255.255.0/24"), BAD, B),
    ("subnet6-link-local", "POST", "/v1/networks", _net(ipv6_subnet="fe80::/64"), BAD, B),
    ("subnet6-multicast", "POST", "/v1/networks", _net(ipv6_subnet="ff02::/64"), BAD, B),
    ("subnet6-mapped", "POST", "/v1/networks", _net(ipv6_subnet="::ffff:198.51.100.0/120"), BAD, B),
    ("subnet6-loopback", "POST", "/v1/networks", _net(ipv6_subnet="::1/128"), BAD, B),
    ("subnet6-unspecified", "POST", "/v1/networks", _net(ipv6_subnet="::/0"), BAD, B),
    ("subnet6-zone", "POST", "/v1/networks", _net(ipv6_subnet="2001:db8:99::%eth0/64"), BAD, B),
    ("subnet-overlaps-front", "POST", "/v1/networks", _net(ipv4_subnet="198.51.100.0/26"), TAKEN, C),
    ("subnet-contains-front", "POST", "/v1/networks", _net(ipv4_subnet="198.51.100.0/24"), TAKEN, C),
    ("subnet6-overlaps-front", "POST", "/v1/networks", _net(ipv6_subnet="2001:db8:14::/48"), TAKEN, C),
    ("subnet-host-uplink", "POST", "/v1/networks", _net(ipv4_subnet="203.0.113.0/24"), None, None),
    ("subnet-host-uplink-small", "POST", "/v1/networks", _net(ipv4_subnet="203.0.113.0/28"), None, None),
    ("subnet6-host-uplink", "POST", "/v1/networks", _net(ipv6_subnet="2001:db8:ffff::/64"), None, None),
    ("gateway-no-subnet", "POST", "/v1/networks", _net(ipv4_gateway="198.51.100.193"), BAD, B),
    (
        "gateway-outside",
        "POST",
        "/v1/networks",
        _net(ipv4_subnet="198.51.100.192/27", ipv4_gateway="198.51.100.1"),
        BAD,
        B,
    ),
    (
        "gateway-network-addr",
        "POST",
        "/v1/networks",
        _net(ipv4_subnet="198.51.100.192/27", ipv4_gateway="198.51.100.192"),
        BAD,
        B,
    ),
    (
        "gateway-broadcast",
        "POST",
        "/v1/networks",
        _net(ipv4_subnet="198.51.100.192/27", ipv4_gateway="198.51.100.223"),
        BAD,
        B,
    ),
    ("gateway-garbage", "POST", "/v1/networks", _net(ipv4_subnet="198.51.100.192/27", ipv4_gateway="gw"), BAD, B),
    (
        "gateway-v6-for-v4",
        "POST",
        "/v1/networks",
        _net(ipv4_subnet="198.51.100.192/27", ipv4_gateway="2001:db8::1"),
        BAD,
        B,
    ),
    (
        "gateway-cidr",
        "POST",
        "/v1/networks",
        _net(ipv4_subnet="198.51.100.192/27", ipv4_gateway="198.51.100.193/24"),
        BAD,
        B,
    ),
    (
        "gateway6-outside",
        "POST",
        "/v1/networks",
        _net(ipv6_subnet="2001:db8:99::/64", ipv6_gateway="2001:db8:98::1"),
        BAD,
        B,
    ),
    ("ipv6-off-with-subnet6", "POST", "/v1/networks", _net(ipv6=False, ipv6_subnet="2001:db8:99::/64"), BAD, B),
    ("ipv6-off-with-gateway6", "POST", "/v1/networks", _net(ipv6=False, ipv6_gateway="2001:db8:99::1"), BAD, B),
    # --- network create: driver options -----------------------------------------------------
    ("mtu-negative", "POST", "/v1/networks", _net(options={"mtu": -1}), BAD, B),
    ("mtu-zero", "POST", "/v1/networks", _net(options={"mtu": 0}), BAD, B),
    ("mtu-small", "POST", "/v1/networks", _net(options={"mtu": 67}), BAD, B),
    ("mtu-large", "POST", "/v1/networks", _net(options={"mtu": 65536}), BAD, B),
    ("mtu-2e31", "POST", "/v1/networks", _net(options={"mtu": 2**31}), BAD, B),
    ("mtu-float", "POST", "/v1/networks", _net(options={"mtu": 1400.9}), BAD, B),
    ("mtu-float-integral", "POST", "/v1/networks", _net(options={"mtu": 1400.0}), BAD, B),
    ("mtu-bool", "POST", "/v1/networks", _net(options={"mtu": True}), BAD, B),
    ("mtu-word", "POST", "/v1/networks", _net(options={"mtu": "big"}), BAD, B),
    ("mtu-exponent-string", "POST", "/v1/networks", _net(options={"mtu": "1e3"}), BAD, B),
    ("mtu-unicode-digit", "POST", "/v1/networks", _net(options={"mtu": "\u00b2"}), BAD, B),
    ("mtu-arabic-digits", "POST", "/v1/networks", _net(options={"mtu": "\u0661\u0665\u0660\u0660"}), BAD, B),
    ("labels-too-many", "POST", "/v1/networks", _net(labels={f"k{i}": "v" for i in range(300)}), BAD, B),
    ("label-value-huge", "POST", "/v1/networks", _net(labels={"k": "v" * 5000}), BAD, B),
    ("mtu-list", "POST", "/v1/networks", _net(options={"mtu": [1400]}), BAD, B),
    ("option-unknown", "POST", "/v1/networks", _net(options={"colour": "red"}), BAD, B),
    ("icc-maybe", "POST", "/v1/networks", _net(options={"icc": "maybe"}), BAD, B),
    ("bridge-name-eth0", "POST", "/v1/networks", _net(options={"bridge_name": "eth0"}), TAKEN, C),
    ("bridge-name-lo", "POST", "/v1/networks", _net(options={"bridge_name": "lo"}), TAKEN, C),
    ("bridge-name-16", "POST", "/v1/networks", _net(options={"bridge_name": "b" * 16}), BAD, B),
    ("bridge-name-space", "POST", "/v1/networks", _net(options={"bridge_name": "br 0"}), BAD, B),
    ("bridge-name-slash", "POST", "/v1/networks", _net(options={"bridge_name": "br/0"}), BAD, B),
    ("bridge-name-empty", "POST", "/v1/networks", _net(options={"bridge_name": ""}), BAD, B),
    ("bridge-name-dot", "POST", "/v1/networks", _net(options={"bridge_name": "."}), BAD, B),
    ("bridge-name-int", "POST", "/v1/networks", _net(options={"bridge_name": 5}), BAD, B),
    ("vni-on-bridge", "POST", "/v1/networks", _net(options={"vni": 42}), BAD, B),
    # --- network create: ranges, aux addresses, the route override -------------------------
    (
        "range-outside",
        "POST",
        "/v1/networks",
        _net(ipv4_subnet="198.51.100.192/28", ipv4_range="198.51.100.0/28"),
        BAD,
        B,
    ),
    ("range-no-subnet", "POST", "/v1/networks", _net(ipv4_range="198.51.100.192/28"), BAD, B),
    (
        "range-v6-in-v4",
        "POST",
        "/v1/networks",
        _net(ipv4_subnet="198.51.100.192/28", ipv4_range="2001:db8::/64"),
        BAD,
        B,
    ),
    ("range-int", "POST", "/v1/networks", _net(ipv4_subnet="198.51.100.192/28", ipv4_range=28), BAD, B),
    ("range-garbage", "POST", "/v1/networks", _net(ipv4_subnet="198.51.100.192/28", ipv4_range="half"), BAD, B),
    (
        "aux-list",
        "POST",
        "/v1/networks",
        _net(ipv4_subnet="198.51.100.192/28", aux_addresses=["198.51.100.200"]),
        BAD,
        B,
    ),
    ("aux-int", "POST", "/v1/networks", _net(ipv4_subnet="198.51.100.192/28", aux_addresses={"r": 1}), BAD, B),
    (
        "aux-outside",
        "POST",
        "/v1/networks",
        _net(ipv4_subnet="198.51.100.192/28", aux_addresses={"r": "198.51.100.1"}),
        BAD,
        B,
    ),
    (
        "aux-gateway",
        "POST",
        "/v1/networks",
        _net(ipv4_subnet="198.51.100.192/28", aux_addresses={"r": "198.51.100.193"}),
        BAD,
        B,
    ),
    (
        "aux-twice",
        "POST",
        "/v1/networks",
        _net(ipv4_subnet="198.51.100.192/28", aux_addresses={"a": "198.51.100.200", "b": "198.51.100.200"}),
        BAD,
        B,
    ),
    (
        "aux-bad-name",
        "POST",
        "/v1/networks",
        _net(ipv4_subnet="198.51.100.192/28", aux_addresses={"a\nb": "198.51.100.200"}),
        BAD,
        B,
    ),
    ("override-string", "POST", "/v1/networks", _net(ipv4_subnet="203.0.113.0/28", allow_route_overlap="yes"), BAD, B),
    (
        "override-host-address",
        "POST",
        "/v1/networks",
        _net(ipv4_subnet="203.0.113.0/24", allow_route_overlap=True),
        TAKEN,
        C,
    ),
    # --- networks: references ---------------------------------------------------------------
    ("get-unknown", "GET", "/v1/networks/nope", None, MISSING, N),
    ("get-dotdot", "GET", "/v1/networks/..%2f..%2fetc", None, MISSING, N),
    ("get-long-ref", "GET", "/v1/networks/" + "a" * 4000, None, MISSING, N),
    ("get-nul-ref", "GET", "/v1/networks/a%00b", None, MISSING, N),
    ("get-empty-prefix", "GET", "/v1/networks/%20", None, MISSING, N),
    ("delete-unknown", "DELETE", "/v1/networks/nope", None, MISSING, N),
    ("delete-in-use", "DELETE", "/v1/networks/front", None, TAKEN, C),
    ("put-networks", "PUT", "/v1/networks", _net(), METHOD, None),
    ("patch-network", "PATCH", "/v1/networks/front", {"name": "x"}, METHOD, None),
    ("unknown-route", "GET", "/v1/nope", None, MISSING, None),
    ("unknown-version", "POST", "/v2/networks", _net(), MISSING, None),
    # --- connect ----------------------------------------------------------------------------
    ("connect-no-sandbox", "POST", "/v1/networks/front/connect", {}, BAD, B),
    ("connect-sandbox-int", "POST", "/v1/networks/front/connect", {"sandbox": 1}, BAD, B),
    ("connect-unknown-network", "POST", "/v1/networks/nope/connect", _connect(), MISSING, N),
    ("connect-unknown-sandbox", "POST", "/v1/networks/front/connect", {"sandbox": "nope"}, MISSING, N),
    ("connect-twice", "POST", "/v1/networks/front/connect", {"sandbox": "sb-one"}, TAKEN, C),
    ("connect-name-taken", "POST", "/v1/networks/front/connect", _connect(name="web"), TAKEN, C),
    ("connect-name-bad", "POST", "/v1/networks/front/connect", _connect(name="we b"), BAD, B),
    ("connect-name-long", "POST", "/v1/networks/front/connect", _connect(name="w" * 64), BAD, B),
    ("connect-unknown-field", "POST", "/v1/networks/front/connect", _connect(mac="02:00:00:00:00:01"), BAD, B),
    ("ip-garbage", "POST", "/v1/networks/front/connect", _connect(ipv4="ten"), BAD, B),
    ("ip-outside", "POST", "/v1/networks/front/connect", _connect(ipv4="198.51.100.200"), BAD, B),
    ("ip-network-addr", "POST", "/v1/networks/front/connect", _connect(ipv4="198.51.100.0"), BAD, B),
    ("ip-broadcast", "POST", "/v1/networks/front/connect", _connect(ipv4="198.51.100.127"), BAD, B),
    ("ip-gateway", "POST", "/v1/networks/front/connect", _connect(ipv4="198.51.100.1"), TAKEN, C),
    ("ip-taken", "POST", "/v1/networks/front/connect", _connect(ipv4=WEB_IP), TAKEN, C),
    ("ip-cidr", "POST", "/v1/networks/front/connect", _connect(ipv4="198.51.100.20/25"), BAD, B),
    ("ip-v6-as-v4", "POST", "/v1/networks/front/connect", _connect(ipv4="2001:db8:14::20"), BAD, B),
    ("ip6-outside", "POST", "/v1/networks/front/connect", _connect(ipv6="2001:db8:15::20"), BAD, B),
    ("ip6-garbage", "POST", "/v1/networks/front/connect", _connect(ipv6="::g"), BAD, B),
    ("ip6-subnet-anycast", "POST", "/v1/networks/front/connect", _connect(ipv6="2001:db8:14::"), BAD, B),
    ("ip-on-internal", "POST", "/v1/networks/intra/connect", _connect(ipv4="198.51.100.10"), BAD, B),
    ("aliases-string", "POST", "/v1/networks/front/connect", _connect(aliases="db"), BAD, B),
    ("aliases-int-item", "POST", "/v1/networks/front/connect", _connect(aliases=[1]), BAD, B),
    ("aliases-bad-label", "POST", "/v1/networks/front/connect", _connect(aliases=["a b"]), BAD, B),
    ("aliases-long-label", "POST", "/v1/networks/front/connect", _connect(aliases=["a" * 64]), BAD, B),
    ("aliases-long-name", "POST", "/v1/networks/front/connect", _connect(aliases=[".".join(["a" * 60] * 5)]), BAD, B),
    ("aliases-nested", "POST", "/v1/networks/front/connect", _connect(aliases=[["db"]]), BAD, B),
    ("services-string", "POST", "/v1/networks/front/connect", _connect(services="db:5432"), BAD, B),
    ("services-no-port", "POST", "/v1/networks/front/connect", _connect(services=[{"name": "db"}]), BAD, B),
    (
        "services-port-zero",
        "POST",
        "/v1/networks/front/connect",
        _connect(services=[{"name": "db", "port": 0}]),
        BAD,
        B,
    ),
    (
        "services-port-big",
        "POST",
        "/v1/networks/front/connect",
        _connect(services=[{"name": "db", "port": 70000}]),
        BAD,
        B,
    ),
    (
        "services-proto",
        "POST",
        "/v1/networks/front/connect",
        _connect(services=[{"name": "db", "port": 5432, "protocol": "sctp"}]),
        BAD,
        B,
    ),
    (
        "services-bad-name",
        "POST",
        "/v1/networks/front/connect",
        _connect(services=[{"name": "d b", "port": 5432}]),
        BAD,
        B,
    ),
    # --- ports ------------------------------------------------------------------------------
    ("ports-object", "POST", "/v1/networks/front/connect", _connect(ports={"8181": 80}), BAD, B),
    ("ports-string-item", "POST", "/v1/networks/front/connect", _ports("8181:80"), BAD, B),
    ("ports-missing-container", "POST", "/v1/networks/front/connect", _ports({"host_port": 8181}), BAD, B),
    ("ports-unknown-key", "POST", "/v1/networks/front/connect", _ports(_pm(extra=1)), BAD, B),
    ("port-zero-container", "POST", "/v1/networks/front/connect", _ports(_pm(container_port=0)), BAD, B),
    ("port-negative", "POST", "/v1/networks/front/connect", _ports(_pm(host_port=-1)), BAD, B),
    ("port-65536", "POST", "/v1/networks/front/connect", _ports(_pm(host_port=65536)), BAD, B),
    ("port-container-65536", "POST", "/v1/networks/front/connect", _ports(_pm(container_port=65536)), BAD, B),
    ("port-float", "POST", "/v1/networks/front/connect", _ports(_pm(host_port=8181.5)), BAD, B),
    ("port-bool", "POST", "/v1/networks/front/connect", _ports(_pm(host_port=True)), BAD, B),
    ("port-string-word", "POST", "/v1/networks/front/connect", _ports(_pm(host_port="http")), BAD, B),
    ("port-huge", "POST", "/v1/networks/front/connect", _ports(_pm(host_port=10**30)), BAD, B),
    ("port-proto-icmp", "POST", "/v1/networks/front/connect", _ports(_pm(protocol="icmp")), BAD, B),
    ("port-proto-upper-sctp", "POST", "/v1/networks/front/connect", _ports(_pm(protocol="SCTP")), BAD, B),
    ("port-proto-int", "POST", "/v1/networks/front/connect", _ports(_pm(protocol=6)), BAD, B),
    ("port-host-ip-garbage", "POST", "/v1/networks/front/connect", _ports(_pm(host_ip="localhost")), BAD, B),
    ("port-host-ip-foreign", "POST", "/v1/networks/front/connect", _ports(_pm(host_ip="198.51.100.250")), BAD, B),
    ("port-host-ip-multicast", "POST", "/v1/networks/front/connect", _ports(_pm(host_ip="224.0.0.1")), BAD, B),
    ("port-host-ip-broadcast", "POST", "/v1/networks/front/connect", _ports(_pm(host_ip="255.255.255.255")), BAD, B),
    ("port-host-ip-int", "POST", "/v1/networks/front/connect", _ports(_pm(host_ip=1)), BAD, B),
    ("port-taken", "POST", "/v1/networks/front/connect", _ports(_pm(host_port=PUBLISHED)), TAKEN, C),
    (
        "port-taken-udp-ok-tcp-taken",
        "POST",
        "/v1/networks/front/connect",
        _ports(_pm(host_port=8182, protocol="udp"), _pm(host_port=PUBLISHED)),
        TAKEN,
        C,
    ),
    (
        "port-taken-on-addr",
        "POST",
        "/v1/networks/front/connect",
        _ports(_pm(host_port=PUBLISHED, host_ip="203.0.113.11")),
        TAKEN,
        C,
    ),
    ("port-listened", "POST", "/v1/networks/front/connect", _ports(_pm(host_port=LISTENED)), TAKEN, C),
    (
        "port-twice",
        "POST",
        "/v1/networks/front/connect",
        _ports(_pm(host_port=8183), _pm(host_port=8183, container_port=81)),
        BAD,
        B,
    ),
    (
        "port-twice-any-and-addr",
        "POST",
        "/v1/networks/front/connect",
        _ports(_pm(host_port=8184), _pm(host_port=8184, host_ip="203.0.113.11")),
        BAD,
        B,
    ),
    ("ports-on-internal", "POST", "/v1/networks/intra/connect", _ports(_pm()), BAD, B),
    ("port-host-ip-link-local", "POST", "/v1/networks/front/connect", _ports(_pm(host_ip="fe80::1")), BAD, B),
    ("port-host-ip-zone", "POST", "/v1/networks/front/connect", _ports(_pm(host_ip="fe80::1%eth0")), BAD, B),
    ("port-host-ip-loopback-zone", "POST", "/v1/networks/front/connect", _ports(_pm(host_ip="::1%lo")), BAD, B),
    ("port-v6-host-on-v4-network", "POST", "/v1/networks/solo/connect", _ports(_pm(host_ip="::1")), BAD, B),
    ("port-v4-mapped-host-ip", "POST", "/v1/networks/front/connect", _ports(_pm(host_ip="::ffff:127.0.0.1")), BAD, B),
    (
        "port-unspecified-taken",
        "POST",
        "/v1/networks/front/connect",
        _ports(_pm(host_port=PUBLISHED, host_ip="0.0.0.0")),
        TAKEN,
        C,
    ),
    (
        "port-unspecified6-taken",
        "POST",
        "/v1/networks/front/connect",
        _ports(_pm(host_port=PUBLISHED, host_ip="::")),
        TAKEN,
        C,
    ),
    (
        "ports-many",
        "POST",
        "/v1/networks/front/connect",
        _ports(*[_pm(host_port=20000 + i) for i in range(2000)] + [_pm(host_port=PUBLISHED)]),
        None,
        None,
    ),
    # --- disconnect, endpoints --------------------------------------------------------------
    ("disconnect-no-sandbox", "POST", "/v1/networks/front/disconnect", {}, BAD, B),
    ("disconnect-unknown-sandbox", "POST", "/v1/networks/front/disconnect", {"sandbox": "nope"}, MISSING, N),
    ("disconnect-not-connected", "POST", "/v1/networks/front/disconnect", {"sandbox": "sb-two"}, MISSING, N),
    ("disconnect-unknown-network", "POST", "/v1/networks/nope/disconnect", {"sandbox": "sb-one"}, MISSING, N),
    ("endpoint-create-no-network", "POST", "/v1/endpoints", {"name": "x"}, BAD, B),
    ("endpoint-create-unknown-network", "POST", "/v1/endpoints", {"network": "nope", "name": "x"}, MISSING, N),
    ("endpoint-create-name-taken", "POST", "/v1/endpoints", {"network": "front", "name": "web"}, TAKEN, C),
    ("endpoint-create-bad-name", "POST", "/v1/endpoints", {"network": "front", "name": "-x"}, BAD, B),
    ("endpoint-create-ip-taken", "POST", "/v1/endpoints", {"network": "front", "name": "x", "ipv4": WEB_IP}, TAKEN, C),
    ("endpoint-get-unknown", "GET", "/v1/endpoints/nope", None, MISSING, N),
    ("endpoint-delete-unknown", "DELETE", "/v1/endpoints/nope", None, MISSING, N),
    ("endpoint-delete-joined", "DELETE", "/v1/endpoints/web?network=front", None, TAKEN, C),
    ("endpoint-delete-force-bad", "DELETE", "/v1/endpoints/web?network=front&force=yes", None, BAD, B),
    ("endpoint-delete-unknown-query", "DELETE", "/v1/endpoints/web?network=front&cascade=1", None, BAD, B),
    # --- sandboxes --------------------------------------------------------------------------
    ("sandbox-id-taken", "POST", "/v1/sandboxes", {"id": "sb-one"}, TAKEN, C),
    ("sandbox-id-int", "POST", "/v1/sandboxes", {"id": 5}, BAD, B),
    ("sandbox-id-empty", "POST", "/v1/sandboxes", {"id": ""}, BAD, B),
    ("sandbox-id-slash", "POST", "/v1/sandboxes", {"id": "a/b"}, BAD, B),
    ("sandbox-id-traversal", "POST", "/v1/sandboxes", {"id": "../../etc"}, BAD, B),
    ("sandbox-id-dot", "POST", "/v1/sandboxes", {"id": "."}, BAD, B),
    ("sandbox-id-newline", "POST", "/v1/sandboxes", {"id": "a\nb"}, BAD, B),
    ("sandbox-id-nul", "POST", "/v1/sandboxes", {"id": "a\x00b"}, BAD, B),
    ("sandbox-id-huge", "POST", "/v1/sandboxes", {"id": "a" * 5000}, BAD, B),
    ("sandbox-id-129", "POST", "/v1/sandboxes", {"id": "a" * 129}, BAD, B),
    ("sandbox-id-leading-dot", "POST", "/v1/sandboxes", {"id": ".hidden"}, BAD, B),
    ("sandbox-netns-other-sandbox", "POST", "/v1/sandboxes", {"netns": "@SB1NS@"}, TAKEN, C),
    ("sandbox-hostname-bad", "POST", "/v1/sandboxes", {"hostname": "a b"}, BAD, B),
    ("sandbox-hostname-long", "POST", "/v1/sandboxes", {"hostname": "h" * 300}, BAD, B),
    ("sandbox-netns-missing", "POST", "/v1/sandboxes", {"netns": "/var/run/netns/lnt-does-not-exist"}, BAD, B),
    ("sandbox-netns-relative", "POST", "/v1/sandboxes", {"netns": "netns/x"}, BAD, B),
    ("sandbox-netns-dir", "POST", "/v1/sandboxes", {"netns": "/tmp"}, BAD, B),
    ("sandbox-netns-devnull", "POST", "/v1/sandboxes", {"netns": "/dev/null"}, BAD, B),
    ("sandbox-netns-mnt", "POST", "/v1/sandboxes", {"netns": "/proc/self/ns/mnt"}, BAD, B),
    ("sandbox-netns-file", "POST", "/v1/sandboxes", {"netns": "@FILE@"}, BAD, B),
    ("sandbox-netns-host", "POST", "/v1/sandboxes", {"netns": "@HOSTNS@"}, BAD, B),
    ("sandbox-netns-nul", "POST", "/v1/sandboxes", {"netns": "/var/run/netns/a\x00b"}, BAD, B),
    ("sandbox-unknown-field", "POST", "/v1/sandboxes", {"id": "x", "pid": 1}, BAD, B),
    ("sandbox-get-unknown", "GET", "/v1/sandboxes/nope", None, MISSING, N),
    ("sandbox-delete-unknown", "DELETE", "/v1/sandboxes/nope", None, MISSING, N),
    ("join-no-endpoint", "POST", "/v1/sandboxes/sb-two/join", {}, BAD, B),
    ("join-unknown-endpoint", "POST", "/v1/sandboxes/sb-two/join", {"endpoint": "nope"}, MISSING, N),
    ("join-unknown-sandbox", "POST", "/v1/sandboxes/nope/join", {"endpoint": "web"}, MISSING, N),
    ("join-joined-endpoint", "POST", "/v1/sandboxes/sb-two/join", {"endpoint": "@WEB@"}, TAKEN, C),
    ("leave-not-joined", "POST", "/v1/sandboxes/sb-two/leave", {"endpoint": "@WEB@"}, None, None),
    ("leave-unknown-endpoint", "POST", "/v1/sandboxes/sb-one/leave", {"endpoint": "nope"}, MISSING, N),
    # --- HTTP itself ------------------------------------------------------------------------
    ("content-type-text", "POST", "/v1/networks", (b'{"name": "-x"}', {"Content-Type": "text/plain"}), BAD, B),
    ("content-encoding-gzip", "POST", "/v1/networks", (b"\x1f\x8b garbage", {"Content-Encoding": "gzip"}), BAD, None),
]

# requests sent together, each refused; (case id, method, path, body, status)
CONCURRENT: list[tuple[str, str, str, Any, int]] = [
    ("same-name-x16", "POST", "/v1/networks", {"name": "front"}, TAKEN),
    ("taken-port-x16", "POST", "/v1/networks/front/connect", _ports(_pm(host_port=PUBLISHED)), TAKEN),
    ("overlap-x16", "POST", "/v1/networks", _net(ipv4_subnet="198.51.100.64/26"), TAKEN),
    ("taken-ip-x16", "POST", "/v1/networks/front/connect", _connect(ipv4=WEB_IP), TAKEN),
    ("delete-in-use-x16", "DELETE", "/v1/networks/front", None, TAKEN),
]


# --- the snapshot ---------------------------------------------------------------------------


def _run(ns: str, *argv: str) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30)
    # bridge timers count down on their own: not state
    # ip's own name lookup of peer namespaces races with other tests' namespaces coming and going
    text = "".join(ln for ln in (r.stdout + r.stderr).splitlines(True) if not ln.startswith("Error: Peer netns"))
    return _TIMERS.sub("", f"rc={r.returncode}\n{text}")


_TIMERS = re.compile(r" \w+_timer +[0-9.]+")


def _store(path: str) -> list[tuple]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute("SELECT key, value, revision, expires FROM kv ORDER BY key").fetchall()
    finally:
        db.close()


def _files(root: str) -> list[tuple[str, str]]:
    out = []
    for base, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(base, name)
            rel = os.path.relpath(path, root)
            if rel == "agent.log" or rel.startswith("store.db") or not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                out.append((rel, hashlib.sha256(f.read()).hexdigest()))
    return sorted(out)


def snapshot(bed: Testbed, agent: AgentProcess) -> dict[str, Any]:
    """Everything a refused request must leave alone."""
    names = sorted(
        n.split()[0]
        for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()
        if n.startswith(bed.prefix)
    )
    kernel = {}
    for ns in names:
        if ns == bed.switch:
            continue
        kernel[ns] = [
            _run(ns, "ip", "-d", "link", "show"),
            _run(ns, "ip", "addr", "show"),
            _run(ns, "ip", "-4", "route", "show", "table", "all"),
            _run(ns, "ip", "-6", "route", "show", "table", "all"),
            _run(ns, "nft", "list", "ruleset"),
        ]
    return {
        "namespaces": names,
        "kernel": kernel,
        "store": _store(os.path.join(agent.dir, "store.db")),
        "files": _files(agent.dir),
    }


def settled(bed: Testbed, agent: AgentProcess, timeout: float = 30) -> dict[str, Any]:
    """A snapshot once the kernel has settled (IPv6 DAD, link-local routes of new
    bridges come seconds later): unchanged over 3 s."""
    deadline = time.monotonic() + timeout
    last, since = snapshot(bed, agent), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < 3:
        time.sleep(0.5)
        now = snapshot(bed, agent)
        if _diff(last, now):
            last, since = now, time.monotonic()
    return last


def _diff(before: dict, after: dict) -> str:
    lines = []
    if before["namespaces"] != after["namespaces"]:
        lines.append(f"namespaces {before['namespaces']} -> {after['namespaces']}")
    for ns, outs in after["kernel"].items():
        for i, out in enumerate(outs):
            old = before["kernel"].get(ns, [""] * 5)[i]
            if out != old:
                delta = difflib.unified_diff(old.splitlines(), out.splitlines(), lineterm="", n=0)
                lines.append(f"{ns} #{i}: " + "\n".join(list(delta)[2:12]))
    if before["store"] != after["store"]:
        b, a = set(before["store"]), set(after["store"])
        lines.append(f"store: changed keys {sorted({row[0] for row in b ^ a})[:8]}")
    if before["files"] != after["files"]:
        lines.append(f"files {sorted(set(before['files']) ^ set(after['files']))}")
    return "\n".join(lines)


# --- the test -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    with Testbed(1) as bed:
        host = bed.hosts[0]
        agent = AgentProcess(bed, host, state_dir=str(tmp / "agent")).start()
        listener = bed.spawn(
            host.ns,
            [
                sys.executable,
                "-c",
                f"import socket,time; s=socket.socket(); s.bind(('0.0.0.0', {LISTENED})); s.listen(); time.sleep(600)",
            ],
        )
        try:
            assert agent.cli("network", "create", "front", "--subnet", FRONT4, "--subnet6", FRONT6).returncode == 0
            r = agent.cli("network", "create", "solo", "--subnet", "198.51.100.224/28", "--no-ipv6")
            assert r.returncode == 0, r.stderr
            assert (
                agent.cli("network", "create", "intra", "--subnet", INTRA4, "--no-ipv6", "--internal").returncode == 0
            )
            one = agent.cli("sandbox", "create", "--id", "sb-one")
            two = agent.cli("sandbox", "create", "--id", "sb-two")
            assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
            r = agent.cli("connect", "front", "sb-one", "--name", "web", "--ip", WEB_IP, "-p", f"{PUBLISHED}:80")
            assert r.returncode == 0, r.stderr
            [web] = agent.cli_json("endpoint", "ls")
            plain = tmp / "not-a-namespace"
            plain.write_text("hello\n")
            subst = {"@FILE@": str(plain), "@HOSTNS@": f"/var/run/netns/{host.ns}", "@WEB@": web["id"]}
            subst["@SB1NS@"] = _request(agent.socket, "GET", "/v1/sandboxes/sb-one")[1]["netns"]
            yield bed, agent, subst
        finally:
            listener.kill()
            listener.wait(10)
            agent.stop()


def _substitute(body: Any, subst: dict[str, str]) -> Any:
    if isinstance(body, str):
        return subst.get(body, body)
    if isinstance(body, dict):
        return {k: _substitute(v, subst) for k, v in body.items()}
    if isinstance(body, list):
        return [_substitute(v, subst) for v in body]
    return body


def _undo(sock: str, method: str, path: str, body: Any, doc: Any) -> None:
    """Remove what a wrongly accepted request made, so the next cases meet the same world."""
    if method != "POST" or not isinstance(doc, dict) or "id" not in doc:
        return
    if path == "/v1/networks":
        _request(sock, "DELETE", f"/v1/networks/{doc['id']}")
    elif path == "/v1/sandboxes":
        _request(sock, "DELETE", f"/v1/sandboxes/{doc['id']}")
    elif path.endswith("/connect") and isinstance(body, dict):
        _request(sock, "POST", path.replace("/connect", "/disconnect"), {"sandbox": body["sandbox"]})
    elif path == "/v1/endpoints":
        _request(sock, "DELETE", f"/v1/endpoints/{doc['id']}?force=1")


def test_case_table_is_large_and_unique() -> None:
    ids = [c[0] for c in CASES] + [c[0] for c in CONCURRENT]
    assert len(ids) == len(set(ids))
    assert len(CASES) + 16 * len(CONCURRENT) >= 150


def test_hostile_requests_are_refused_and_change_nothing(world) -> None:
    bed, agent, subst = world
    before = settled(bed, agent)
    failures = []
    for case, method, path, body, status, kind in CASES:
        headers = None
        if isinstance(body, tuple):
            body, headers = body
        body = _substitute(body, subst)
        st, doc = _request(agent.socket, method, path, body, headers)
        if st < 300:
            _undo(agent.socket, method, path, body, doc)
        err = doc.get("error", {}) if isinstance(doc, dict) else {}
        if st >= 500 or (status is not None and st != status) or (status is None and st not in (400, 404, 409)):
            failures.append(f"{case}: status {st} (want {status or '4xx'}): {err.get('message') or str(doc)[:200]}")
            before = settled(bed, agent)  # what it did is reported; judge the next case on its own
        elif kind is not None and err.get("kind") != kind:
            failures.append(f"{case}: kind {err.get('kind')!r} (want {kind!r}): {err.get('message')}")
        elif not err.get("message"):
            failures.append(f"{case}: no error message: {doc}")
        else:
            diff = _diff(before, snapshot(bed, agent))
            if diff:
                failures.append(f"{case}: state changed:\n{diff}")
                before = settled(bed, agent)  # report each change once
    assert not failures, f"{len(failures)} of {len(CASES)} cases:\n" + "\n".join(failures)
    assert "internal error" not in agent.log_tail()


def test_concurrent_hostile_requests(world) -> None:
    bed, agent, subst = world
    before = settled(bed, agent)
    failures = []
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for case, method, path, body, status in CONCURRENT:
            futures = [pool.submit(_request, agent.socket, method, path, _substitute(body, subst)) for _ in range(16)]
            got = sorted(f.result(timeout=120)[0] for f in futures)
            if set(got) != {status}:
                failures.append(f"{case}: statuses {got} (want all {status})")
    after = snapshot(bed, agent)
    assert not failures, "\n".join(failures)
    assert not _diff(before, after), _diff(before, after)
