"""Namespace helpers that need no root."""

from __future__ import annotations

import threading

import pytest

from libnet.errors import BadRequest, NoSuchNamespace
from libnet.kernel import netlink, netns


def test_path_of() -> None:
    assert netns.path_of("h1") == "/run/netns/h1"
    assert netns.path_of("/proc/1/ns/net") == "/proc/1/ns/net"
    for bad in ("", "a/b", "..", "."):
        with pytest.raises(BadRequest):
            netns.path_of(bad)


def test_namespace_thread_runs_calls_in_order_on_one_thread() -> None:
    t = netns.NamespaceThread(None)
    try:
        seen = [t.call(threading.get_ident) for _ in range(3)]
        assert len(set(seen)) == 1 and seen[0] != threading.get_ident()
        assert t.call(lambda: t.call(lambda: 42)) == 42  # re-entrant
        with pytest.raises(ZeroDivisionError):
            t.call(lambda: 1 / 0)
    finally:
        t.close()
    with pytest.raises(RuntimeError):
        t.submit(lambda: None)


def test_namespace_thread_refuses_a_missing_namespace() -> None:
    with pytest.raises(NoSuchNamespace):
        netns.NamespaceThread("libnet-test-no-such-namespace")


def test_route_and_name_validation() -> None:
    assert netlink._route_spec("default", "2001:db8::1", None)["dst"] == "::/0"
    assert netlink._route_spec("default", None, None)["dst"] == "0.0.0.0/0"
    with pytest.raises(BadRequest):
        netlink._route_spec("198.51.100.0/24", "2001:db8::1", None)
    with pytest.raises(BadRequest):
        netlink._route_spec("198.51.100.1/24", None, None)
    for bad in ("", "x" * 16, "a b", "a/b"):
        with pytest.raises(BadRequest):
            netlink._check_ifname(bad)
