"""The agent's low descriptors (< FD_SETSIZE, kept for libnftables' select(2)) under load
from clients: sockets held per client connection or flow, not per sandbox, filled them
before, and the next nftables context (a port published) got a number >= 1024 -- glibc
aborted the whole agent (``*** bit out of range 0 - FD_SETSIZE on fd_set ***``)."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest

from libnet.kernel.fds import FD_SETSIZE
from libnet.testing.agents import AgentProcess
from libnet.testing.hosts import Testbed, wait_until

pytestmark = pytest.mark.root

# UDP flows through the [::1] relay: one datagram from each of n sockets (n source ports)
UDP_FLOWS = textwrap.dedent(
    """
    import resource, socket, sys, time
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    socks = []
    for i in range(int(sys.argv[2])):
        if i % 50 == 0:
            time.sleep(0.1)  # the relay's receive buffer holds a few hundred
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.sendto(b"x", ("::1", int(sys.argv[1])))
        socks.append(s)
    print("sent", flush=True)
    time.sleep(float(sys.argv[3]))
    """
)


def _low(pid: int) -> int:
    return sum(int(f) < FD_SETSIZE for f in os.listdir(f"/proc/{pid}/fd"))


def _published(bed: Testbed, tmp_path, port: str) -> tuple[AgentProcess, int, str]:
    """An agent in the bed's host, network ``front`` and a sandbox on it publishing ``port``:
    (the agent, its pid, the sandbox's id)."""
    agent = AgentProcess(bed, bed.hosts[0], state_dir=str(tmp_path / "h1")).start()
    assert agent.proc is not None
    r = agent.cli("network", "create", "front", "--subnet", "198.51.100.0/25", "--subnet6", "2001:db8:14::/64")
    assert r.returncode == 0, r.stderr
    a = agent.cli("sandbox", "create").stdout.strip()
    r = agent.cli("connect", "front", a, "-p", port)
    assert r.returncode == 0, r.stderr
    return agent, agent.proc.pid, a


def _proxy_made(agent: AgentProcess) -> None:
    """A proxy's rules: a new nftables context that commits (select(2) on its socket)."""
    assert agent.cli("network", "create", "back", "--subnet", "198.51.100.128/26").returncode == 0
    b = agent.cli("sandbox", "create").stdout.strip()
    assert agent.cli("connect", "back", b, "--alias", "db").returncode == 0
    r = agent.cli("proxy", "create", "dbp", "--from", "front", "--to", "back", "--service", "db:5432/tcp")
    assert agent.proc is not None and agent.proc.poll() is None, (agent.log_tail(),)
    assert r.returncode == 0, r.stderr


def test_relay_flows_leave_low_descriptors_for_nftables(tmp_path) -> None:
    with Testbed(1) as bed:
        agent, pid, _ = _published(bed, tmp_path, "[::1]:9091:90/udp")
        client = bed.spawn(
            bed.hosts[0].ns, [sys.executable, "-c", UDP_FLOWS, "9091", "1024", "60"], stdout=-1, text=True
        )
        assert client.stdout is not None and client.stdout.readline().strip() == "sent"
        # the relay's upstream sockets: one per flow, held for up to 90 s
        assert wait_until(lambda: len(os.listdir(f"/proc/{pid}/fd")) > 1024, 20), len(os.listdir(f"/proc/{pid}/fd"))
        low = _low(pid)
        _proxy_made(agent)
        assert low < 200, low
        client.kill()
        client.wait(timeout=10)
        agent.stop()


# in a process of its own: an abort (or libnftables' exit) must not take pytest with it
FIREWALL = textwrap.dedent(
    """
    import resource, socket, sys
    from libnet.errors import KernelError
    from libnet.kernel.firewall import Firewall
    from libnet.kernel.probe import echo
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    held = [socket.socket() for _ in range(1030)]  # clients' connections: the low numbers all taken
    if sys.argv[2] == "emfile":  # and none left at all
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(held) + 20, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        while True:
            try:
                held.append(socket.socket())
            except OSError:
                break
    # this process runs in the test host (ip netns exec): its own namespace, None
    print("echo", echo(None, "127.0.0.1", 2.0) if sys.argv[2] == "high" else "-", flush=True)
    with Firewall(None, table="fdtest") as fw:
        try:
            fw.add_bridge("br-fdtest")
            print("added", flush=True)
        except KernelError as exc:
            print("refused:", exc, flush=True)
    """
)


@pytest.mark.parametrize("case", ["high", "emfile"])
def test_a_new_nftables_context_without_a_low_descriptor_is_refused(case: str) -> None:
    """libnftables' socket on a number >= 1024: glibc aborted the process in select(2); no
    descriptor at all: libnftables exit()ed it ('Unable to initialize Netlink socket').
    Now the firewall call fails with an error.  The tunnel probe's wait (select.select:
    ValueError above 1023) polls."""
    with Testbed(1) as bed:
        ns = bed.hosts[0].ns
        bed.run(ns, ["ip", "link", "set", "lo", "up"], check=True)
        r = bed.run(ns, [sys.executable, "-c", FIREWALL, ns, case], timeout=60)
        assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-1500:])
        lines = r.stdout.splitlines()
        assert lines[0] == ("echo True" if case == "high" else "echo -"), r.stderr[-1500:]
        assert lines[1].startswith("refused: nftables: no file descriptor"), lines


