"""``GET /v1/topology`` and ``libnet topology`` (issue 22, item 6): the tree's
shape, peer states, and the tree / DOT / JSON renderings."""

from __future__ import annotations

import json
import shutil
import subprocess
import types

import pytest
from click.testing import CliRunner

from agent.cli import cli
from agent.cli_topology import dot
from agent.topology import build
from libnet.model import Endpoint, Network, Sandbox

OV = Network(id="a" * 64, name="ov", driver="overlay", scope="global", ipv4_subnet="198.51.100.0/24")
BR = Network(id="b" * 64, name="br", driver="bridge", scope="local", ipv4_subnet="198.51.101.0/24")
IDLE = Network(id="c" * 64, name="idle", driver="overlay", scope="global")


def _ep(eid: str, name: str, net: Network, node: str, sandbox: str | None, ip: str) -> Endpoint:
    return Endpoint(
        id=eid * 64,
        name=name,
        network_id=net.id,
        mac="02:42:00:00:00:01",
        ipv4=ip,
        sandbox_id=sandbox,
        node=node,
        ifname="eth0" if sandbox else None,
    )


class _Peer:
    def __init__(self, ep: Endpoint, vtep: str) -> None:
        self.endpoint_id, self.vtep = ep.id, vtep


def _ctl(programmed: dict[str, list[_Peer]], gone: set[str]):
    overlay = types.SimpleNamespace(remote_endpoints=lambda nid: programmed.get(nid, []), host_gone=lambda n: n in gone)
    drivers = types.SimpleNamespace(remote_peers=lambda: [overlay], cluster_aware=lambda: [overlay])
    return types.SimpleNamespace(drivers=drivers)


def test_tree_hosts_networks_sandboxes_and_peer_states() -> None:
    local = _ep("1", "web1", OV, "h1", "sb1", "198.51.100.2/24")
    remote = _ep("2", "web2", OV, "h2", "sb2", "198.51.100.3/24")
    waiting = _ep("3", "web3", OV, "h3", "sb3", "198.51.100.4/24")
    dead = _ep("4", "web4", OV, "h4", "sb4", "198.51.100.5/24")
    loose = _ep("5", "spare", BR, "h1", None, "198.51.101.2/24")
    members = [
        {"name": "h1", "address": "203.0.113.1", "status": "alive", "tags": {"vtep": "203.0.113.1"}},
        {"name": "h2", "address": "203.0.113.2", "status": "alive", "tags": {"vtep": "203.0.113.2"}},
        {"name": "h4", "address": "203.0.113.4", "status": "failed", "tags": {}},
        {"name": "h5", "address": "203.0.113.5", "status": "alive", "tags": {}},
    ]
    ctl = _ctl({OV.id: [_Peer(remote, "203.0.113.2")]}, {"h4"})
    sbs = [Sandbox(id="sb1", netns="/run/netns/x", owned=True, hostname="web-one")]
    topo = build(ctl, "h1", members, [OV, BR, IDLE], [local, remote, waiting, dead, loose], sbs)
    hosts = {h["name"]: h for h in topo["hosts"]}
    assert topo["hosts"][0]["name"] == "h1" and hosts["h1"]["self"]
    assert hosts["h3"]["status"] == "unknown", "holds endpoints, not a member"
    assert hosts["h5"]["networks"] == [], "a member without endpoints"
    h1 = {n["name"]: n for n in hosts["h1"]["networks"]}
    assert set(h1) == {"ov", "br", "idle"}, "an overlay without endpoints anywhere is under this host"
    [sb1] = h1["ov"]["sandboxes"]
    assert sb1["hostname"] == "web-one" and sb1["endpoints"][0]["peer"] == "local"
    assert [e["name"] for e in h1["br"]["endpoints"]] == ["spare"] and h1["br"]["sandboxes"] == []

    def peer(host: str) -> tuple[str, str | None]:
        [net] = hosts[host]["networks"]
        [sb] = net["sandboxes"]
        assert sb["hostname"] is None  # another host's sandbox: only its id is known
        return sb["endpoints"][0]["peer"], sb["endpoints"][0]["vtep"]

    assert peer("h2") == ("programmed", "203.0.113.2")
    assert peer("h3") == ("pending", None)
    assert peer("h4") == ("host gone", None)
    assert hosts["h2"]["vtep"] == "203.0.113.2" and hosts["h5"]["vtep"] == "203.0.113.5"


