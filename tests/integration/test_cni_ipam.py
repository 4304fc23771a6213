"""``libnet-ipam`` under the reference ``bridge`` plugin, exec'd as a runtime does (issue 19)."""

from __future__ import annotations

import pytest

from libnet.kernel import netns
from libnet.testing.agents import AgentProcess
from libnet.testing.cni import CniRuntime, reference_missing
from libnet.testing.hosts import Testbed

pytestmark = pytest.mark.root


@pytest.fixture
def env():
    why = reference_missing("bridge")
    if why:
        pytest.skip(why)
    with Testbed(1) as bed:
        agent = AgentProcess(bed, bed.hosts[0]).start()
        try:
            yield bed, agent, CniRuntime.for_host(bed, bed.hosts[0])
        finally:
            agent.stop()


def bridge_conf(agent: AgentProcess, version: str = "1.0.0") -> dict:
    return {
        "cniVersion": version,
        "name": "ipamnet",
        "type": "bridge",
        "bridge": "cnibr19",
        "isGateway": True,
        "ipMasq": False,
        "capabilities": {"ips": True},
        "ipam": {
            "type": "libnet-ipam",
            "socket": agent.socket,
            "subnet": "198.51.100.0/24",
            "subnet6": "2001:db8:22::/64",
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
        },
    }


def held(agent: AgentProcess) -> list[dict]:
    return agent.cli_json("endpoint", "ls")


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_bridge_with_libnet_ipam_dual_stack(env, version):
    bed, agent, rt = env
    cfg = bridge_conf(agent, version)
    paths, addrs = {}, {}
    for name, extra in (("a", {}), ("b", {"runtimeConfig": {"ips": ["198.51.100.77/24", "2001:db8:22::77/64"]}})):
        paths[name] = netns.path_of(bed.namespace(name))
        o = rt.exec("bridge", "ADD", {**cfg, **extra}, container_id=f"ctr-{name}", netns_path=paths[name])
        assert o.ok, o
        addrs[name] = [ip["address"].split("/")[0] for ip in o.out["ips"]]
        assert len(addrs[name]) == 2 and any(":" in a for a in addrs[name])
    assert set(addrs["b"]) == {"198.51.100.77", "2001:db8:22::77"}
    for a in addrs["b"]:
        r = bed.run(paths["a"].rsplit("/", 1)[1], ["ping", "-c1", "-W3", a])
        assert r.returncode == 0, (a, r.stdout)
    # CNI_ARGS IP= as well
    paths["c"] = netns.path_of(bed.namespace("c"))
    o = rt.exec(
        "bridge", "ADD", cfg, container_id="ctr-c", netns_path=paths["c"], args="IgnoreUnknown=1;IP=198.51.100.88"
    )
    assert o.ok and any(ip["address"] == "198.51.100.88/24" for ip in o.out["ips"]), o
    assert len(held(agent)) == 3
    chk = rt.exec("bridge", "CHECK", {**cfg, "prevResult": o.out}, container_id="ctr-c", netns_path=paths["c"])
    assert chk.ok, chk
    for name in ("a", "b", "c"):
        for _ in range(2):  # idempotent
            d = rt.exec("bridge", "DEL", cfg, container_id=f"ctr-{name}", netns_path=paths[name])
            assert d.ok, d
    assert held(agent) == []  # every address released


