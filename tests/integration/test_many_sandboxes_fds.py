"""An agent with ~250 joined sandboxes restarts: their DNS listeners (four sockets each)
above FD_SETSIZE, the low descriptors left free for libnftables, which waits on its socket
with select(2) -- glibc aborted the whole process once that socket's number was >= 1024
(``*** bit out of range 0 - FD_SETSIZE on fd_set ***``; found by a breaker, issue 22's
scale).  Each side runs in a process of its own: an abort must not take pytest with it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from libnet.testing.hosts import Testbed

pytestmark = pytest.mark.root

SANDBOXES = 253  # one address each in a /24

SCRIPT = r"""
import asyncio, json, os, sys
from libnet import Config, Controller
from libnet.kernel.fds import FD_SETSIZE, raise_nofile_limit
from libnet.testing.pools import ipam_config

args = json.loads(sys.argv[1])
raise_nofile_limit()  # as libnet-agent does at start


def fds():
    numbers = [int(f) for f in os.listdir("/proc/self/fd")]
    return {"all": len(numbers), "low": sum(n < FD_SETSIZE for n in numbers)}


async def main():
    cfg = Config(store=f"sqlite://{args['state']}/h.db", state_dir=args["state"], host_netns=args["ns"],
                 node_name="h1", sandbox_prefix=args["prefix"], ipam=ipam_config())
    ctl = await Controller(cfg).start()
    if args["phase"] == "fill":
        await ctl.create_network("front", ipv4_subnet="198.51.100.0/24", ipv6_subnet="2001:db8:1::/64")
        for _ in range(args["n"]):
            sb = await ctl.create_sandbox()
            await ctl.connect("front", sb.id)
    else:  # a restart: the listeners opened again, then reconcile's nftables calls (the first)
        await ctl.reconcile()
    print(json.dumps(fds()), flush=True)
    os._exit(0)  # as a kill -9: nothing closed, the kernel as it is


asyncio.run(main())
"""


def _run(bed: Testbed, tmp: str, phase: str) -> dict[str, int]:
    args = {"phase": phase, "state": tmp, "ns": bed.hosts[0].ns, "prefix": bed.prefix + "sb-", "n": SANDBOXES}
    r = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(args)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (phase, r.returncode, r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_restart_with_hundreds_of_dns_listeners_keeps_low_descriptors_free(tmp_path) -> None:
    with Testbed(1) as bed:
        filled = _run(bed, str(tmp_path), "fill")
        assert filled["all"] > 1024  # the case: more descriptors than an fd_set holds
        assert filled["low"] < 100, filled
        restarted = _run(bed, str(tmp_path), "restart")
        assert restarted["all"] > 1024 and restarted["low"] < 100, restarted
