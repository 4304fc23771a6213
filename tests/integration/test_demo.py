"""``make demo`` runs, passes its checks, cleans up, and can run twice."""

from __future__ import annotations

import subprocess
import sys

import pytest

from libnet.kernel import netns

pytestmark = pytest.mark.root


def test_demo_twice_leaves_nothing() -> None:
    before = netns.list_names()
    for _ in range(2):
        r = subprocess.run([sys.executable, "-m", "libnet.demo"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "all checks passed" in r.stdout
        assert "blocked" in r.stdout and "✔" in r.stdout
    assert netns.list_names() == before
