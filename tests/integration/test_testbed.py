"""Test hosts: reachability over the underlay and complete teardown."""

from __future__ import annotations

import os
import subprocess

import pytest

from libnet.kernel import netns
from libnet.testing.hosts import Testbed, remove_stale

pytestmark = pytest.mark.root


def _root_links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout


def test_hosts_reach_each_other_and_everything_is_removed() -> None:
    links_before = _root_links()
    with Testbed(3) as bed:
        h1, h2, h3 = bed.hosts
        assert (h1.ipv4, h3.ipv6) == ("203.0.113.11", "2001:db8:ffff::13")
        assert bed.ping(h1.ns, h3.ipv4) and bed.ping(h3.ns, h2.ipv6)
        proc = bed.spawn(h2.ns, ["sleep", "60"])
        prefix = bed.prefix
        assert len(netns.list_names(prefix)) == 4  # switch + 3 hosts
    assert proc.poll() is not None, "spawned process must be killed"
    assert netns.list_names(prefix) == []
    assert _root_links() == links_before, "nothing may be added to the root namespace"


def test_teardown_also_on_failure() -> None:
    prefix = None
    with pytest.raises(RuntimeError), Testbed(1) as bed:
        prefix = bed.prefix
        raise RuntimeError("test failed midway")
    assert netns.list_names(prefix) == []


def test_remove_stale_deletes_namespaces_of_dead_runs() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"lnt-{dead.pid}-beef-h1"
    if not os.path.exists(f"/proc/{dead.pid}"):
        netns.create(name)
        assert name in remove_stale()
        assert not netns.exists(name)
