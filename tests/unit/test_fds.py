"""Long-lived sockets above FD_SETSIZE (libnet.kernel.fds): the low numbers stay free for
libraries that wait with select(2) (libnftables; glibc aborts on a higher one)."""

from __future__ import annotations

import resource
import socket

import pytest

from libnet.kernel import fds


@pytest.fixture
def roomy():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= fds.FD_SETSIZE + 16:
        pytest.skip(f"hard open files limit {hard}: no room above FD_SETSIZE")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 16, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_lifted_socket_is_the_same_socket_above_fd_setsize(roomy) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    low = sock.fileno()
    assert low < fds.FD_SETSIZE
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    lifted = fds.lift(sock)
    try:
        assert lifted.fileno() >= fds.FD_SETSIZE
        assert sock.fileno() == -1  # the low number closed
        assert lifted.getblocking() is False and lifted.type == socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            assert sender.fileno() <= low  # the low number is free again
            sender.sendto(b"x", lifted.getsockname())
            lifted.settimeout(2)
            assert lifted.recv(10) == b"x"
        assert fds.lift(lifted) is lifted  # high already: unchanged
    finally:
        lifted.close()


def test_no_lift_without_room_above(roomy) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (fds.FD_SETSIZE, hard))
    with socket.socket() as sock:
        assert fds.lift(sock) is sock and sock.fileno() < fds.FD_SETSIZE


def test_the_soft_limit_is_raised_to_the_hard_one(roomy) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    assert fds.raise_nofile_limit() == want
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == want


def test_a_low_hard_limit_is_said_at_start() -> None:
    """In a process of its own: its hard limit is lowered for good."""
    import subprocess
    import sys

    code = (
        "import logging, resource; logging.basicConfig();"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024));"
        "from libnet.kernel.fds import raise_nofile_limit; print(raise_nofile_limit())"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "1024", r.stderr
    assert "open files limit 1024: room for about 192 sandboxes" in r.stderr
