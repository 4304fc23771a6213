"""Published ports on the host's loopback and the hairpin path (issue 14, faults 2 and 6).

Docker users expect ``-p 127.0.0.1:9090:90`` and ``-p 8080:80`` to answer on
``127.0.0.1`` (and ``::1``) from the host, and a container to reach itself
through its own published port on the host's address.  The hairpin path
broke on hosts with ``br_netfilter`` (``net.bridge.bridge-nf-call-iptables=1``),
so each test runs with the sysctl 0 and 1 -- set only inside the test host's
namespace.
"""

from __future__ import annotations

import os
import sys
import textwrap

import pytest

from libnet.testing.agents import AgentProcess
from libnet.testing.hosts import Testbed

pytestmark = pytest.mark.root

# answers "hello <peer address>" on every connection, IPv4 and IPv6 (one dual-stack socket)
SERVER = textwrap.dedent(
    """
    import socket, sys
    socks = []
    for port in sys.argv[1:]:
        s = socket.socket(socket.AF_INET6)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", int(port))); s.listen(16); socks.append(s)
    print("ready", flush=True)
    import selectors
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    for _ in range(1000):
        for key, _ in sel.select(60):
            conn, peer = key.fileobj.accept()
            conn.sendall(("hello " + peer[0] + "\\n").encode()); conn.close()
    """
)
CLIENT = textwrap.dedent(
    """
    import socket, sys
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    print(c.recv(100).decode().strip())
    """
)


@pytest.fixture
def bed():
    with Testbed(1) as b:
        yield b


def _netfilter_on_bridges(bed: Testbed, value: int) -> None:
    """Set bridge-nf-call-ip(6)tables inside the test host only (br_netfilter makes them per namespace)."""
    ns = bed.hosts[0].ns
    if bed.run(ns, ["test", "-e", "/proc/sys/net/bridge/bridge-nf-call-iptables"]).returncode != 0:
        if value:
            pytest.skip("br_netfilter is not loaded on this machine")
        return
    for key in ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"):
        bed.run(ns, ["sysctl", "-qw", f"{key}={value}"], check=True)
        assert bed.run(ns, ["sysctl", "-n", key]).stdout.strip() == str(value)


def _fetch(bed: Testbed, ns: str, addr: str, port: int) -> str | None:
    r = bed.run(ns, [sys.executable, "-c", CLIENT, addr, str(port)], timeout=15)
    return r.stdout.strip() if r.returncode == 0 else None


def _netns(agent: AgentProcess, sandbox: str) -> str:
    [sb] = [s for s in agent.cli_json("sandbox", "ls") if s["id"].startswith(sandbox) or sandbox == s["id"]]
    return os.path.basename(sb["netns"])


@pytest.mark.parametrize("bridge_nf", [0, 1])
def test_localhost_and_hairpin_answer(bed: Testbed, tmp_path, bridge_nf: int) -> None:
    host = bed.hosts[0]
    _netfilter_on_bridges(bed, bridge_nf)
    agent = AgentProcess(bed, host, state_dir=str(tmp_path / "h1")).start()
    try:
        r = agent.cli("network", "create", "front", "--subnet", "198.51.100.0/25", "--subnet6", "2001:db8:14::/64")
        assert r.returncode == 0, r.stderr
        a = agent.cli("sandbox", "create", "--hostname", "a").stdout.strip()
        b = agent.cli("sandbox", "create", "--hostname", "b").stdout.strip()
        r = agent.cli("connect", "front", a, "-p", "8080:80", "-p", "127.0.0.1:9090:90", "-p", "[::1]:9091:90")
        assert r.returncode == 0, r.stderr
        assert agent.cli("connect", "front", b).returncode == 0
        ns_a, ns_b = _netns(agent, a), _netns(agent, b)
        server = bed.spawn(ns_a, [sys.executable, "-c", SERVER, "80", "90"], stdout=-1, text=True)
        assert server.stdout.readline().strip() == "ready"
        paths = {
            "A to itself via the host's IPv4": (ns_a, host.ipv4, 8080),
            "A to itself via the host's IPv6": (ns_a, host.ipv6, 8080),
            "B to A via the host's IPv4": (ns_b, host.ipv4, 8080),
            "B to A via the host's IPv6": (ns_b, host.ipv6, 8080),
            "host via 127.0.0.1:8080": (host.ns, "127.0.0.1", 8080),
            "host via [::1]:8080": (host.ns, "::1", 8080),
            "host via 127.0.0.1:9090 (published on 127.0.0.1)": (host.ns, "127.0.0.1", 9090),
            "host via [::1]:9091 (published on ::1)": (host.ns, "::1", 9091),
            "host via its own IPv4": (host.ns, host.ipv4, 8080),
        }
        failed = [what for what, (ns, addr, port) in paths.items() if not _fetch(bed, ns, addr, port)]
        assert failed == [], f"no answer (bridge-nf-call-iptables={bridge_nf}): {failed}"
        # published on loopback only: not reachable on the host's other addresses, nor from outside it
        assert _fetch(bed, host.ns, host.ipv4, 9090) is None
        assert _fetch(bed, host.ns, host.ipv6, 9091) is None
    finally:
        agent.stop()


