"""``make demo`` runs, passes its checks, cleans up, and can run twice."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from libnet.encryption.backend import UserspaceBackend
from libnet.kernel import netns
from libnet.testing.hosts import PREFIX_ROOT

pytestmark = pytest.mark.root


def test_demo_twice_leaves_nothing() -> None:
    """Each run leaves none of its namespaces.  Only the demo's own ones are looked
    at (the test bed's prefix carries the demo's pid): comparing the machine's whole
    list failed whenever anything else ran at the same time (issue 17)."""
    for _ in range(2):
        proc = subprocess.Popen(
            [sys.executable, "-m", "libnet.demo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        assert proc.returncode == 0, out + err
        assert "all checks passed" in out
        assert "blocked" in out and "✔" in out
        assert "$ libnet topology" in out and "programmed via VTEP" in out  # it ends with the topology
        ours = f"{PREFIX_ROOT}{proc.pid}-"
        assert [n for n in netns.list_names() if n.startswith(ours)] == []
        # part 4: the encrypted overlay shows only WireGuard on the wire, and its wireguard-go is gone after
        assert "WireGuard (UDP 51820)" in out and "VXLAN (UDP 4789)" in out
        tunnel = re.search(r"h1's tunnel: (lnw\w+)", out)
        assert tunnel is not None, out
        left = [
            int(p) for p in os.listdir("/proc") if p.isdigit() and UserspaceBackend.is_ours(int(p), tunnel.group(1))
        ]
        assert left == [], f"the demo left its wireguard-go running: {left}"
