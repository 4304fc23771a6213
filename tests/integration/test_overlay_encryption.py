"""Encrypted overlays (``-o encrypted``) through libnet-agents on three hosts: WireGuard on the wire, never VXLAN.

A capture in the switch namespace (scapy) runs while containers talk; it must
show WireGuard UDP between the hosts and never the encrypted network's VXLAN,
its containers' addresses or a payload marker -- also while ``wireguard-go``
is killed and brought back by the agent.  The plain overlay next to it still
shows its VXLAN.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import re
import signal
import subprocess
import time
from typing import Any

import pytest

from libnet.kernel import netns
from libnet.testing.agents import AgentProcess
from libnet.testing.capture import Capture, udp_count, vxlan_vnis
from libnet.testing.cluster import PingStream, ip, place, start_agents, wait_ping
from libnet.testing.hosts import Testbed, wait_until

pytestmark = pytest.mark.root
TUNNEL_RANGE = "198.51.100.240/28"
WG_PORT = 51820
MARKER = "6c69626e65742d73656372657421"  # "libnet-secret!" as ping's fill pattern (-p)


@pytest.fixture
def bed():
    if not all(os.path.exists(p) for p in ("/usr/bin/wireguard-go", "/usr/bin/wg")):
        pytest.skip("wireguard-go/wg missing: run scripts/install-system-deps")
    with Testbed(3) as b:
        yield b


def assert_no_clear_text(frames: list[bytes], packets: list[Any], vni: int, inner: list[str]) -> None:
    """No VXLAN of the encrypted network, no inner address, no payload marker anywhere on the wire."""
    assert vni not in vxlan_vnis(packets), "VXLAN of the encrypted network crossed the underlay"
    marker = bytes.fromhex(MARKER)
    assert not any(marker in f for f in frames), "the payload marker crossed the underlay in clear"
    for addr in inner:
        packed = ipaddress.ip_address(addr).packed
        assert not any(packed in f for f in frames), f"inner address {addr} crossed the underlay"


def assert_only_tunnels_and_gossip(packets: list[Any], plain_vni: int) -> None:
    """Between the hosts only WireGuard (both slots' ports), Serf gossip and the plain overlay's VXLAN."""
    from scapy.all import TCP, UDP
    from scapy.layers.vxlan import VXLAN

    for p in packets:
        if UDP in p:
            ports = {p[UDP].sport, p[UDP].dport}
            if ports & {WG_PORT, WG_PORT + 1, 7946}:
                continue
            assert 4789 in ports and VXLAN in p and p[VXLAN].vni == plain_vni, f"unexpected UDP: {p.summary()}"
        elif TCP in p:
            assert 7946 in (p[TCP].sport, p[TCP].dport), f"unexpected TCP: {p.summary()}"


def missing(out: str) -> list[int]:
    """The sequence numbers a ping stream's output lacks replies for."""
    with open(out, errors="replace") as f:
        text = f.read()
    seen = {int(n) for n in re.findall(r"icmp_seq=(\d+) ", text)}
    return [n for n in range(1, max(seen, default=0)) if n not in seen]


def wireguard_count(packets: list[Any]) -> int:
    return udp_count(packets, WG_PORT)


def vni_of(agent: AgentProcess, network: str) -> int:
    nw = next(n for n in agent.cli_json("network", "ls") if n["name"] == network)
    return int(nw["options"]["vni"]) if nw["options"].get("vni") else _vni_from_ns(agent, nw["id"])


def _vni_from_ns(agent: AgentProcess, network_id: str) -> int:
    from libnet.ownership import NamespaceLedger, load_instance_id

    instance = load_instance_id(agent.dir, create=False)
    assert instance
    rec = next(r for r in NamespaceLedger(agent.dir, instance).records("overlay") if r.owner == network_id)
    return int(re.search(r"(\d+)$", rec.name).group(1))  # type: ignore[union-attr]


def ping_marker(bed: Testbed, src: str, dst: str, count: int = 10, pattern: str = MARKER) -> None:
    r = bed.run(src, ["ping", "-n", "-c", str(count), "-i", "0.05", "-s", "600", "-p", pattern, dst], timeout=30)
    assert f"{count} received" in r.stdout, r.stdout


def test_encrypted_overlay(bed: Testbed, tmp_path) -> None:
    agents = start_agents(
        bed, str(tmp_path), f"sqlite://{tmp_path}/cluster.db", extra=("--encryption-range", TUNNEL_RANGE)
    )
    r = agents[0].cli(
        "network", "create", "sec", "--driver", "overlay", "-o", "encrypted",
        "--subnet", "198.51.100.0/25", "--subnet6", "2001:db8:77::/64",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = agents[0].cli(
        "network", "create", "plain", "--driver", "overlay", "--subnet", "198.51.100.128/26",
        "--subnet6", "2001:db8:78::/64",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    sec = [place(a, "sec") for a in agents]
    plain = [place(a, "plain") for a in agents[:2]]
    for (src, _), (_, ep) in itertools.permutations(sec, 2):
        wait_ping(bed, src, ip(ep["ipv4"]))
        wait_ping(bed, src, ip(ep["ipv6"]))
    wait_ping(bed, plain[0][0], ip(plain[1][1]["ipv4"]))
    # by name, through libnet's DNS
    name = sec[1][1]["name"]
    answer = bed.run(sec[0][0], ["dig", "@127.0.0.11", "+short", "+time=3", "+tries=2", name], timeout=20).stdout
    assert answer.split() == [ip(sec[1][1]["ipv4"])], answer
    # MTU: the underlay's minus WireGuard (60, IPv4 underlay) minus VXLAN (50, IPv4 tunnel addresses)
    out = bed.run(sec[0][0], ["ip", "-o", "link", "show", "eth0"]).stdout
    assert f" mtu {bed.mtu - 60 - 50} " in out, out
    status = agents[0].cli_json("agent", "status")
    enc = status["encryption"]
    assert enc["backend"] == "wireguard-go" and "no wireguard kernel module" in enc["reason"], enc
    key_file = os.path.join(agents[0].dir, "wireguard", "private.key")
    assert os.stat(key_file).st_mode & 0o777 == 0o600

    vni_sec, vni_plain = vni_of(agents[0], "sec"), vni_of(agents[0], "plain")
    inner = [ip(ep[k]) for _, ep in sec for k in ("ipv4", "ipv6")]

    # a transfer on both networks under capture: WireGuard for one, VXLAN for the other
    cap = Capture(bed)
    ping_marker(bed, sec[0][0], ip(sec[1][1]["ipv4"]))
    ping_marker(bed, sec[2][0], ip(sec[0][1]["ipv6"]))
    ping_marker(bed, plain[0][0], ip(plain[1][1]["ipv4"]), count=3, pattern="ab")
    frames = list(cap.frames)
    packets = cap.stop(bed)
    assert_no_clear_text(frames, packets, vni_sec, inner)
    assert_only_tunnels_and_gossip(packets, vni_plain)
    assert wireguard_count(packets) >= 40, "the encrypted transfer did not go through WireGuard"
    assert vni_plain in vxlan_vnis(packets), "the plain overlay no longer uses VXLAN"

    # kill -9 of wireguard-go on h1, with a route that would carry clear text out of h1 if anything let it
    bed.run(bed.hosts[0].ns, ["ip", "route", "add", "default", "via", bed.hosts[1].ipv4], check=True)
    pid = agents[0].wireguard_pid()
    assert pid is not None
    cap = Capture(bed)
    stream = bed.spawn(sec[0][0], ["ping", "-n", "-i", "0.05", "-s", "600", "-p", MARKER, ip(sec[1][1]["ipv4"])])
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: agents[0].wireguard_pid() not in (None, pid), 10), "wireguard-go was not restarted"
    wait_ping(bed, sec[0][0], ip(sec[1][1]["ipv4"]), timeout=20)
    time.sleep(0.5)
    os.kill(stream.pid, signal.SIGINT)
    stream.wait(10)
    frames = list(cap.frames)
    packets = cap.stop(bed)
    assert_no_clear_text(frames, packets, vni_sec, inner)
    assert_only_tunnels_and_gossip(packets, vni_plain)
    assert agents[0].cli_json("agent", "status")["encryption"]["restarts"] >= 1

    # the interface set down (its connected route gone, the default route left): still nothing in clear
    wg = agents[0].cli_json("agent", "status")["encryption"]["interface"]
    cap = Capture(bed)
    stream = bed.spawn(sec[0][0], ["ping", "-n", "-i", "0.05", "-s", "600", "-p", MARKER, ip(sec[1][1]["ipv4"])])
    time.sleep(0.3)
    bed.run(bed.hosts[0].ns, ["ip", "link", "set", wg, "down"], check=True)
    wait_ping(bed, sec[0][0], ip(sec[1][1]["ipv4"]), timeout=20)  # the agent brings it up again
    os.kill(stream.pid, signal.SIGINT)
    stream.wait(10)
    frames = list(cap.frames)
    packets = cap.stop(bed)
    assert_no_clear_text(frames, packets, vni_sec, inner)
    assert_only_tunnels_and_gossip(packets, vni_plain)

    # key rotation on h1 during ping streams to and from it: not one packet lost, twice (to the second slot and back)
    streams = [
        PingStream(bed, sec[0][0], ip(sec[1][1]["ipv4"]), str(tmp_path / "rot1.txt")),
        PingStream(bed, sec[2][0], ip(sec[0][1]["ipv6"]), str(tmp_path / "rot2.txt")),
    ]
    before = agents[0].cli_json("agent", "status")["encryption"]
    cap = Capture(bed)
    rotations = []
    for _ in range(2):
        r = agents[0].cli("network", "rotate-keys", "--json", timeout=150)
        assert r.returncode == 0, r.stderr
        rotations.append((time.monotonic() - streams[0].started, json.loads(r.stdout)))
    time.sleep(0.5)
    for stream in streams:
        sent, lost = stream.stop()
        assert sent > 50 and lost == 0, (stream.addr, sent, lost, str(missing(stream.out)), rotations)
    frames = list(cap.frames)
    packets = cap.stop(bed)
    assert_no_clear_text(frames, packets, vni_sec, inner)
    assert_only_tunnels_and_gossip(packets, vni_plain)
    after = agents[0].cli_json("agent", "status")["encryption"]
    assert after["rotations"] == 2 and after["public_key"] != before["public_key"]
    assert len(agents[0].wireguard_pids()) == 1, "the retired slot's wireguard-go is still running"

    def h1_tags() -> dict[str, str]:
        return next(n for n in agents[1].cli_json("node", "ls") if n["name"] == bed.hosts[0].name)["tags"]

    # the current key travels in Serf tags too
    assert wait_until(lambda: h1_tags().get("wg_key") == after["public_key"], 10), h1_tags()
    assert h1_tags()["wg_tunnel"] == after["tunnel_address"]

    # h2's agent killed: its wireguard-go keeps carrying traffic, and the next agent adopts it (same pid)
    wg_pid = agents[1].wireguard_pid()
    agents[1].kill()
    wait_ping(bed, sec[0][0], ip(sec[1][1]["ipv4"]), timeout=5)
    agents[1].start()
    assert agents[1].wireguard_pid() == wg_pid
    wait_ping(bed, sec[1][0], ip(sec[2][1]["ipv6"]), timeout=10)

    # h3's agent stopped and started (a graceful restart stops its wireguard-go): traffic comes back
    agents[2].stop()
    agents[2].start()
    wait_ping(bed, sec[2][0], ip(sec[0][1]["ipv4"]), timeout=15)
    wait_ping(bed, sec[0][0], ip(sec[2][1]["ipv6"]), timeout=15)

    # h3's key revoked: it reaches no one any more, at once; h1 and h2 still reach each other
    r = agents[0].cli("node", "revoke", bed.hosts[2].name)
    assert r.returncode == 0, r.stderr
    assert wait_until(lambda: not bed.ping(sec[2][0], ip(sec[0][1]["ipv4"]), wait=0.5), 5)
    for (src, _), (_, ep) in ((sec[2], sec[0]), (sec[2], sec[1]), (sec[0], sec[2]), (sec[1], sec[2])):
        assert not bed.ping(src, ip(ep["ipv4"]), wait=1), f"{src} still reaches {ep['ipv4']} after the revocation"
    wait_ping(bed, sec[0][0], ip(sec[1][1]["ipv4"]))
    time.sleep(1.5)  # h3's agent checks its tunnel meanwhile: it must not bring itself back
    assert not bed.ping(sec[2][0], ip(sec[0][1]["ipv4"]), wait=1)

    # a stop leaves wireguard-go running (encrypted traffic goes on while the agent is down) ...
    pids = [a.wireguard_pid() for a in agents]
    for a in agents:
        a.stop()
    assert [a.wireguard_pid() for a in agents] == pids and None not in pids
    wait_ping(bed, sec[0][0], ip(sec[1][1]["ipv4"]), timeout=5)
    # ... leaving the cluster for good stops it
    agents[0].start(once=("--leave",))
    agents[0].stop()
    assert agents[0].wireguard_pid() is None, "wireguard-go outlived its agent's leaving the cluster"


def test_encrypted_overlay_on_an_ipv6_underlay(tmp_path) -> None:
    """WireGuard between IPv6 endpoints ([v6]:port): reachable, MTU minus 80 (WireGuard on IPv6) minus 50 (VXLAN)."""
    from libnet.cluster.serf import new_key

    if not all(os.path.exists(p) for p in ("/usr/bin/wireguard-go", "/usr/bin/wg")):
        pytest.skip("wireguard-go/wg missing: run scripts/install-system-deps")
    with Testbed(2) as bed:
        key, first = new_key(), f"[{bed.hosts[0].ipv6}]:7946"
        agents = [
            AgentProcess(
                bed, h, "--cluster-store", f"sqlite://{tmp_path}/cluster.db", "--advertise", h.ipv6,
                "--join", first, "--cluster-key", key, "--encryption-range", TUNNEL_RANGE,
                state_dir=str(tmp_path / h.name),
            ).start()
            for h in bed.hosts
        ]  # fmt: skip
        r = agents[0].cli("network", "create", "sec", "--driver", "overlay", "-o", "encrypted", "--subnet",
                          "198.51.100.0/25", "--subnet6", "2001:db8:77::/64")  # fmt: skip
        assert r.returncode == 0, r.stderr
        (a, ep_a), (b, ep) = place(agents[0], "sec"), place(agents[1], "sec")
        wait_ping(bed, a, ip(ep["ipv4"]))
        wait_ping(bed, a, ip(ep["ipv6"]))
        wait_ping(bed, b, ip(ep_a["ipv6"]))
        out = bed.run(a, ["ip", "-o", "link", "show", "eth0"]).stdout
        assert f" mtu {bed.mtu - 80 - 50} " in out, out
        peers = agents[0].cli_json("agent", "status")["encryption"]["peers"]
        assert peers == [bed.hosts[1].name]
        for agent in agents:
            agent.stop()


def _two_on_an_encrypted_overlay(
    bed: Testbed, tmp_path: Any, extra: tuple[str, ...] = ()
) -> tuple[list[AgentProcess], Any, Any]:
    """Agents on the bed's first two hosts (encryption range TUNNEL_RANGE; ``extra`` arguments), the encrypted
    overlay ``sec`` and a container on each, the first reaching the second: (agents, (ns, endpoint) of each)."""
    if not all(os.path.exists(p) for p in ("/usr/bin/wireguard-go", "/usr/bin/wg")):
        pytest.skip("wireguard-go/wg missing: run scripts/install-system-deps")
    agents = start_agents(
        bed, str(tmp_path), f"sqlite://{tmp_path}/cluster.db", hosts=bed.hosts[:2],
        extra=("--encryption-range", TUNNEL_RANGE, *extra),
    )  # fmt: skip
    r = agents[0].cli("network", "create", "sec", "--driver", "overlay", "-o", "encrypted", "--subnet",
                      "198.51.100.0/25", "--subnet6", "2001:db8:77::/64")  # fmt: skip
    assert r.returncode == 0, r.stderr
    first, second = place(agents[0], "sec"), place(agents[1], "sec")
    wait_ping(bed, first[0], ip(second[1]["ipv4"]))
    return agents, first, second


def test_wireguard_go_killed_while_the_agent_is_down(tmp_path) -> None:
    """Breaker: kill -9 of wireguard-go left its control socket behind; the next agent took that file for
    the new process, configured nothing, and traffic stayed down until a reconcile (300 s by default).
    Now the stale socket is removed and the new process's own is awaited: back within seconds."""
    with Testbed(2) as bed:
        agents, (a, _), (_b, ep) = _two_on_an_encrypted_overlay(bed, tmp_path)
        for stop in (agents[1].stop, agents[1].kill):
            wg = agents[1].wireguard_pid()
            assert wg is not None
            stop()
            os.kill(wg, signal.SIGKILL)
            time.sleep(0.5)
            agents[1].start()
            assert wait_until(lambda: bed.ping(a, ip(ep["ipv4"]), wait=1), 15), stop
        for agent in agents:
            agent.stop()


def test_clear_vxlan_from_the_underlay_never_enters(tmp_path) -> None:
    """Breaker: every VXLAN device shares one wildcard UDP socket sorted only by VNI, so anyone on the underlay
    (a revoked host too) could send clear VXLAN with an encrypted network's VNI into its containers.  Only
    what comes out of WireGuard enters; the encrypted traffic itself still flows."""
    with Testbed(3) as bed:  # h3: a machine on the underlay without libnet (its own egress guard would drop it)
        agents, (a, _), (victim, ep) = _two_on_an_encrypted_overlay(bed, tmp_path)
        vni, target = vni_of(agents[0], "sec"), ip(ep["ipv4"])
        out = _inject_clear_vxlan(bed, victim, vni, target, bed.hosts[1].ipv4)
        assert "NONE" in out and "INJECTED" not in out, out
        wait_ping(bed, a, target)  # the encrypted path still delivers
        for agent in agents:
            agent.stop()


def test_a_join_needs_a_working_tunnel_to_each_peer_host(tmp_path) -> None:
    """Issue 20: an encrypted network is joined only with a working WireGuard tunnel (a handshake) to each
    host holding endpoints on it.  h2's tunnel cannot come up (its agent stopped, its wireguard-go killed):
    a join on h1 is refused after the wait, naming h2, and goes through once h2 is back.  h3, configured
    with another encryption range, is refused at once, naming h1 and both ranges, and h1's status shows it."""
    with Testbed(3) as bed:
        agents, (a, _), (_b, ep) = _two_on_an_encrypted_overlay(bed, tmp_path, ("--encryption-join-timeout", "3"))
        wg = agents[1].wireguard_pid()
        assert wg is not None
        agents[1].stop()
        os.kill(wg, signal.SIGKILL)
        sid = agents[0].cli("sandbox", "create").stdout.strip()
        started = time.monotonic()
        r = agents[0].cli("connect", "sec", sid)
        assert r.returncode != 0 and bed.hosts[1].name in r.stderr and "within 3 s" in r.stderr, r.stderr
        assert 3 < time.monotonic() - started < 30
        assert not [e for e in agents[0].cli_json("endpoint", "ls", "--network", "sec") if e["sandbox_id"] == sid]
        agents[1].start()  # wireguard-go back: the same join goes through
        r = agents[0].cli("connect", "sec", sid)
        assert r.returncode == 0, r.stderr
        wait_ping(bed, a, ip(ep["ipv4"]))

        other = "198.51.100.224/28"
        (third,) = start_agents(bed, str(tmp_path), f"sqlite://{tmp_path}/cluster.db", hosts=bed.hosts[2:],
                                extra=("--encryption-range", other))  # fmt: skip
        sid = third.cli("sandbox", "create").stdout.strip()
        r = third.cli("connect", "sec", sid)
        assert r.returncode != 0 and other in r.stderr and TUNNEL_RANGE in r.stderr, r.stderr
        assert bed.hosts[0].name in r.stderr or bed.hosts[1].name in r.stderr, r.stderr
        status = agents[0].cli_json("agent", "status")["encryption"]
        assert other in status["incompatible"][bed.hosts[2].name], status

        # revoking a name no host has is refused; a revoked host re-admitted on purpose is reachable again
        r = agents[0].cli("node", "revoke", "no-such-host")
        assert r.returncode != 0 and "no-such-host" in r.stderr, r.stderr
        assert agents[0].cli("node", "revoke", bed.hosts[1].name).returncode == 0
        assert wait_until(lambda: not bed.ping(a, ip(ep["ipv4"]), wait=1), 10)
        r = agents[0].cli("node", "unrevoke", bed.hosts[1].name)
        assert r.returncode == 0, r.stderr
        wait_ping(bed, a, ip(ep["ipv4"]))
        for agent in [*agents, third]:
            agent.stop()


def test_a_dead_host_does_not_block_the_others_key_rotation(tmp_path) -> None:
    """Breaker: a host that died for good kept its key record, never acknowledged a coming key, and so
    aborted every other host's rotation, for ever.  Once Serf reports it gone (failed past the grace
    period) it is not waited for."""
    with Testbed(2) as bed:
        agents, _, _ = _two_on_an_encrypted_overlay(bed, tmp_path)
        agents[1].kill()  # the whole host dies: agent, Serf agent, wireguard-go
        agents[1].stop_serf()
        agents[1].stop_wireguard()
        gone = bed.hosts[1].name

        def seen_failed() -> bool:
            return any(n["name"] == gone and n["status"] == "failed" for n in agents[0].cli_json("node", "ls"))

        assert wait_until(seen_failed, 30)
        time.sleep(4)  # the grace period (3 s) passes
        r = agents[0].cli("network", "rotate-keys", "--json", timeout=150)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["interface"].endswith("b")
        agents[0].stop()


def _inject_clear_vxlan(bed: Testbed, victim: str, vni: int, target: str, to: str) -> str:
    """Clear VXLAN with the encrypted network's VNI, sent from the bed's third host (no libnet there) to
    ``to``, for a UDP listener on ``target`` in the victim container: what the listener got ("NONE": nothing)."""
    import socket

    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN

    mac = bed.run(victim, ["cat", "/sys/class/net/eth0/address"]).stdout.strip()
    listen = (
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('0.0.0.0', 9999))\n"
        "s.settimeout(4)\ntry:\n    print('GOT', s.recvfrom(2000)[0], flush=True)\nexcept OSError:\n"
        "    print('NONE', flush=True)\n"
    )
    listener = bed.spawn(victim, ["python3", "-c", listen], stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    inner = Ether(dst=mac) / IP(src="198.51.100.99", dst=target) / UDP(sport=1234, dport=9999) / b"INJECTED"
    payload = bytes(VXLAN(vni=vni, flags=0x08) / inner)

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(5):
                s.sendto(payload, (to, 4789))
                time.sleep(0.1)

    netns.run_in(bed.hosts[2].ns, send)
    out, _ = listener.communicate(timeout=20)
    return str(out)


def test_the_guard_comes_back_at_once_after_a_ruleset_flush(tmp_path) -> None:
    """Breaker (issue 20): ``nft flush ruleset`` in a host's namespace (what an nftables service reload does)
    removed the WireGuard guard and the encrypted VNI's entry rule until the next anti-entropy pass (30 s):
    meanwhile clear VXLAN from anyone on the underlay entered the encrypted network, and a downed tunnel
    sent clear VXLAN out of the default route.  The tunnel's supervision puts the guard back within a second."""
    with Testbed(3) as bed:
        agents, (a, _), (victim, ep) = _two_on_an_encrypted_overlay(bed, tmp_path)
        vni, target = vni_of(agents[0], "sec"), ip(ep["ipv4"])
        subprocess.run(["ip", "netns", "exec", bed.hosts[1].ns, "nft", "flush", "ruleset"], check=True)
        time.sleep(2)  # the supervision's round (0.5 s), not the anti-entropy's (30 s)
        out = _inject_clear_vxlan(bed, victim, vni, target, bed.hosts[1].ipv4)
        assert "NONE" in out and "INJECTED" not in out, out
        # and out: the tunnel set down with a default route that would carry clear text
        bed.run(bed.hosts[0].ns, ["ip", "route", "replace", "default", "via", bed.hosts[1].ipv4])
        subprocess.run(["ip", "netns", "exec", bed.hosts[0].ns, "nft", "flush", "ruleset"], check=True)
        time.sleep(2)
        ifname = agents[0].cli_json("agent", "status")["encryption"]["interface"]
        cap = Capture(bed)
        stream = bed.spawn(a, ["ping", "-n", "-c", "40", "-i", "0.05", "-s", "600", "-p", MARKER, target],
                           stdout=subprocess.DEVNULL)  # fmt: skip
        time.sleep(0.3)
        bed.run(bed.hosts[0].ns, ["ip", "link", "set", ifname, "down"])
        stream.wait(timeout=30)
        packets = cap.stop(bed)
        assert_no_clear_text(cap.frames, packets, vni, [ip(ep["ipv4"])])
        wait_ping(bed, a, target)
        for agent in agents:
            agent.stop()


def _fence_routes(bed: Testbed, ns: str) -> str:
    return bed.run(ns, ["ip", "route", "show", "proto", "108", TUNNEL_RANGE]).stdout.strip()


def test_no_clear_text_when_the_ruleset_is_flushed_and_the_tunnel_goes_down(tmp_path) -> None:
    """Breaker (issue 20): the only guard against clear VXLAN leaving was nftables rules, put back within
    a supervision round (0.5 s).  A ruleset flushed and the WireGuard interface down within that round -- or
    the ruleset flushed while the agent is down, and the interface down then -- sent the encrypted VXLAN out
    of the default route in clear.  The fail-closed route (``unreachable <range> metric 4294967295 proto
    108``) drops it whatever the firewall holds; it outlives the agent and goes with ``--leave`` only."""
    with Testbed(2) as bed:
        agents, (a, _), (_b, ep) = _two_on_an_encrypted_overlay(bed, tmp_path)
        vni, target, h1 = vni_of(agents[0], "sec"), ip(ep["ipv4"]), bed.hosts[0].ns
        bed.run(h1, ["ip", "route", "replace", "default", "via", bed.hosts[1].ipv4], check=True)
        assert "unreachable" in _fence_routes(bed, h1) and "metric 4294967295" in _fence_routes(bed, h1)
        ifname = agents[0].cli_json("agent", "status")["encryption"]["interface"]
        flush_and_down = f"nft flush ruleset && ip link set {ifname} down"
        for agent_running in (True, False):
            if not agent_running:
                agents[0].stop()  # wireguard-go and the fence stay
                bed.run(h1, ["ip", "link", "set", ifname, "up"], check=True)
                wait_ping(bed, a, target, timeout=10)
            cap = Capture(bed)
            stream = bed.spawn(a, ["ping", "-n", "-c", "30", "-i", "0.05", "-s", "600", "-p", MARKER, target],
                               stdout=subprocess.DEVNULL)  # fmt: skip
            time.sleep(0.3)
            bed.run(h1, ["sh", "-c", flush_and_down], check=True)  # both within one supervision round
            stream.wait(timeout=30)
            packets = cap.stop(bed)
            assert_no_clear_text(cap.frames, packets, vni, [ip(ep["ipv4"])])
            if agent_running:
                wait_ping(bed, a, target, timeout=10)  # the supervision brings the interface and guards back
        assert _fence_routes(bed, h1), "the fence went with the agent's stop"
        agents[0].start(once=("--leave",))
        agents[0].stop()
        # breaker: leaving keeps the data plane (h1's container stays on the encrypted network); with the
        # fence gone, a flushed ruleset sent its VXLAN, addresses and payload out of the default route
        assert _fence_routes(bed, h1), "the fence went while an encrypted network's device is still here"
        subprocess.run(["ip", "netns", "exec", h1, "nft", "flush", "ruleset"], check=True)
        cap = Capture(bed)
        bed.run(a, ["ping", "-n", "-c", "10", "-i", "0.05", "-s", "600", "-p", MARKER, target])
        packets = cap.stop(bed)
        assert_no_clear_text(cap.frames, packets, vni, [ip(ep["ipv4"])])
        # once the network is gone from h1 (its container disconnected), leaving removes the fence
        agents[0].start()
        sid = next(s["id"] for s in agents[0].cli_json("sandbox", "ls") if s["netns"].endswith(a))
        r = agents[0].cli("disconnect", "sec", sid)
        assert r.returncode == 0, r.stderr
        agents[0].stop()
        agents[0].start(once=("--leave",))
        agents[0].stop()
        assert _fence_routes(bed, h1) == "", "the fence outlived leaving the cluster"
        agents[1].stop()


def test_a_peer_with_another_range_is_never_sent_to_in_clear(tmp_path) -> None:
    """Breaker (issue 20): h2 restarted with another --encryption-range re-announced its container with a
    tunnel address outside h1's range; h1 programmed it on the encrypted network, where the fence route does
    not cover it.  With h1's agent down and its ruleset flushed, the encrypted network's VXLAN to h2 left
    through the default route in clear.  Now h1 sends only to VTEPs inside its range: nothing leaves."""
    with Testbed(2) as bed:
        agents, (a, _), (_b, ep) = _two_on_an_encrypted_overlay(bed, tmp_path)
        vni, target, h1 = vni_of(agents[0], "sec"), ip(ep["ipv4"]), bed.hosts[0].ns
        agents[1].stop()
        agents[1].extra += ["--encryption-range", "198.51.100.224/28"]
        agents[1].start()

        def incompatible() -> bool:
            return bed.hosts[1].name in agents[0].cli_json("agent", "status")["encryption"]["incompatible"]

        assert wait_until(incompatible, 20)
        time.sleep(2)  # h2's re-announced endpoint reaches h1
        agents[0].stop()
        bed.run(h1, ["ip", "route", "replace", "default", "via", bed.hosts[1].ipv4], check=True)
        subprocess.run(["ip", "netns", "exec", h1, "nft", "flush", "ruleset"], check=True)
        cap = Capture(bed)
        bed.run(a, ["ping", "-n", "-c", "10", "-i", "0.05", "-s", "600", "-p", MARKER, target])
        packets = cap.stop(bed)
        assert_no_clear_text(cap.frames, packets, vni, [target])
        agents[1].stop()
