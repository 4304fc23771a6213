"""Through a real agent: a sandbox whose embedded DNS server cannot be served (here its address
127.0.0.11:53 is taken inside the sandbox by a process of the container; running out of open
files fails the same step with EMFILE) keeps a resolver: its resolv.conf names the host's upstream
servers, not 127.0.0.11 where libnet does not listen, and once the address is free the next
reconcile serves it and points resolv.conf at it again."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time

import pytest

from agent.cli import Client
from libnet.testing.agents import AgentProcess
from libnet.testing.hosts import Testbed

pytestmark = pytest.mark.root

SQUAT = (
    "import socket, sys, time\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind(('127.0.0.11', 53))\n"
    "print('bound', flush=True)\n"
    "time.sleep(float(sys.argv[1]))\n"
)


def _nameservers(path: str) -> list[str]:
    with open(path) as f:
        return [line.split()[1] for line in f if line.startswith("nameserver ")]


def _host_upstreams() -> list[str]:
    """The host's non-loopback resolvers, as a sandbox without the embedded DNS gets them."""
    out = []
    for ns in _nameservers("/etc/resolv.conf"):
        try:
            if not ipaddress.ip_address(ns.split("%")[0]).is_loopback:
                out.append(ns)
        except ValueError:
            continue
    return out


def _listening(bed: Testbed, ns: str) -> bool:
    r = bed.run(ns, ["ss", "-Hlun", "src", "127.0.0.11", "sport", "= :53"])
    return bool(r.stdout.strip())


def test_a_sandbox_whose_dns_cannot_be_served_names_the_upstream_servers(tmp_path) -> None:
    with Testbed(1) as bed:
        agent = AgentProcess(bed, bed.hosts[0], state_dir=str(tmp_path / "h1")).start()
        api = Client(agent.socket, timeout=30)
        squatter = None
        try:
            api.request("POST", "/v1/networks", {"name": "front", "ipv4_subnet": "198.51.100.0/26"})
            sid = api.request("POST", "/v1/sandboxes", {"hostname": "a"})["id"]
            ns = os.path.basename(api.request("GET", f"/v1/sandboxes/{sid}")["netns"])
            resolv = os.path.join(agent.dir, "sandboxes", sid, "resolv.conf")
            bed.run(ns, ["ip", "link", "set", "lo", "up"], check=True)
            squatter = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-c", SQUAT, "120"], stdout=subprocess.PIPE, text=True
            )
            assert squatter.stdout is not None and squatter.stdout.readline().strip() == "bound"
            api.request("POST", "/v1/networks/front/connect", {"sandbox": sid})  # the network works
            with open(os.path.join(agent.dir, "agent.log")) as f:
                assert f"sandbox {sid[:12]}: embedded DNS not served" in f.read()
            assert _nameservers(resolv) == _host_upstreams() and "127.0.0.11" not in _nameservers(resolv)
            report = api.request("POST", "/v1/reconcile")  # still taken: nothing changes
            assert not any("DNS" in line for line in report["repaired"]), report
            squatter.kill()
            squatter.wait(10)
            squatter = None
            deadline = time.monotonic() + 10
            while _listening(bed, ns) and time.monotonic() < deadline:
                time.sleep(0.1)
            report = api.request("POST", "/v1/reconcile")
            assert f"sandbox {sid[:12]}: embedded DNS served again (resolv.conf points at it)" in report["repaired"]
            assert _nameservers(resolv) == ["127.0.0.11"] and _listening(bed, ns)
            assert not any("DNS" in line for line in api.request("POST", "/v1/reconcile")["repaired"])
        finally:
            if squatter is not None:
                squatter.kill()
                squatter.wait(10)
            agent.stop()