def test_reconcile_restores_route_localnet_hairpin_and_relays(bed: Testbed, tmp_path) -> None:
    host = bed.hosts[0]
    _netfilter_on_bridges(bed, 1)
    agent = AgentProcess(bed, host, state_dir=str(tmp_path / "h1")).start()
    try:
        r = agent.cli("network", "create", "front", "--subnet", "198.51.100.0/25", "--subnet6", "2001:db8:14::/64")
        assert r.returncode == 0, r.stderr
        a = agent.cli("sandbox", "create", "--hostname", "a").stdout.strip()
        r = agent.cli("connect", "front", a, "-p", "8080:80", "-p", "127.0.0.1:9090:90", "-p", "[::1]:9091:90")
        assert r.returncode == 0, r.stderr
        ns_a = _netns(agent, a)
        server = bed.spawn(ns_a, [sys.executable, "-c", SERVER, "80", "90"], stdout=-1, text=True)
        assert server.stdout.readline().strip() == "ready"
        assert _fetch(bed, host.ns, "::1", 9091) is not None
        agent.stop()
        assert _fetch(bed, host.ns, "::1", 9091) is None  # the relay went with the agent
        # drift while the agent was down
        [br] = [w for w in bed.run(host.ns, ["ip", "-br", "link"]).stdout.split() if w.startswith("lnb-")]
        bed.run(host.ns, ["sysctl", "-qw", f"net.ipv4.conf.{br}.route_localnet=0"], check=True)
        ports = [w.split("@")[0] for w in bed.run(host.ns, ["ip", "-br", "link"]).stdout.split() if w.startswith("lnv")]
        for port in ports:
            bed.run(host.ns, ["bridge", "link", "set", "dev", port, "hairpin", "off"], check=True)
        assert _fetch(bed, ns_a, host.ipv4, 8080) is None and _fetch(bed, host.ns, "127.0.0.1", 9090) is None
        agent.start()  # reconciles on start
        assert bed.run(host.ns, ["sysctl", "-n", f"net.ipv4.conf.{br}.route_localnet"]).stdout.strip() == "1"
        assert "hairpin on" in bed.run(host.ns, ["bridge", "-d", "link", "show", "dev", ports[0]]).stdout
        failed = [
            what
            for what, (ns, addr, port) in {
                "A to itself": (ns_a, host.ipv4, 8080),
                "127.0.0.1:9090": (host.ns, "127.0.0.1", 9090),
                "[::1]:9091": (host.ns, "::1", 9091),
            }.items()
            if not _fetch(bed, ns, addr, port)
        ]
        assert failed == []
    finally:
        agent.stop()


def test_containers_cannot_reach_host_loopback(bed: Testbed, tmp_path) -> None:
    """route_localnet=1 on the bridge must not open the host's 127.0.0.0/8 to containers (CVE-2020-8558)."""
    host = bed.hosts[0]
    agent = AgentProcess(bed, host, state_dir=str(tmp_path / "h1")).start()
    try:
        r = agent.cli("network", "create", "front", "--subnet", "198.51.100.0/25", "--subnet6", "2001:db8:14::/64")
        assert r.returncode == 0, r.stderr
        a = agent.cli("sandbox", "create").stdout.strip()
        assert agent.cli("connect", "front", a).returncode == 0
        ns_a = _netns(agent, a)
        local = bed.spawn(
            host.ns,
            [
                sys.executable,
                "-c",
                "import socket,time; s=socket.socket(); s.bind(('127.0.0.2', 7777)); s.listen(); time.sleep(60)",
            ],
        )
        try:
            # a hostile container: 127.0.0.2 routed to the gateway instead of its own lo
            for cmd in (
                ["ip", "route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local"],
                ["ip", "route", "add", "127.0.0.2/32", "via", "198.51.100.1"],
                ["sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1"],
            ):
                bed.run(ns_a, cmd, check=True)
            probe = "import socket; socket.create_connection(('127.0.0.2', 7777), timeout=2); print('open')"
            r = bed.run(ns_a, [sys.executable, "-c", probe], timeout=15)
            assert "open" not in r.stdout
        finally:
            local.kill()
            local.wait(10)
    finally:
        agent.stop()