# a backend in the sandbox holding every connection the relay makes to it
TCP_BACKEND = textwrap.dedent(
    """
    import resource, socket, sys, time
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # the relay may come by either family
    s.bind(("::", 80))
    s.listen(4096)
    s.settimeout(0.5)
    print("listening", flush=True)
    held, deadline = [], time.monotonic() + float(sys.argv[1])
    while time.monotonic() < deadline:
        try:
            held.append(s.accept()[0])
        except OSError:
            pass
    """
)

# clients of the [::1] relay, each connection held open
TCP_CLIENTS = textwrap.dedent(
    """
    import resource, socket, sys, time
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    socks = [socket.create_connection(("::1", int(sys.argv[1])), timeout=10) for _ in range(int(sys.argv[2]))]
    print("connected", flush=True)
    time.sleep(float(sys.argv[3]))
    """
)


def test_relay_connections_leave_low_descriptors_for_nftables(tmp_path) -> None:
    """The relay's accepted TCP clients (asyncio's server accepted them on the lowest free
    numbers): 1,000 held connections to a published [::1] port filled the low descriptors, and
    the next nftables context was refused (an abort before the firewall's check)."""
    with Testbed(1) as bed:
        agent, pid, a = _published(bed, tmp_path, "[::1]:9092:80/tcp")
        netns_path = agent.cli_json("sandbox", "inspect", a)[0]["netns"]
        backend = bed.spawn(netns_path, [sys.executable, "-c", TCP_BACKEND, "120"], stdout=-1, text=True)
        assert backend.stdout is not None and backend.stdout.readline().strip() == "listening"
        client = bed.spawn(
            bed.hosts[0].ns, [sys.executable, "-c", TCP_CLIENTS, "9092", "1000", "90"], stdout=-1, text=True
        )
        assert client.stdout is not None and client.stdout.readline().strip() == "connected"
        # two sockets per relayed connection in the agent: the client's and the one to the container
        assert wait_until(lambda: len(os.listdir(f"/proc/{pid}/fd")) > 2000, 30), len(os.listdir(f"/proc/{pid}/fd"))
        counts = [-1]

        def settled() -> bool:  # every connection relayed: no socket between its making and its lift
            counts.append(len(os.listdir(f"/proc/{pid}/fd")))
            return counts[-1] == counts[-2]

        assert wait_until(settled, 30, interval=1.0), counts
        low = _low(pid)
        _proxy_made(agent)
        assert low < 200, low
        for proc in (client, backend):
            proc.kill()
            proc.wait(timeout=10)
        agent.stop()
