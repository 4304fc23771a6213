"""The Docker plugin's hand-over of a joined interface (agent.docker_plugin.kernel_handover), in a test host.

Breaker (a rare CI failure of test_docker.py::test_concurrent_runs: ``docker run`` failed with "failed to get
link by name lnd...: Link not found"): the hand-over named dockerd's namespace ``/proc/<pid>/ns/net``, opened
on a worker thread, which is the namespace the agent's main thread is in at that moment -- and the main
thread, the event loop's, enters sandboxes for a moment to make sockets there (netns.sockets_in: the rtnetlink
socket of another join, its DNS listeners).  Then the interface landed in that other sandbox."""

from __future__ import annotations

import subprocess
import sys

import pytest

from libnet.kernel.netlink import Netlink
from libnet.testing.hosts import Testbed

pytestmark = pytest.mark.root

# Runs as the agent would, inside the test host: the hand-over's move waits until the event loop's thread has
# entered another sandbox (as netns.sockets_in does for a moment), which stays there until the move is done.
CHILD = r"""
import asyncio, ctypes, os, sys, threading
from agent.docker_plugin import kernel_handover
from libnet.kernel import netlink

staging, other = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
moving, inside, moved = threading.Event(), threading.Event(), threading.Event()
real = netlink.Netlink.move_to_ns

def move_to_ns(self, link, ns, new_name=None):
    moving.set()
    inside.wait(10)
    try:
        return real(self, link, ns, new_name)
    finally:
        moved.set()

netlink.Netlink.move_to_ns = move_to_ns

async def main():
    task = asyncio.create_task(kernel_handover(staging, "eth0", "lndtest"))
    assert await asyncio.to_thread(moving.wait, 10)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    away = os.open(other, os.O_RDONLY)
    assert libc.setns(away, 0x40000000) == 0
    inside.set()
    moved.wait(10)
    assert libc.setns(home, 0x40000000) == 0
    await task

asyncio.run(main())
"""


def test_handover_lands_in_the_agents_namespace_while_the_event_loop_is_in_a_sandbox(single: Testbed) -> None:
    host = single.hosts[0].ns
    staging, other = single.namespace("stg"), single.namespace("oth")
    with Netlink(staging) as nl:
        nl.add_veth("eth0", "peer0")
    p = single.spawn(host, [sys.executable, "-c", CHILD, f"/run/netns/{staging}", f"/run/netns/{other}"],
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    out, _ = p.communicate(timeout=60)
    with Netlink(other) as nl:
        assert not nl.has_link("lndtest"), "handed over into another sandbox's namespace"
    with Netlink(host) as nl:
        assert nl.has_link("lndtest"), out
        assert not nl.link("lndtest").up
    assert p.returncode == 0, out