def test_idle_global_network_is_under_this_host_and_no_local_endpoint_means_not_needed() -> None:
    remote = _ep("2", "web2", OV, "h2", "sb2", "198.51.100.3/24")
    topo = build(_ctl({}, set()), "h1", [], [OV, IDLE], [remote], [])
    hosts = {h["name"]: h for h in topo["hosts"]}
    assert [n["name"] for n in hosts["h1"]["networks"]] == ["idle"]
    assert hosts["h2"]["networks"][0]["sandboxes"][0]["endpoints"][0]["peer"] == "not needed"


def test_dot_is_valid_graphviz() -> None:
    local = _ep("1", 'we"b1', OV, "h1", "sb1", "198.51.100.2/24")
    remote = _ep("2", "web2", OV, "h2", "sb2", "198.51.100.3/24")
    topo = build(_ctl({OV.id: [_Peer(remote, "203.0.113.2")]}, set()), "h1", [], [OV, BR], [local, remote], [])
    text = dot(topo)
    assert text.startswith("digraph libnet {") and text.rstrip().endswith("}")
    assert text.count(f'"net:{OV.id}" [shape=hexagon') == 1, "a global network is one node shared by the hosts"
    assert 'we\\"b1' in text and "VTEP 203.0.113.2" in text and "style=dashed" not in text
    if shutil.which("dot") is None:
        pytest.skip("graphviz (dot) not installed: the DOT text was checked, not rendered")
    r = subprocess.run(["dot", "-Tsvg"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "<svg" in r.stdout, r.stderr


def test_cli_topology_against_the_api(served) -> None:
    path, ctl, call = served
    call(ctl.create_network("web", ipv4_subnet="198.51.100.0/24", ipv6=False))
    call(ctl.create_network("ov", driver="overlay", ipv4_subnet="198.51.102.0/24", ipv6=False))
    sb = call(ctl.create_sandbox("s1", hostname="alpha"))
    call(ctl.connect("web", sb.id, name="alpha"))
    call(ctl.connect("ov", sb.id, name="alpha"))
    runner = CliRunner()
    r = runner.invoke(cli, ["--socket", path, "topology", "--json"])
    assert r.exit_code == 0, r.output
    topo = json.loads(r.output)
    [host] = topo["hosts"]
    assert host["name"] == "n" and host["self"] and [n["name"] for n in host["networks"]] == ["ov", "web"]
    assert {n["sandboxes"][0]["endpoints"][0]["ipv4"] for n in host["networks"]} == {
        "198.51.100.2/24",
        "198.51.102.2/24",
    }
    r = runner.invoke(cli, ["--socket", path, "topology"])
    assert r.exit_code == 0 and "host n" in r.output and "network web" in r.output and "198.51.102.2" in r.output
    assert "sandbox alpha" in r.output and "[local]" in r.output
    r = runner.invoke(cli, ["--socket", path, "topology", "--format", "dot"])
    assert r.exit_code == 0 and r.output.startswith("digraph libnet {")


def test_cli_topology_format_json_and_a_host_line_without_empty_fields(served) -> None:
    """``--format json`` is ``--json`` (as docker's ``--format json``); a host without an
    address (no cluster) is drawn without a double space."""
    path, ctl, call = served
    call(ctl.create_network("web", ipv4_subnet="198.51.100.0/24", ipv6=False))
    runner = CliRunner()
    as_json = runner.invoke(cli, ["--socket", path, "topology", "--json"])
    r = runner.invoke(cli, ["--socket", path, "topology", "--format", "json"])
    assert r.exit_code == 0 and json.loads(r.output) == json.loads(as_json.output)
    r = runner.invoke(cli, ["--socket", path, "topology"])
    [host] = [line for line in r.output.splitlines() if "host n" in line]
    assert "  " not in host.split("host n", 1)[1], host
