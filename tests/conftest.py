"""Shared fixtures: root detection and test hosts (libnet.testbed)."""

from __future__ import annotations

import os
import shutil

import pytest

from libnet.testing import hosts as testbed


def _root_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if not os.path.exists("/proc/self/ns/net"):
        return "this kernel has no network namespaces"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed; run scripts/install-system-deps"
    return None


ROOT_SKIP = _root_reason()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ROOT_SKIP is None:
        return
    for item in items:
        if "root" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=ROOT_SKIP))


def pytest_sessionstart(session: pytest.Session) -> None:
    if ROOT_SKIP is None:
        testbed.remove_stale()  # namespaces of earlier runs that died mid-way


@pytest.fixture
def bed():
    """Two test hosts on one switch, removed afterwards."""
    with testbed.Testbed(2) as b:
        yield b


@pytest.fixture
def single():
    """One host namespace on a switch, for single-namespace kernel tests."""
    with testbed.Testbed(1) as b:
        yield b


@pytest.fixture(scope="session")
def etcd_server():
    """One single-node etcd for the session (random ports, temp data dir)."""
    from libnet.testing.etcd import EtcdServer, find_etcd

    if find_etcd() is None:
        pytest.skip("no etcd binary: run scripts/install-system-deps (Debian etcd-server)")
    with EtcdServer() as server:
        yield server


@pytest.fixture(scope="session")
def etcd_cluster():
    """A three-member etcd cluster on 127.0.0.1 for the session (random ports, temp data dirs)."""
    from libnet.testing.etcd import EtcdCluster, find_etcd

    if find_etcd() is None:
        pytest.skip("no etcd binary: run scripts/install-system-deps (Debian etcd-server)")
    with EtcdCluster([(None, "127.0.0.1")] * 3) as cluster:
        yield cluster
