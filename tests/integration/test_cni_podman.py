"""Real podman 4.3 (CNI backend) on libnet networks through the libnet CNI plugin (issue 19)."""

from __future__ import annotations

import pytest

from libnet.testing.cni import CniRuntime
from libnet.testing.hosts import Testbed
from libnet.testing.podman import IMAGE, Podman, PodmanAgent, podman_missing

pytestmark = pytest.mark.root


@pytest.fixture
def pod():
    why = podman_missing()
    if why:
        pytest.skip(why)
    with Testbed(1) as bed:
        host = bed.hosts[0]
        rt = CniRuntime(host.ns)
        podman = Podman(bed, host, rt.bin_dir)
        agent = PodmanAgent(bed, host, podman).start()
        podman.write_conflist(
            "lnpod",
            [
                {
                    "type": "libnet",
                    "socket": agent.socket,
                    "network": "lnpod",
                    "subnet": "198.51.100.0/24",
                    "subnet6": "2001:db8:23::/64",
                }
            ],
        )
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
