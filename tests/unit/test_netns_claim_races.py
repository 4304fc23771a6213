"""A stale claim's holder removed while another sandbox takes the claim over: the takeover's
checked write finds the claim gone (KeyNotFound) or replaced, and the namespace is free."""

from __future__ import annotations

from typing import Any

import pytest

from ipam.ipam import StoreIpam
from libnet import Config, Controller
from libnet.model import Sandbox
from libnet.repository import P
from libnet.store.memory import MemoryStore
from libnet.store.sqlite import SQLiteStore
from libnet.testing.fakes import FakeDriver, FakeNamespaces

PATH = "/run/netns/runtime-made"


@pytest.fixture(params=["memory", "sqlite"])
async def ctl(request, tmp_path):
    store: Any = MemoryStore() if request.param == "memory" else SQLiteStore(str(tmp_path / "store.db"))
    namespaces = FakeNamespaces()
    namespaces.paths.add(PATH)
    c = Controller(
        Config(state_dir=str(tmp_path), resolv_conf=str(tmp_path / "resolv.conf")),
        store=store,
        ipam=StoreIpam(store),
        drivers={"bridge": FakeDriver("bridge"), "null": FakeDriver("null")},
        namespaces=namespaces,
    )
    (tmp_path / "resolv.conf").write_text("nameserver 198.51.100.53\n")
    await c.start()
    yield c
    await c.close()
    if isinstance(store, SQLiteStore):
        await store.close()


async def test_stale_holder_removed_during_takeover(ctl: Controller) -> None:
    netns_id = ctl._namespaces.identity(PATH)
    assert netns_id
    await ctl.repo.add_sandbox(Sandbox("gone", "/run/netns/elsewhere", False, netns_id=netns_id))
    real = ctl.repo.netns_claim
    calls = 0

    async def claim_then_holder_removed(nid: str) -> Any:
        nonlocal calls
        calls += 1
        got = await real(nid)
        if calls == 1:  # the stale holder goes between the read and the takeover
            await ctl.delete_sandbox("gone")
        return got

    ctl.repo.netns_claim = claim_then_holder_removed  # type: ignore[method-assign]
    sb = await ctl.create_sandbox("new", netns=PATH, files=False)
    assert (await ctl.repo.local.get(f"{P}/netns/{netns_id}")).value == b"new"
    assert [s.id for s in await ctl.sandboxes()] == [sb.id]


async def test_store_without_batches_claim_before_record_is_not_stale(tmp_path) -> None:
    """On a store without transactions (etcd, Consul, memory) the claim is written before the
    record: a creation that reads the claim in between sees no holder record, and must not take
    the claim over as stale (two sandboxes would hold one namespace)."""
    from libnet.errors import Conflict

    class Interleaved(MemoryStore):
        hook: Any = None

        async def atomic_put(self, key: str, *args: Any, **kw: Any) -> Any:
            if key == f"{P}/sandboxes/a" and self.hook is not None:
                hook, self.hook = self.hook, None
                await hook()
            return await super().atomic_put(key, *args, **kw)

    store = Interleaved()
    namespaces = FakeNamespaces()
    namespaces.paths.add(PATH)
    c = Controller(
        Config(state_dir=str(tmp_path), resolv_conf=str(tmp_path / "resolv.conf")),
        store=store,
        ipam=StoreIpam(store),
        drivers={"bridge": FakeDriver("bridge"), "null": FakeDriver("null")},
        namespaces=namespaces,
    )
    (tmp_path / "resolv.conf").write_text("nameserver 198.51.100.53\n")
    await c.start()
    try:
        other: list[Any] = []

        async def second() -> None:
            try:
                other.append(await c.create_sandbox("b", netns=PATH, files=False))
            except Conflict as exc:
                other.append(exc)

        store.hook = second
        results: list[Any] = []
        try:
            results.append(await c.create_sandbox("a", netns=PATH, files=False))
        except Conflict as exc:
            results.append(exc)
        made = [r for r in results + other if isinstance(r, Sandbox)]
        assert len(made) == 1, results + other
        assert [s.id for s in await c.sandboxes()] == [made[0].id]
    finally:
        await c.close()
