"""Every real and fake implementation satisfies its contract (issue 17).

``isinstance`` against the runtime-checkable Protocol says the members are
there; the signature comparison says each method takes what the contract
says: the same parameters (names, kinds, defaults where the contract has
one; an implementation may only add optional ones) and is async where the
contract's is.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from ipam.api import Ipam
from ipam.ipam import StoreIpam
from libnet.cluster.fake import FakeCluster
from libnet.cluster.membership import Membership
from libnet.cluster.serf import SerfClient
from libnet.cluster.serf_membership import SerfMembership
from libnet.driverapi import ClusterAware, Driver, DriverContext, RemotePeers
from libnet.drivers.registry import Drivers, builtin_factories
from libnet.kernel_namespaces import KernelNamespaces
from libnet.namespaces import Namespaces
from libnet.store.base import Store
from libnet.store.memory import MemoryStore
from libnet.store.mirror import MirroredStore
from libnet.store.sqlite import SQLiteStore
from libnet.testing.fakes import FakeDriver, FakeNamespaces


def _methods(protocol: type) -> list[str]:
    """The contract's methods (data members are checked by isinstance only)."""
    return sorted(
        name
        for name in dir(protocol)
        if not name.startswith("_") and inspect.isfunction(inspect.getattr_static(protocol, name))
    )


def _kind(fn: Any) -> str:
    if inspect.iscoroutinefunction(fn):
        return "async"
    return "sync"  # plain, or an (async) generator: called without await


def check(impl: object, protocol: type) -> None:
    assert isinstance(impl, protocol), f"{type(impl).__name__} is not a {protocol.__name__}"
    for name in _methods(protocol):
        want_fn = getattr(protocol, name)
        got_fn = getattr(type(impl), name)
        where = f"{type(impl).__name__}.{name} vs {protocol.__name__}.{name}"
        if not (inspect.isasyncgenfunction(got_fn) and not inspect.iscoroutinefunction(want_fn)):
            assert _kind(got_fn) == _kind(want_fn), f"{where}: async-ness differs"
        want = list(inspect.signature(want_fn).parameters.values())
        got = list(inspect.signature(got_fn).parameters.values())
        assert [(p.name, p.kind) for p in got[: len(want)]] == [(p.name, p.kind) for p in want], (
            f"{where}: parameters {[p.name for p in got]} != {[p.name for p in want]}"
        )
        for w, g in zip(want, got, strict=False):
            if w.default is not inspect.Parameter.empty:
                assert g.default == w.default, f"{where}: default of {w.name} differs"
        for extra in got[len(want) :]:
            assert extra.default is not inspect.Parameter.empty or extra.kind in (
                inspect.Parameter.VAR_POSITIONAL,
                inspect.Parameter.VAR_KEYWORD,
            ), f"{where}: extra parameter {extra.name} has no default"


def _context(tmp_path: Any) -> DriverContext:
    return DriverContext(
        host_ns=None,
        default_mtu=None,
        instance="0123456789ab",
        state_dir=str(tmp_path),
        node="n1",
        vtep="203.0.113.1",
        overlay_prefix="lno-test-",
        anti_entropy_interval=30.0,
        cluster_store=MemoryStore(),
    )


@pytest.mark.parametrize("name", sorted(builtin_factories()))
def test_builtin_drivers(name: str, tmp_path: Any) -> None:
    drv = builtin_factories()[name](_context(tmp_path))
    check(drv, Driver)
    if name == "overlay":
        check(drv, RemotePeers)
        check(drv, ClusterAware)
    else:
        assert not isinstance(drv, RemotePeers | ClusterAware)


def test_the_registry_sorts_out_optional_capabilities(tmp_path: Any) -> None:
    ctx = _context(tmp_path)
    drivers = Drivers({name: make(ctx) for name, make in builtin_factories().items()})
    assert [d.name for d in drivers.cluster_aware()] == ["overlay"]  # type: ignore[attr-defined]
    assert [d.name for d in drivers.remote_peers()] == ["overlay"]  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="does not implement"):
        Drivers({"broken": object()})  # type: ignore[dict-item]


def test_fake_driver() -> None:
    check(FakeDriver("bridge"), Driver)


def test_namespaces(tmp_path: Any) -> None:
    check(KernelNamespaces(str(tmp_path), "0123456789ab"), Namespaces)
    check(FakeNamespaces(), Namespaces)


def test_ipam() -> None:
    check(StoreIpam(MemoryStore()), Ipam)


def test_stores(tmp_path: Any) -> None:
    check(MemoryStore(), Store)
    check(SQLiteStore(str(tmp_path / "store.db")), Store)
    check(MirroredStore(MemoryStore(), str(tmp_path / "copy.json")), Store)


def test_optional_store_backends(tmp_path: Any) -> None:
    etcd = pytest.importorskip("libnet.store.etcd")
    check(etcd.EtcdStore([("127.0.0.1", 2379)]), Store)
    consul = pytest.importorskip("libnet.store.consul")
    check(consul.ConsulStore("127.0.0.1", 8500), Store)


def test_membership() -> None:
    check(SerfMembership(SerfClient()), Membership)
    check(FakeCluster().member("a", "203.0.113.1"), Membership)
