"""``make demo`` runs, passes its checks, cleans up, and can run twice."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
