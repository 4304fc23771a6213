"""Real podman 4.3 (CNI backend) on libnet networks through the libnet CNI plugin (issue 19)."""

from __future__ import annotations

import pytest

from libnet.kernel.netlink import Netlink
from libnet.testing.cni import CniRuntime, reference_missing
from libnet.testing.hosts import Testbed, wait_until
from libnet.testing.podman import IMAGE, Podman, PodmanAgent, podman_missing

pytestmark = pytest.mark.root

LNPOD = ("lnpod", "198.51.100.0/26", "2001:db8:23::/64")
LNPOD2 = ("lnpod2", "198.51.100.64/26", "2001:db8:24::/64")
BRPOD = ("brpod", "198.51.100.128/26", "2001:db8:25::/64")  # the reference bridge, libnet-ipam's addresses


@pytest.fixture
def pod():
    why = podman_missing()
    if why:
        pytest.skip(why)
    with Testbed(1) as bed:
        host = bed.hosts[0]
        rt = CniRuntime.for_host(bed, host)
        podman = Podman(bed, host, rt.bin_dir)
        agent = PodmanAgent(bed, host, podman).start()
        for name, v4, v6 in (LNPOD, LNPOD2):
            podman.write_conflist(
                name,
                [{"type": "libnet", "socket": agent.socket, "network": name, "subnet": v4, "subnet6": v6}],
            )
        name, v4, v6 = BRPOD
        ipam = {"type": "libnet-ipam", "socket": agent.socket, "subnet": v4, "subnet6": v6}
        ipam["routes"] = [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
        bridge = {"type": "bridge", "bridge": "cnibr0", "isGateway": True, "ipMasq": False, "ipam": ipam}
        podman.write_conflist(name, [{**bridge, "dns": {"nameservers": ["127.0.0.11"]}}])
        podman.load_busybox()
        try:
            yield bed, agent, podman
        finally:
            podman.cleanup()
            agent.stop()


def test_two_containers_ping_by_ip_and_name(pod):
    _, agent, podman = pod
    for name in ("one", "two"):
        podman.run("run", "-d", "--name", name, "--network", "lnpod", IMAGE, "sleep", "600")
    eps = {e["name"]: e for e in agent.cli_json("endpoint", "ls")}
    assert set(eps) == {"one", "two"}
    v4, v6 = eps["two"]["ipv4"].split("/")[0], eps["two"]["ipv6"].split("/")[0]
    assert podman.run("exec", "one", "ping", "-c1", "-W3", v4).returncode == 0
    assert podman.run("exec", "one", "ping", "-c1", "-W3", v6).returncode == 0
    resolv = podman.run("exec", "one", "cat", "/etc/resolv.conf").stdout
    assert "127.0.0.11" in resolv, resolv
    r = podman.run("exec", "one", "ping", "-c1", "-W3", "two", check=False)
    assert r.returncode == 0 and (v4 in r.stdout or v6 in r.stdout), (r.stdout, r.stderr)
    r = podman.run("exec", "one", "ping", "-4", "-c1", "-W3", "two", check=False)
    assert r.returncode == 0 and v4 in r.stdout, (r.stdout, r.stderr)
    podman.run("stop", "-t", "0", "two")
    assert {e["name"] for e in agent.cli_json("endpoint", "ls")} == {"one"}
    podman.run("rm", "-f", "-t", "0", "one", "two")
    assert agent.cli_json("endpoint", "ls") == [] and agent.cli_json("sandbox", "ls") == []


def host_veths(bed) -> list[str]:
    """The host-side veths of containers in the test host (libnet's lnv*, the bridge plugin's veth*)."""
    with Netlink(bed.hosts[0].ns) as nl:
        return sorted(link.name for link in nl.links() if link.name.startswith(("lnv", "veth")))


def state(podman, name: str) -> str:
    return podman.run("inspect", "-f", "{{.State.Status}}", name).stdout.strip()


def assert_pings(podman, src: str, dst: str) -> None:
    r = podman.run("exec", src, "ping", "-c1", "-W3", dst, check=False)
    assert r.returncode == 0, (src, dst, r.stdout, r.stderr)


def test_kill_stop_start_rm_leave_nothing(pod):
    """A container that exits is cleaned up by the ``podman container cleanup`` conmon runs: its runc
    state must go too (it stayed behind and ``start`` failed), its endpoint is released, and it starts
    again on the network; ``rm -f`` leaves no endpoint, sandbox, runc state, process, namespace or veth."""
    bed, agent, podman = pod
    for name in ("one", "two"):
        podman.run("run", "-d", "--name", name, "--network", "lnpod", IMAGE, "sleep", "600")
    for how in (("kill", "one"), ("stop", "-t", "1", "one")):
        podman.run(*how)
        # kill: only conmon's exit command cleans up; stop: podman stop and it race
        assert wait_until(lambda: state(podman, "one") == "exited", 20)
        assert wait_until(lambda: {e["name"] for e in agent.cli_json("endpoint", "ls")} == {"two"}, 20)
        assert wait_until(lambda: len(podman.leftovers()["runc"]) == 1, 20), (how, podman.leftovers())
        podman.run("start", "one")
        assert {e["name"] for e in agent.cli_json("endpoint", "ls")} == {"one", "two"}
        assert_pings(podman, "two", "one")
        assert_pings(podman, "one", "two")
    assert len(podman.live_pids()) == 4  # a conmon and a container process each
    podman.run("rm", "-f", "-t", "0", "one", "two")
    assert agent.cli_json("endpoint", "ls") == [] and agent.cli_json("sandbox", "ls") == []
    assert wait_until(lambda: not any(podman.leftovers().values()), 20), podman.leftovers()
    assert host_veths(bed) == []


def test_network_connect_disconnect_running_container(pod):
    """``podman network connect`` adds eth1 on a second libnet network to a running container
    (reachable there by IP and name); ``disconnect`` removes it and only it."""
    bed, agent, podman = pod
    podman.run("run", "-d", "--name", "one", "--network", "lnpod", IMAGE, "sleep", "600")
    podman.run("run", "-d", "--name", "two", "--network", "lnpod", IMAGE, "sleep", "600")
    podman.run("run", "-d", "--name", "three", "--network", "lnpod2", IMAGE, "sleep", "600")
    assert_pings(podman, "three", "198.51.100.65")  # the gateway of lnpod2
    r = podman.run("exec", "three", "ping", "-c1", "-W2", "one", check=False)
    assert r.returncode != 0  # not on lnpod2 yet: no name, no route
    podman.run("network", "connect", "lnpod2", "one")
    eps = [e for e in agent.cli_json("endpoint", "ls") if e["name"] == "one"]
    assert sorted(e["ifname"] for e in eps) == ["eth0", "eth1"]
    on2 = next(e for e in eps if e["ifname"] == "eth1")
    v4, v6 = on2["ipv4"].split("/")[0], on2["ipv6"].split("/")[0]
    addrs = podman.run("exec", "one", "ip", "addr", "show", "eth1").stdout
    assert v4 in addrs and v6 in addrs, addrs
    for dst in (v4, v6, "one"):
        assert_pings(podman, "three", dst)
    assert_pings(podman, "one", "three")
    assert_pings(podman, "one", "two")  # eth0 still works
    podman.run("network", "disconnect", "lnpod2", "one")
    assert [e["ifname"] for e in agent.cli_json("endpoint", "ls") if e["name"] == "one"] == ["eth0"]
    r = podman.run("exec", "one", "ip", "link", "show", "eth1", check=False)
    assert r.returncode != 0, r.stdout
    r = podman.run("exec", "three", "ping", "-c1", "-W2", v4, check=False)
    assert r.returncode != 0
    assert "nameserver 127.0.0.11" in podman.run("exec", "one", "cat", "/etc/resolv.conf").stdout
    assert_pings(podman, "one", "two")
    # connect again after disconnect: a fresh eth1
    podman.run("network", "connect", "lnpod2", "one")
    assert_pings(podman, "three", "one")
    podman.run("rm", "-f", "-t", "0", "one", "two", "three")
    assert agent.cli_json("endpoint", "ls") == [] and agent.cli_json("sandbox", "ls") == []
    assert wait_until(lambda: not any(podman.leftovers().values()), 20), podman.leftovers()
    assert host_veths(bed) == []


def ipam_addresses(agent, name: str) -> list[str] | None:
    """The addresses libnet-ipam holds for container ``name`` (its endpoint has the container's name;
    None: none held)."""
    ep = {e["name"]: e for e in agent.cli_json("endpoint", "ls")}.get(name)
    return None if ep is None else [ep["ipv4"].split("/")[0], ep["ipv6"].split("/")[0]]


def assert_ping_name(podman, src: str, dst: str, family: str, addr: str) -> None:
    r = podman.run("exec", src, "ping", family, "-c1", "-W3", dst, check=False)
    assert r.returncode == 0 and addr in r.stdout, (src, dst, family, r.stdout, r.stderr)


def test_reference_bridge_with_libnet_ipam(pod):
    """podman on the reference ``bridge`` plugin with ``libnet-ipam``: dual-stack addresses from
    libnet, ping both ways over IPv4 and IPv6, by address and by name (libnet's DNS in the runtime's
    namespace, also after an agent restart, which leaves that namespace and its veth alone); an exit
    (kill, stop) releases them, start takes new ones; ``rm -f`` releases all and leaves no runc
    state, process, namespace or veth."""
    why = reference_missing("bridge")
    if why:
        pytest.skip(why)
    bed, agent, podman = pod
    for name in ("one", "two"):
        podman.run("run", "-d", "--name", name, "--network", "brpod", IMAGE, "sleep", "600")

    def ping_both_ways() -> None:
        for src, dst in (("one", "two"), ("two", "one")):
            v4, v6 = ipam_addresses(agent, dst) or ["none", "none"]
            assert v4.startswith("198.51.100.") and v6.startswith("2001:db8:25::"), (v4, v6)
            for addr in (v4, v6):
                assert_pings(podman, src, addr)
            # by name, through libnet's resolver in the container (the bridge config's dns)
            assert_ping_name(podman, src, dst, "-4", v4)
            assert_ping_name(podman, src, dst, "-6", v6)

    ping_both_ways()
    assert "nameserver 127.0.0.11" in podman.run("exec", "one", "cat", "/etc/resolv.conf").stdout
    netns_one = podman.run("inspect", "-f", "{{.NetworkSettings.SandboxKey}}", "one").stdout.strip()
    assert {s["netns"] for s in agent.cli_json("sandbox", "ls")} >= {netns_one}  # the runtime's, as it is
    agent.stop()  # a restart serves the names again; the runtime's namespaces and veths stay
    veths = host_veths(bed)
    agent.start()
    assert host_veths(bed) == veths and len(veths) == 2
    ping_both_ways()
    for how in (("kill", "one"), ("stop", "-t", "1", "one")):
        podman.run(*how)
        assert wait_until(lambda: state(podman, "one") == "exited", 20)
        assert wait_until(lambda: ipam_addresses(agent, "one") is None, 20)  # released
        assert wait_until(lambda: len(podman.leftovers()["runc"]) == 1, 20), (how, podman.leftovers())
        assert len(agent.cli_json("endpoint", "ls")) == 1
        podman.run("start", "one")
        ping_both_ways()
    podman.run("rm", "-f", "-t", "0", "one", "two")
    assert agent.cli_json("endpoint", "ls") == [] and agent.cli_json("sandbox", "ls") == []  # all released
    assert wait_until(lambda: not any(podman.leftovers().values()), 20), podman.leftovers()
    assert host_veths(bed) == []
