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


def test_relay_flows_leave_low_descriptors_for_nftables(tmp_path) -> None:
    with Testbed(1) as bed:
        host = bed.hosts[0]
        agent = AgentProcess(bed, host, state_dir=str(tmp_path / "h1")).start()
        assert agent.proc is not None
        pid = agent.proc.pid
        r = agent.cli("network", "create", "front", "--subnet", "198.51.100.0/25", "--subnet6", "2001:db8:14::/64")
        assert r.returncode == 0, r.stderr
        a = agent.cli("sandbox", "create").stdout.strip()
        r = agent.cli("connect", "front", a, "-p", "[::1]:9091:90/udp")
        assert r.returncode == 0, r.stderr
        client = bed.spawn(host.ns, [sys.executable, "-c", UDP_FLOWS, "9091", "1024", "60"], stdout=-1, text=True)
        assert client.stdout is not None and client.stdout.readline().strip() == "sent"
        # the relay's upstream sockets: one per flow, held for up to 90 s
        assert wait_until(lambda: len(os.listdir(f"/proc/{pid}/fd")) > 1024, 20), len(os.listdir(f"/proc/{pid}/fd"))
        low = _low(pid)
        for name, v4, v6 in (("back", "198.51.100.128/26", "2001:db8:15::/64"),):
            assert agent.cli("network", "create", name, "--subnet", v4, "--subnet6", v6).returncode == 0
        b = agent.cli("sandbox", "create").stdout.strip()
        assert agent.cli("connect", "back", b, "--alias", "db").returncode == 0
        # a proxy's rules: a new nftables context that commits (select(2) on its socket)
        r = agent.cli("proxy", "create", "dbp", "--from", "front", "--to", "back", "--service", "db:5432/tcp")
        assert agent.proc.poll() is None, (agent.proc.returncode, agent.log_tail())
        assert r.returncode == 0, r.stderr
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
