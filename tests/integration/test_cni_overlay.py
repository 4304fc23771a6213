"""Multi-host pod networking through CNI: two test hosts, each with podman (CNI backend) and a
libnet-agent (Serf, one etcd shared as the cluster store); one conflist of ``type: libnet``,
``driver: overlay`` on both; a container on each host reaches the other by IP (v4, v6) and by
name through libnet's DNS at 127.0.0.11 (issue 19)."""

from __future__ import annotations

import pytest

from libnet.cluster.serf import new_key
from libnet.testing.cni import CniRuntime
from libnet.testing.etcd import EtcdServer, find_etcd
from libnet.testing.hosts import Testbed, wait_until
from libnet.testing.podman import IMAGE, Podman, PodmanAgent, podman_missing

pytestmark = pytest.mark.root


def test_overlay_across_two_hosts_through_cni(tmp_path) -> None:
    why = podman_missing() or (None if find_etcd() else "no etcd binary: run scripts/install-system-deps")
    if why:
        pytest.skip(why)
    with Testbed(3) as bed, EtcdServer(netns=bed.hosts[2].ns, host=bed.hosts[2].ipv4) as etcd:
        key, first = new_key(), bed.hosts[0].ipv4
        # the local gateway bridge of the overlay's outbound path: IPv4 from documentation ranges
        pools = tmp_path / "pools.toml"
        pools.write_text('default_pools = [{base = "198.51.100.192/27", size = 28}]\n')
        runtimes: list[tuple[Podman, PodmanAgent]] = []
        try:
            for h in bed.hosts[:2]:
                podman = Podman(bed, h, CniRuntime.for_host(bed, h).bin_dir)
                agent = PodmanAgent(
                    bed, h, podman, "--cluster-store", etcd.url, "--advertise", h.ipv4, "--join", first,
                    "--cluster-key", key, "--config", str(pools), state_dir=str(tmp_path / h.name),
                )  # fmt: skip
                runtimes.append((podman, agent))
                agent.start()
                plugin = {"type": "libnet", "socket": agent.socket, "network": "ov", "driver": "overlay"}
                podman.write_conflist("ov", [{**plugin, "subnet": "198.51.100.0/26", "subnet6": "2001:db8:26::/64"}])
                podman.load_busybox()
            (p1, a1), (p2, a2) = runtimes
            # the first ADD creates the overlay in the cluster store; the other host's finds it there
            p1.run("run", "-d", "--name", "pod1", "--network", "ov", IMAGE, "sleep", "600")
            p2.run("run", "-d", "--name", "pod2", "--network", "ov", IMAGE, "sleep", "600")
            nets = [[n for n in a.cli_json("network", "ls") if n["name"] == "ov"] for a in (a1, a2)]
            assert nets[0][0]["id"] == nets[1][0]["id"] and nets[0][0]["driver"] == "overlay"
            addrs = {}
            for agent, name in ((a1, "pod1"), (a2, "pod2")):
                ep = next(e for e in agent.cli_json("endpoint", "ls") if e["name"] == name)
                addrs[name] = (ep["ipv4"].split("/")[0], ep["ipv6"].split("/")[0])
            assert addrs["pod1"] != addrs["pod2"]

            def pings(podman: Podman, src: str, *args: str) -> bool:
                return podman.run("exec", src, "ping", "-c1", "-W2", *args, check=False).returncode == 0

            for podman, src, dst in ((p1, "pod1", "pod2"), (p2, "pod2", "pod1")):
                v4, v6 = addrs[dst]
                assert wait_until(lambda p=podman, s=src, a=v4: pings(p, s, a), 20, 0.2), (src, v4)
                assert wait_until(lambda p=podman, s=src, a=v6: pings(p, s, a), 20, 0.2), (src, v6)
                for family in ("-4", "-6"):  # by name, through libnet's DNS in the container
                    assert wait_until(lambda p=podman, s=src, f=family, d=dst: pings(p, s, f, d), 20, 0.2), (
                        src,
                        dst,
                        family,
                    )
            # known limitation: on an overlay the container's veth peer lives in the overlay's namespace,
            # so the result names no host-side interface and ``bandwidth`` has nothing to shape
            bw = {"type": "bandwidth", "ingressRate": 8_000_000, "ingressBurst": 100_000}
            bw.update(egressRate=8_000_000, egressBurst=100_000)
            p1.write_conflist("ovbw", [{**plugin, "socket": a1.socket, "network": "ov"}, bw])
            r = p1.run("run", "-d", "--name", "slow", "--network", "ovbw", IMAGE, "sleep", "600", check=False)
            assert r.returncode != 0 and "no veth peer of container interface found" in r.stderr, r.stderr
            assert "slow" not in {e["name"] for e in a1.cli_json("endpoint", "ls")}  # DEL undid libnet's ADD
            p1.run("rm", "-f", "-t", "0", "slow", check=False)
            p2.run("rm", "-f", "-t", "0", "pod2")
            assert not pings(p1, "pod1", addrs["pod2"][0])
            assert not [e for a in (a1, a2) for e in a.cli_json("endpoint", "ls") if e["name"] == "pod2"]
            p1.run("rm", "-f", "-t", "0", "pod1")
            for podman, agent in runtimes:
                assert agent.cli_json("endpoint", "ls") == [] and agent.cli_json("sandbox", "ls") == []
                assert wait_until(lambda p=podman: not any(p.leftovers().values()), 20), podman.leftovers()
        finally:
            for podman, agent in runtimes:
                podman.cleanup()
                agent.stop()
