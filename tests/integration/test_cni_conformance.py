"""Conformance of the libnet CNI plugins, driven exactly as a runtime drives them:
the binaries exec'd inside a test host with the CNI_* environment and the
config on stdin, the agent in the same host (issue 19)."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from agent.cni_api import CREATED_ELSEWHERE_WAIT
from libnet.kernel import netns
from libnet.testing.agents import AgentProcess
from libnet.testing.cni import CniRuntime, reference_missing
from libnet.testing.hosts import Testbed, wait_until

pytestmark = pytest.mark.root

SUBNET, SUBNET6 = "198.51.100.0/24", "2001:db8:19::/64"


@pytest.fixture
def env():
    with Testbed(2) as bed:
        host = bed.hosts[0]
        agent = AgentProcess(bed, host).start()
        rt = CniRuntime.for_host(bed, host)
        try:
            yield bed, agent, rt
        finally:
            agent.stop()


def conf(agent: AgentProcess, version: str = "1.0.0", **extra) -> dict:
    return {
        "cniVersion": version,
        "name": "cninet",
        "type": "libnet",
        "socket": agent.socket,
        "subnet": SUBNET,
        "subnet6": SUBNET6,
        **extra,
    }


def container(bed: Testbed, name: str) -> str:
    return netns.path_of(bed.namespace(name))


def addrs(bed: Testbed, ns_path: str, ifname: str = "eth0") -> set[str]:
    r = subprocess.run(
        ["nsenter", f"--net={ns_path}", "ip", "-j", "addr", "show", "dev", ifname],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if r.returncode:
        return set()
    return {f"{a['local']}/{a['prefixlen']}" for a in json.loads(r.stdout)[0]["addr_info"] if a["scope"] == "global"}


def in_ns(ns_path: str, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net={ns_path}", *argv], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("plugin", ["libnet", "libnet-ipam"])
@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_version(env, plugin, version):
    _, _, rt = env
    o = rt.exec(plugin, "VERSION", {"cniVersion": version}, netns_path="dummy")
    assert o.ok, o
    assert o.out["cniVersion"] == version and {"0.4.0", "1.0.0"} <= set(o.out["supportedVersions"])


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_add_check_del(env, version):
    bed, agent, rt = env
    c1 = container(bed, "c1")
    cfg = conf(agent, version)
    add = rt.exec("libnet", "ADD", cfg, container_id="ctr1", netns_path=c1, args="IgnoreUnknown=1;K8S_POD_NAME=web1")
    assert add.ok, add
    res = add.out
    assert res["cniVersion"] == version
    ctr = [i for i in res["interfaces"] if i.get("sandbox") == c1]
    assert [i["name"] for i in ctr] == ["eth0"]
    index = res["interfaces"].index(ctr[0])
    v4 = [ip for ip in res["ips"] if "." in ip["address"]]
    v6 = [ip for ip in res["ips"] if ":" in ip["address"]]
    assert len(v4) == 1 and len(v6) == 1 and all(ip["interface"] == index for ip in res["ips"])
    assert v4[0]["gateway"] == "198.51.100.1" and v6[0]["gateway"].startswith("2001:db8:19::")
    if version == "0.4.0":
        assert {ip["version"] for ip in res["ips"]} == {"4", "6"}
    else:
        assert all("version" not in ip for ip in res["ips"])
    assert {r["dst"] for r in res["routes"]} == {"0.0.0.0/0", "::/0"}
    assert res["dns"]["nameservers"] == ["127.0.0.11"]
    assert {v4[0]["address"], v6[0]["address"]} <= addrs(bed, c1)
    # the endpoint carries the pod name (its DNS name)
    assert [e["name"] for e in agent.cli_json("endpoint", "ls")] == ["web1"]

    again = rt.exec("libnet", "ADD", cfg, container_id="ctr1", netns_path=c1, args="IgnoreUnknown=1;K8S_POD_NAME=web1")
    assert again.ok and again.out == res  # ADD twice: a replay, the same answer

    chk = rt.exec("libnet", "CHECK", {**cfg, "prevResult": res}, container_id="ctr1", netns_path=c1)
    assert chk.ok and chk.out is None, chk
    bad = json.loads(json.dumps(res))
    for ip in bad["ips"]:
        if "." in ip["address"]:
            ip["address"] = "198.51.100.200/24"
    chk = rt.exec("libnet", "CHECK", {**cfg, "prevResult": bad}, container_id="ctr1", netns_path=c1)
    assert chk.rc != 0 and chk.out["code"] == 103, chk
    # drift in the kernel is found too
    in_ns(c1, "ip", "addr", "del", v4[0]["address"], "dev", "eth0")
    chk = rt.exec("libnet", "CHECK", {**cfg, "prevResult": res}, container_id="ctr1", netns_path=c1)
    assert chk.out and chk.out["code"] == 103 and "lacks" in chk.out["msg"], chk

    for _ in range(2):  # DEL is idempotent
        d = rt.exec("libnet", "DEL", {**cfg, "prevResult": res}, container_id="ctr1", netns_path=c1)
        assert d.ok and d.out is None, d
    assert addrs(bed, c1) == set()
    assert agent.cli_json("sandbox", "ls") == []
    chk = rt.exec("libnet", "CHECK", {**cfg, "prevResult": res}, container_id="ctr1", netns_path=c1)
    assert chk.out["code"] == 3


def test_two_containers_ping_and_resolve(env):
    bed, agent, rt = env
    paths = {}
    results = {}
    for name in ("alpha", "beta"):
        paths[name] = container(bed, name)
        o = rt.exec(
            "libnet",
            "ADD",
            conf(agent),
            container_id=f"id-{name}",
            netns_path=paths[name],
            args=f"IgnoreUnknown=1;K8S_POD_NAME={name};K8S_POD_NAMESPACE=default",
        )
        assert o.ok, o
        results[name] = {ip["address"].split("/")[0] for ip in o.out["ips"]}
    for addr in results["beta"]:
        assert in_ns(paths["alpha"], "ping", "-c1", "-W2", addr).returncode == 0, addr
    ans = in_ns(paths["alpha"], "dig", "+short", "+time=2", "+tries=2", "@127.0.0.11", "beta")
    assert ans.stdout.split() == sorted(a for a in results["beta"] if "." in a), ans
    ans6 = in_ns(paths["alpha"], "dig", "+short", "+time=2", "+tries=2", "@127.0.0.11", "beta", "AAAA")
    assert ans6.stdout.split() == [a for a in results["beta"] if ":" in a], ans6
    for name in ("alpha", "beta"):
        assert rt.exec("libnet", "DEL", conf(agent), container_id=f"id-{name}", netns_path=paths[name]).ok


def test_del_idempotent_whatever_is_missing(env):
    bed, agent, rt = env
    cfg = conf(agent)
    # never added, unknown network, no netns at all
    assert rt.exec("libnet", "DEL", cfg, container_id="nobody", netns_path="").ok
    assert rt.exec("libnet", "DEL", {**cfg, "network": "nosuch"}, container_id="nobody").ok
    # the namespace is gone before DEL (a runtime that lost the container)
    name = bed.namespace("gone")
    assert rt.exec("libnet", "ADD", cfg, container_id="ctr-gone", netns_path=netns.path_of(name)).ok
    netns.delete(name)
    d = rt.exec("libnet", "DEL", cfg, container_id="ctr-gone", netns_path=netns.path_of(name))
    assert d.ok, d
    assert rt.exec("libnet", "DEL", cfg, container_id="ctr-gone", netns_path=netns.path_of(name)).ok
    assert agent.cli_json("sandbox", "ls") == []
    # the agent's state removed behind the plugin's back
    c = container(bed, "c2")
    assert rt.exec("libnet", "ADD", cfg, container_id="ctr2", netns_path=c).ok
    assert agent.cli("sandbox", "rm", "ctr2").returncode == 0
    assert rt.exec("libnet", "DEL", cfg, container_id="ctr2", netns_path=c).ok


def _uplink(ns_path: str, metric: int | None = None) -> None:
    """A default route of the runtime's own in the container's namespace (a veth
    pair inside it, both ends up), v4 and v6, at ``metric`` (None: the kernel's)."""
    extra = [] if metric is None else ["metric", str(metric)]
    _uplink_link(ns_path)
    for argv in (
        ["ip", "route", "add", "default", "via", "203.0.113.202", "dev", "up0", *extra],
        ["ip", "-6", "route", "add", "default", "via", "2001:db8:ff::2", "dev", "up0", *extra],
    ):
        r = in_ns(ns_path, *argv)
        assert r.returncode == 0, (argv, r.stderr)


def _uplink_link(ns_path: str) -> None:
    """The runtime's own link in the container's namespace (a veth pair, both ends up, addressed)."""
    for argv in (
        ["ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1"],
        ["ip", "link", "set", "up1", "up"],
        ["ip", "link", "set", "up0", "up"],
        ["ip", "addr", "add", "203.0.113.201/30", "dev", "up0"],
        ["ip", "addr", "add", "2001:db8:ff::1/64", "dev", "up0", "nodad"],
    ):
        r = in_ns(ns_path, *argv)
        assert r.returncode == 0, (argv, r.stderr)


def _defaults(ns_path: str) -> set[tuple[str, str]]:
    out = set()
    for fam in ("-4", "-6"):
        r = in_ns(ns_path, "ip", "-j", fam, "route", "show", "default")
        out |= {(x.get("gateway", ""), x.get("dev", "")) for x in json.loads(r.stdout or "[]")}
    return out


def test_add_never_replaces_a_default_route_it_did_not_make(env):
    """A runtime-made namespace with a default route of its own (same metric): ADD is
    refused with a clear error and leaves the namespace as it was (CNI's bridge plugin
    refuses too); libnet replaced the route before, and after DEL there was none."""
    bed, agent, rt = env
    cfg = conf(agent)
    c = container(bed, "own-route")
    _uplink(c)
    theirs = {("203.0.113.202", "up0"), ("2001:db8:ff::2", "up0")}
    assert _defaults(c) == theirs
    add = rt.exec("libnet", "ADD", cfg, container_id="ctr-own", netns_path=c)
    assert not add.ok, add
    assert "default route" in add.out["msg"] + add.out.get("details", ""), add.out
    assert _defaults(c) == theirs
    assert in_ns(c, "ip", "link", "show", "eth0").returncode != 0  # rolled back
    assert agent.cli_json("endpoint", "ls") == []
    assert rt.exec("libnet", "DEL", cfg, container_id="ctr-own", netns_path=c).ok
    assert _defaults(c) == theirs


def test_a_blackhole_default_route_is_named_in_the_refusal(env):
    bed, agent, rt = env
    c = container(bed, "blackhole-route")
    assert in_ns(c, "ip", "route", "add", "blackhole", "default").returncode == 0
    add = rt.exec("libnet", "ADD", conf(agent), container_id="ctr-bh", netns_path=c)
    assert not add.ok, add
    assert "blackhole default" in add.out["msg"] + add.out.get("details", ""), add.out
    r = in_ns(c, "ip", "-j", "route", "show", "default")
    assert [x.get("type") for x in json.loads(r.stdout)] == ["blackhole"], r.stdout


def test_add_beside_a_default_route_of_another_metric_keeps_it(env):
    bed, agent, rt = env
    cfg = conf(agent)
    c = container(bed, "metric-route")
    _uplink(c, metric=3000)
    add = rt.exec("libnet", "ADD", cfg, container_id="ctr-metric", netns_path=c)
    assert add.ok, add
    assert {("198.51.100.1", "eth0"), ("203.0.113.202", "up0")} <= _defaults(c)
    again = rt.exec("libnet", "ADD", cfg, container_id="ctr-metric", netns_path=c)
    assert again.ok, again
    assert rt.exec("libnet", "DEL", cfg, container_id="ctr-metric", netns_path=c).ok
    assert _defaults(c) == {("203.0.113.202", "up0"), ("2001:db8:ff::2", "up0")}


def test_del_of_the_gateway_network_beside_a_foreign_default_route(env):
    """A container on two networks whose runtime appended a default route of its own
    (same metric) beside libnet's: DEL of the network carrying the default routes
    succeeds (the hand-over to the other network is skipped, not forced: before, DEL
    failed with the refusal and left the endpoint and half of the routes behind, and
    ADD again failed with NameInUse), the runtime's route stays, none of libnet's."""
    bed, agent, rt = env
    first = conf(agent, subnet="198.51.100.0/25")
    second = conf(agent, name="cninet2", subnet="198.51.100.128/25", subnet6="2001:db8:29::/64")
    c = container(bed, "two-nets")
    assert rt.exec("libnet", "ADD", first, container_id="ctr-two", netns_path=c).ok
    assert rt.exec("libnet", "ADD", second, container_id="ctr-two", netns_path=c, ifname="eth1").ok
    assert _defaults(c) == {("198.51.100.1", "eth0"), ("2001:db8:19::1", "eth0")}
    _uplink_link(c)
    r = in_ns(c, "ip", "route", "append", "default", "via", "203.0.113.202", "dev", "up0")
    assert r.returncode == 0, r.stderr
    d = rt.exec("libnet", "DEL", first, container_id="ctr-two", netns_path=c)
    assert d.ok, d
    assert _defaults(c) == {("203.0.113.202", "up0")}  # theirs, and none of libnet's via eth1
    assert len(agent.cli_json("endpoint", "ls")) == 1  # the first network's endpoint went
    # ADD again would carry the default routes (none of libnet's is left): refused, as for any
    # namespace with a default route of its own, and rolled back
    again = rt.exec("libnet", "ADD", first, container_id="ctr-two", netns_path=c)
    assert not again.ok and "default route" in again.out["msg"], again
    assert len(agent.cli_json("endpoint", "ls")) == 1
    assert rt.exec("libnet", "DEL", first, container_id="ctr-two", netns_path=c).ok
    assert rt.exec("libnet", "DEL", second, container_id="ctr-two", netns_path=c, ifname="eth1").ok
    assert _defaults(c) == {("203.0.113.202", "up0")}
    assert agent.cli_json("endpoint", "ls") == []


def test_add_on_a_new_namespace_replaces_the_missed_one(env):
    """A container restarted without its DEL (the runtime lost it): ADD with the same container id
    and another namespace moves the container there; the old namespace's interface goes."""
    bed, agent, rt = env
    cfg = conf(agent)
    old, new = container(bed, "old"), container(bed, "new")
    first = rt.exec("libnet", "ADD", cfg, container_id="ctr-re", netns_path=old)
    assert first.ok, first
    again = rt.exec("libnet", "ADD", cfg, container_id="ctr-re", netns_path=new)
    assert again.ok, again
    assert addrs(bed, old) == set() and len(addrs(bed, new)) == 2
    assert [s["netns"] for s in agent.cli_json("sandbox", "ls")] == [new]
    assert len(agent.cli_json("endpoint", "ls")) == 1
    assert rt.exec("libnet", "DEL", cfg, container_id="ctr-re", netns_path=new).ok
    assert agent.cli_json("sandbox", "ls") == [] and agent.cli_json("endpoint", "ls") == []


def test_parallel_adds_and_dels_on_a_network_made_by_the_first(env):
    """Runtimes call plugins in parallel: ADDs racing to create the network all succeed on one
    network with distinct addresses; parallel DELs leave nothing."""
    from concurrent.futures import ThreadPoolExecutor

    bed, agent, rt = env
    cfg = conf(agent, network="racy")
    paths = [container(bed, f"p{i}") for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        adds = list(
            pool.map(lambda i: rt.exec("libnet", "ADD", cfg, container_id=f"par{i}", netns_path=paths[i]), range(6))
        )
    assert all(o.ok for o in adds), [o.out for o in adds if not o.ok]
    got = [ip["address"] for o in adds for ip in o.out["ips"]]
    assert len(set(got)) == 12
    assert [n["name"] for n in agent.cli_json("network", "ls")].count("racy") == 1
    with ThreadPoolExecutor(6) as pool:
        dels = list(
            pool.map(lambda i: rt.exec("libnet", "DEL", cfg, container_id=f"par{i}", netns_path=paths[i]), range(6))
        )
    assert all(o.ok for o in dels), [o.out for o in dels if not o.ok]
    assert agent.cli_json("sandbox", "ls") == [] and agent.cli_json("endpoint", "ls") == []


@pytest.mark.parametrize("plugin", ["libnet", "libnet-ipam"])
def test_parallel_calls_for_one_container_are_one_at_a_time(env, plugin):
    """A runtime retrying (or two callers) may run ADDs and DELs of one container at once: each
    ADD answers the one attachment (the same addresses), none fails on a half-made one, and a final
    DEL leaves nothing (breaker, issue 19: a racing ADD failed with code 100, name in use)."""
    from concurrent.futures import ThreadPoolExecutor

    bed, agent, rt = env
    cfg = conf(agent, network="one")
    if plugin == "libnet-ipam":  # exec'd as a main plugin (the reference bridge) execs it
        ipam = {"type": "libnet-ipam", "socket": agent.socket, "subnet": SUBNET, "subnet6": SUBNET6}
        cfg = {"cniVersion": "1.0.0", "name": "one", "type": "bridge", "bridge": "cnione0", "ipam": ipam}
    path = container(bed, "c1")
    for round_ in range(2):
        with ThreadPoolExecutor(6) as pool:
            adds = list(pool.map(lambda i: rt.exec(plugin, "ADD", cfg, container_id="ctr", netns_path=path), range(6)))
        assert all(o.ok for o in adds), [o.out for o in adds if not o.ok]
        assert len({json.dumps(sorted(ip["address"] for ip in o.out["ips"])) for o in adds}) == 1
        assert len(agent.cli_json("endpoint", "ls")) == 1
        with ThreadPoolExecutor(6) as pool:  # ADDs and DELs mixed: each succeeds
            mixed = list(
                pool.map(
                    lambda i: rt.exec(plugin, "DEL" if i % 2 else "ADD", cfg, container_id="ctr", netns_path=path),
                    range(6),
                )
            )
        assert all(o.ok for o in mixed), [o.out for o in mixed if not o.ok]
        assert rt.exec(plugin, "DEL", cfg, container_id="ctr", netns_path=path).ok, round_
        assert agent.cli_json("sandbox", "ls") == [] and agent.cli_json("endpoint", "ls") == []


def test_a_pool_another_network_holds_is_refused_at_once(env):
    bed, agent, rt = env
    assert agent.cli("network", "create", "holder", "--subnet", SUBNET).returncode == 0
    c = container(bed, "c1")
    o = rt.exec("libnet", "ADD", conf(agent, network="clash"), container_id="ctr", netns_path=c)
    assert o.rc != 0 and o.out["code"] == 100 and "overlaps" in o.out["msg"], o
    assert o.seconds < CREATED_ELSEWHERE_WAIT / 2  # no wait for a network being created elsewhere
    assert agent.cli_json("sandbox", "ls") == []


def test_existing_network_and_no_creation_fields(env):
    bed, agent, rt = env
    assert (
        agent.cli(
            "network", "create", "made", "--subnet", "198.51.100.0/25", "--subnet6", "2001:db8:20::/64"
        ).returncode
        == 0
    )
    c = container(bed, "c1")
    cfg = {"cniVersion": "1.0.0", "name": "made", "type": "libnet", "socket": agent.socket}
    o = rt.exec("libnet", "ADD", cfg, container_id="ctr", netns_path=c)
    assert o.ok, o
    assert any(ip["address"].startswith("198.51.100.") for ip in o.out["ips"])
    assert rt.exec("libnet", "DEL", cfg, container_id="ctr", netns_path=c).ok
    o = rt.exec("libnet", "ADD", {**cfg, "name": "absent"}, container_id="ctr", netns_path=c)
    assert o.out["code"] == 101


BAD_INPUTS = {
    "not-json": (b"{not json", {}, 6),
    "not-an-object": (b"[1, 2]", {}, 6),
    "unsupported-version": ({"cniVersion": "9.9.9"}, {}, 1),
    "no-version": ({"cniVersion": None}, {}, 1),
    "bad-name": ({"name": "bad/name"}, {}, 7),
    "ipam-section": ({"ipam": {"type": "host-local"}}, {}, 2),
    "bad-subnet": ({"network": "fresh", "subnet": "198.51.100.0/33"}, {}, 7),
    "v6-subnet-as-v4": ({"network": "fresh", "subnet": "2001:db8:21::/64"}, {}, 7),
    "bad-dns": ({"dns": {"search": "x"}}, {}, 7),
    "prevresult-not-object": ({"prevResult": [1]}, {}, 7),
    "unknown-command": ({}, {"CNI_COMMAND": "EXPLODE"}, 4),
    "no-container-id": ({}, {"CNI_CONTAINERID": ""}, 4),
    "bad-container-id": ({}, {"CNI_CONTAINERID": "../etc"}, 4),
    "no-ifname": ({}, {"CNI_IFNAME": ""}, 4),
    "no-netns": ({}, {"CNI_NETNS": ""}, 4),
    "missing-netns": ({}, {"CNI_NETNS": "/run/netns/libnet-no-such-ns"}, 4),
    "bad-cni-args": ({}, {"CNI_ARGS": "novalue"}, 4),
    "unknown-cni-arg": ({}, {"CNI_ARGS": "FOO=bar"}, 2),
    "agent-unreachable": ({"socket": "/run/libnet-no-such-agent.sock"}, {}, 11),
    "relative-socket": ({"socket": "agent.sock"}, {}, 7),
    "unknown-network": ({"network": "absent", "subnet": None}, {}, 101),
    "bad-static-ip": ({"runtimeConfig": {"ips": ["300.1.1.1"]}}, {}, 7),
    "wrong-ifname": ({}, {"CNI_IFNAME": "net3"}, 102),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_error_codes(env, case):
    bed, agent, rt = env
    c = container(bed, "c1")
    patch, env_patch, code = BAD_INPUTS[case]
    if isinstance(patch, bytes):
        stdin = patch
    else:
        cfg = conf(agent)
        cfg.update(patch)
        cfg = {k: v for k, v in cfg.items() if v is not None}
        if case == "unknown-network":
            cfg = {k: v for k, v in cfg.items() if k not in ("subnet", "subnet6")}
        stdin = json.dumps(cfg).encode()
    environ = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "ctr-bad",
        "CNI_NETNS": c,
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "",
        "CNI_PATH": rt.cni_path,
        **env_patch,
    }
    o = rt.exec("libnet", "ADD", stdin, env=environ)
    assert o.rc != 0, o
    assert isinstance(o.out, dict) and o.out["code"] == code and o.out["msg"], o
    assert set(o.out) <= {"cniVersion", "code", "msg", "details"}
    # nothing left behind
    assert agent.cli_json("sandbox", "ls") == []


def test_portmap_chain_publishes_a_port(env):
    bed, agent, rt = env
    why = reference_missing("portmap")
    if why:
        pytest.skip(why)
    h1, h2 = bed.hosts
    c = container(bed, "web")
    conflist = {
        "cniVersion": "1.0.0",
        "name": "cninet",
        "plugins": [
            {"type": "libnet", "socket": agent.socket, "subnet": SUBNET, "subnet6": SUBNET6},
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        ],
    }
    rc = {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}
    add = rt.add_list(conflist, "ctr-web", c, runtime_config=rc)
    assert add.ok, add
    server = bed.spawn(
        os.path.basename(c),
        [
            "python3",
            "-c",
            (
                "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                "s.bind(('0.0.0.0', 80)); s.listen(5)\n"
                "while True:\n c,_=s.accept(); c.sendall(b'hello from libnet\\n'); c.close()\n"
            ),
        ],
    )
    try:

        def answers() -> bool:
            r = bed.run(
                h2.ns,
                [
                    "python3",
                    "-c",
                    (f"import socket; s=socket.create_connection(('{h1.ipv4}', 18080), timeout=2); print(s.recv(100))"),
                ],
                timeout=10,
            )
            return "hello from libnet" in r.stdout

        assert wait_until(answers, 15, 0.3)
        # libnet's CHECK in the chain (portmap 1.1.1's own CHECK looks for its IPv4 rule in the
        # IPv6 table on dual-stack results: a bug of that release, not exercised here)
        first = {"cniVersion": "1.0.0", "name": "cninet", **conflist["plugins"][0], "prevResult": add.out}
        chk = rt.exec("libnet", "CHECK", first, container_id="ctr-web", netns_path=c)
        assert chk.ok, chk
    finally:
        server.kill()
        server.wait(timeout=5)
    d = rt.del_list(conflist, "ctr-web", c, prev=add.out, runtime_config=rc)
    assert d.ok, d
    nat = bed.run(h1.ns, ["iptables", "-t", "nat", "-S"])
    assert "18080" not in nat.stdout


def chain(agent: AgentProcess, *after: dict) -> dict:
    """A conflist: ``libnet`` first, then ``after`` (reference plugins' entries)."""
    first = {"type": "libnet", "socket": agent.socket, "subnet": SUBNET, "subnet6": SUBNET6}
    return {"cniVersion": "1.0.0", "name": "cninet", "plugins": [first, *after]}


def test_bandwidth_chain_applies_a_rate_limit(env):
    bed, agent, rt = env
    why = reference_missing("bandwidth", "tuning")
    if why:
        pytest.skip(why)
    c = container(bed, "slow")
    conflist = chain(
        agent,
        {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.rp_filter": "2"}},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
    )
    rc = {
        "bandwidth": {
            "ingressRate": 8_000_000,
            "ingressBurst": 100_000,
            "egressRate": 8_000_000,
            "egressBurst": 100_000,
        }
    }
    add = rt.add_list(conflist, "ctr-slow", c, runtime_config=rc)
    assert add.ok, add
    host_veth = next(i["name"] for i in add.out["interfaces"] if not i.get("sandbox"))
    qd = bed.run(bed.hosts[0].ns, ["tc", "qdisc", "show", "dev", host_veth]).stdout
    assert "tbf" in qd and "rate 8Mbit" in qd, qd
    assert in_ns(c, "sysctl", "-n", "net.ipv4.conf.eth0.rp_filter").stdout.strip() == "2"
    d = rt.del_list(conflist, "ctr-slow", c, prev=add.out, runtime_config=rc)
    assert d.ok, d
    time.sleep(0.1)
    assert agent.cli_json("sandbox", "ls") == []


def test_check_after_tuning_changed_the_mac(env):
    """``tuning`` after ``libnet`` may set the container's MAC (and MTU): the runtime's CHECK of the
    chain gets the final result, and libnet's CHECK holds the interface to that result's MAC, as the
    reference plugins do -- a healthy container is not a difference (breaker, issue 19: code 103
    against the MAC libnet gave).  A MAC that is neither is still found."""
    bed, agent, rt = env
    why = reference_missing("tuning")
    if why:
        pytest.skip(why)
    c = container(bed, "tuned")
    conflist = chain(agent, {"type": "tuning", "mac": "02:00:5e:00:19:42", "mtu": 1400})
    add = rt.add_list(conflist, "ctr-tuned", c)
    assert add.ok, add
    assert json.loads(in_ns(c, "ip", "-j", "link", "show", "eth0").stdout)[0]["address"] == "02:00:5e:00:19:42"
    chk = rt.check_list(conflist, "ctr-tuned", c, add.out)
    assert chk.ok, chk
    in_ns(c, "ip", "link", "set", "eth0", "address", "02:00:5e:00:19:43")
    chk = rt.exec(
        "libnet",
        "CHECK",
        {**conflist["plugins"][0], "cniVersion": "1.0.0", "name": "cninet", "prevResult": add.out},
        container_id="ctr-tuned",
        netns_path=c,
    )
    assert chk.out and chk.out["code"] == 103 and "MAC" in chk.out["msg"], chk
    assert rt.del_list(conflist, "ctr-tuned", c, prev=add.out).ok
    assert agent.cli_json("sandbox", "ls") == []
