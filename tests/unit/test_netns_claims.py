"""A container's namespace is held by one sandbox only, found by the claim on its identity
(issue 22): creating a sandbox listed every sandbox record to find a holder (O(n)), and
between that check and the write another creation could take the same namespace."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ipam.ipam import StoreIpam
from libnet import Config, Controller
from libnet.errors import Conflict
from libnet.model import Sandbox
from libnet.repository import P
from libnet.store.memory import MemoryStore
from libnet.store.sqlite import SQLiteStore
from libnet.testing.fakes import FakeDriver, FakeNamespaces

PATH = "/run/netns/runtime-made"


class YieldingMemory(MemoryStore):
    """A memory store whose every call lets other tasks run first, as a store that waits
    for its server or for another process's lock does (etcd, Consul, a busy SQLite)."""

    def __init__(self) -> None:
        super().__init__()
        self.lists: list[str] = []

    async def get(self, key: str) -> Any:
        await asyncio.sleep(0)
        return await super().get(key)

    async def list(self, prefix: str) -> Any:
        self.lists.append(prefix)
        await asyncio.sleep(0)
        return await super().list(prefix)

    async def atomic_put(self, *args: Any, **kw: Any) -> Any:
        await asyncio.sleep(0)
        return await super().atomic_put(*args, **kw)


class YieldingSQLite(SQLiteStore):
    async def _run(self, fn: Any, *args: Any) -> Any:
        await asyncio.sleep(0)
        return await super()._run(fn, *args)


@pytest.fixture(params=["memory", "sqlite"])
async def ctl(request, tmp_path):
    store: Any = YieldingMemory() if request.param == "memory" else YieldingSQLite(str(tmp_path / "store.db"))
    namespaces = FakeNamespaces()
    namespaces.paths.add(PATH)  # made by a runtime
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


async def test_two_sandboxes_cannot_hold_one_namespace(ctl: Controller) -> None:
    first = await ctl.create_sandbox("first", netns=PATH, files=False)
    with pytest.raises(Conflict, match="namespace of sandbox first") as exc:
        await ctl.create_sandbox("second", netns=PATH, files=False)
    assert exc.value.ids["holder"] == "first"
    assert [s.id for s in await ctl.sandboxes()] == ["first"]
    key = f"{P}/netns/{first.netns_id}"
    assert (await ctl.repo.local.get(key)).value == b"first"
    await ctl.delete_sandbox("first")
    assert not await ctl.repo.local.exists(key)  # the claim goes with its holder
    assert (await ctl.create_sandbox("second", netns=PATH, files=False)).netns_id == first.netns_id


async def test_concurrent_creations_claim_one_namespace_once(ctl: Controller) -> None:
    results = await asyncio.gather(
        *(ctl.create_sandbox(f"c{i}", netns=PATH, files=False) for i in range(8)), return_exceptions=True
    )
    made = [r for r in results if isinstance(r, Sandbox)]
    refused = [r for r in results if isinstance(r, Conflict)]
    assert len(made) == 1 and len(refused) == 7, results
    assert [s.id for s in await ctl.sandboxes()] == [made[0].id]
    assert all(r.ids.get("holder") in (made[0].id, "") for r in refused)


async def test_concurrent_owned_sandboxes_each_get_their_own_claim(ctl: Controller) -> None:
    made = await asyncio.gather(*(ctl.create_sandbox(f"o{i}") for i in range(4)))
    assert len({s.netns_id for s in made}) == 4 and all(s.netns_id for s in made)
    with pytest.raises(Conflict, match="namespace of sandbox o2"):  # a libnet-made namespace is held too
        await ctl.create_sandbox("x", netns=made[2].netns)


async def test_creation_reads_the_claim_not_every_sandbox(ctl: Controller) -> None:
    store = ctl.repo.local
    if not isinstance(store, YieldingMemory):
        pytest.skip("counts the memory store's listings")
    for i in range(20):
        await ctl.create_sandbox(f"s{i}")
    await ctl.create_sandbox("warm", netns=PATH, files=False)  # the one-time index of older records
    await ctl.delete_sandbox("warm")
    store.lists.clear()
    await ctl.create_sandbox("again", netns=PATH, files=False)
    assert not [p for p in store.lists if p.startswith(f"{P}/sandboxes")], store.lists


async def test_a_record_without_a_claim_still_holds_its_namespace(ctl: Controller) -> None:
    # written by an older version (or adopted): no netns_id, no claim
    await ctl.repo.add_sandbox(Sandbox("old", PATH, False))
    with pytest.raises(Conflict, match="namespace of sandbox old"):
        await ctl.create_sandbox("new", netns=PATH, files=False)
    assert await ctl.repo.local.exists(f"{P}/netns/{ctl._namespaces.identity(PATH)}")  # claimed for it now


async def test_a_stale_claim_is_taken_over(ctl: Controller) -> None:
    # a claim whose holder's path shows another namespace now (its namespace is gone and
    # the identity was given to a new one): it holds nothing
    netns_id = ctl._namespaces.identity(PATH)
    await ctl.repo.add_sandbox(Sandbox("gone", "/run/netns/elsewhere", False, netns_id=netns_id))
    sb = await ctl.create_sandbox("new", netns=PATH, files=False)
    assert (await ctl.repo.local.get(f"{P}/netns/{netns_id}")).value == b"new"
    await ctl.delete_sandbox("gone")  # the claim it no longer holds stays with the new holder
    assert (await ctl.repo.local.get(f"{P}/netns/{netns_id}")).value == b"new"
    await ctl.delete_sandbox(sb.id)
    assert not await ctl.repo.local.exists(f"{P}/netns/{netns_id}")


async def test_a_sandbox_id_in_use_is_refused_and_claims_nothing(ctl: Controller) -> None:
    await ctl.create_sandbox("dup")
    with pytest.raises(Conflict):
        await ctl.repo.add_sandbox(Sandbox("dup", PATH, False, netns_id=ctl._namespaces.identity(PATH)))
    assert not await ctl.repo.local.exists(f"{P}/netns/{ctl._namespaces.identity(PATH)}")
    await ctl.create_sandbox("other", netns=PATH, files=False)