def test_ipam_add_twice_replays_and_del_is_idempotent(env):
    """ADD again for the same interface replays; another interface of the container on the same pool
    is refused (one interface per pool); the host's own namespace is refused; DEL is idempotent."""
    bed, agent, rt = env
    cfg = bridge_conf(agent)
    path = netns.path_of(bed.namespace("x1"))
    first = rt.exec("libnet-ipam", "ADD", cfg, container_id="x1", netns_path=path)
    again = rt.exec("libnet-ipam", "ADD", cfg, container_id="x1", netns_path=path)
    assert first.ok and again.ok and first.out == again.out and "interfaces" not in first.out
    assert first.out["dns"] == {"nameservers": ["127.0.0.11"]}
    other = rt.exec("libnet-ipam", "ADD", cfg, container_id="x1", ifname="eth1", netns_path=path)
    assert other.out["code"] == 102 and "one interface per pool" in other.out["msg"], other
    chk = rt.exec("libnet-ipam", "CHECK", {**cfg, "prevResult": first.out}, container_id="x1", netns_path=path)
    assert chk.ok, chk
    chk = rt.exec(
        "libnet-ipam", "CHECK", {**cfg, "prevResult": first.out}, container_id="x1", ifname="eth1", netns_path=path
    )
    assert chk.out["code"] == 103, chk
    host = rt.exec("libnet-ipam", "ADD", cfg, container_id="x2", netns_path="/proc/self/ns/net")
    assert host.out["code"] == 7 and "host" in host.out["msg"], host
    for ifname in ("eth0", "eth1", "eth0"):
        assert rt.exec("libnet-ipam", "DEL", cfg, container_id="x1", ifname=ifname).ok
    assert held(agent) == [] and agent.cli_json("sandbox", "ls") == []
    assert netns.exists(path)  # the runtime's namespace: libnet never removes it
    assert rt.exec("libnet-ipam", "DEL", {**cfg, "ipam": {**cfg["ipam"], "network": "never"}}, container_id="x1").ok
    bad = rt.exec(
        "libnet-ipam",
        "ADD",
        {**cfg, "ipam": {"type": "libnet-ipam", "socket": agent.socket, "network": "never"}},
        container_id="x1",
        netns_path=path,
    )
    assert bad.out["code"] == 101
    bad = rt.exec(
        "libnet-ipam",
        "ADD",
        {k: v for k, v in cfg.items() if k != "ipam"},
        container_id="x1",
        netns_path=path,
    )
    assert bad.out["code"] == 7
    bad = rt.exec("libnet-ipam", "CHECK", {**cfg, "prevResult": first.out}, container_id="x9", netns_path=path)
    assert bad.out["code"] == 3


def test_parallel_adds_create_the_pool_once(env):
    """Runtimes call plugins in parallel: libnet-ipam ADDs racing to create the pool all get
    distinct addresses from it; parallel DELs release them all."""
    from concurrent.futures import ThreadPoolExecutor

    bed, agent, rt = env
    cfg = bridge_conf(agent)
    paths = [netns.path_of(bed.namespace(f"par{i}")) for i in range(6)]

    def call(command: str, i: int):
        return rt.exec("libnet-ipam", command, cfg, container_id=f"par{i}", netns_path=paths[i])

    with ThreadPoolExecutor(6) as pool:
        adds = list(pool.map(lambda i: call("ADD", i), range(6)))
    assert all(o.ok for o in adds), [o.out for o in adds if not o.ok]
    assert len({ip["address"] for o in adds for ip in o.out["ips"]}) == 12
    with ThreadPoolExecutor(6) as pool:
        assert all(o.ok for o in pool.map(lambda i: call("DEL", i), range(6)))
    assert held(agent) == []


def test_del_releases_what_an_older_libnet_ipam_held(env):
    """Before libnet-ipam registered sandboxes it held a container's addresses in an unjoined
    endpoint named ``cni-`` + a hash of container id and interface: DEL after an upgrade releases
    it too (and nothing else of that name's neighbours)."""
    from libnet.cni.client import Client
    from libnet.cni.ipam import endpoint_name

    bed, agent, rt = env
    cfg = bridge_conf(agent)
    path = netns.path_of(bed.namespace("up1"))
    assert rt.exec("libnet-ipam", "ADD", cfg, container_id="up1", netns_path=path).ok  # makes the pool
    pool = agent.cli_json("network", "inspect", "ipamnet")
    pool_id = (pool[0] if isinstance(pool, list) else pool)["id"]
    client = Client(agent.socket)
    client.request("POST", "/v1/endpoints", {"network": pool_id, "name": endpoint_name("old1", "eth0")})
    assert len(held(agent)) == 2
    assert rt.exec("libnet-ipam", "DEL", cfg, container_id="old1").ok
    assert [e["name"] for e in held(agent)] == [endpoint_name("up1", "eth0")]
    assert rt.exec("libnet-ipam", "DEL", cfg, container_id="up1").ok
    assert held(agent) == []
