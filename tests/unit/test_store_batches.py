"""Writes that belong together in one store transaction (issue 22): ``write_all`` and
SQLite's ``atomic_batch`` (all or none), and the repository's joins and leaves, endpoint
creations and deletions, which each cost the SQLite store one commit instead of two or three."""

from __future__ import annotations

import asyncio

import pytest

from libnet.errors import KeyExists, KeyModified, KeyNotFound, NoSuchSandbox
from libnet.model import Endpoint, Network, Sandbox
from libnet.repository import P, Repository
from libnet.store.base import Write, write_all
from libnet.store.memory import MemoryStore
from libnet.store.sqlite import SQLiteStore

NID, EID, SID = "a" * 64, "b" * 64, "c" * 64


@pytest.fixture
async def sqlite(tmp_path):
    store = SQLiteStore(str(tmp_path / "store.db"))
    yield store
    await store.close()


async def test_a_batch_is_all_or_nothing(sqlite: SQLiteStore) -> None:
    a = await sqlite.put("t/a", b"1")
    await sqlite.put("t/gone", b"x")
    before = await sqlite.revision()
    with pytest.raises(KeyModified):
        await sqlite.atomic_batch(
            [
                Write("t/b", b"new"),  # unconditional, first: undone with the rest
                Write("t/gone", None),
                Write("t/a", b"2", KVPairAt(a, a.revision - 1), checked=True),  # a stale revision
            ]
        )
    assert await sqlite.revision() == before
    assert not await sqlite.exists("t/b")
    assert (await sqlite.get("t/gone")).value == b"x"
    with pytest.raises(KeyExists):
        await sqlite.atomic_batch([Write("t/c", b"1"), Write("t/a", b"2", None, checked=True)])
    assert not await sqlite.exists("t/c")
    with pytest.raises(KeyNotFound):
        await sqlite.atomic_batch([Write("t/c", b"1"), Write("t/nothing", None, a, checked=True)])
    assert not await sqlite.exists("t/c")


async def test_a_batch_writes_in_order_and_each_write_has_its_revision(sqlite: SQLiteStore) -> None:
    a = await sqlite.put("t/a", b"1")
    events = []

    async def watch() -> None:
        async for ev in sqlite.watch_prefix("t/", start_revision=a.revision):
            events.append((ev.kind, ev.key))
            if len(events) == 3:
                return

    watcher = asyncio.create_task(watch())
    commits = sqlite._writes
    out = await sqlite.atomic_batch(
        [Write("t/a", b"2", a, checked=True), Write("t/absent", None), Write("t/b", b"3"), Write("t/a", None)]
    )
    assert sqlite._writes == commits + 1  # one transaction
    assert out[0] is not None and out[2] is not None and out[1] is None and out[3] is None
    assert out[0].revision < out[2].revision
    assert not await sqlite.exists("t/a") and (await sqlite.get("t/b")).value == b"3"
    await asyncio.wait_for(watcher, 5)
    assert events == [("put", "t/a"), ("put", "t/b"), ("delete", "t/a")]  # a missing key's delete: no event


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_write_all_means_the_same_on_every_store(kind: str, sqlite: SQLiteStore) -> None:
    store = MemoryStore() if kind == "memory" else sqlite
    a = await store.put("t/a", b"1")
    out = await write_all(store, [Write("t/a", b"2", a, checked=True), Write("t/b", b"x"), Write("t/c", None)])
    assert [p.value if p else None for p in out] == [b"2", b"x", None]
    with pytest.raises(KeyModified):
        await write_all(store, [Write("t/a", b"3", a, checked=True)])
    await write_all(store, [Write("t/b", None, out[1], checked=True)])
    assert not await store.exists("t/b")


class KVPairAt:
    """A pair as read at another revision (a stale read)."""

    def __init__(self, pair, revision: int) -> None:  # type: ignore[no-untyped-def]
        self.key, self.value, self.revision = pair.key, pair.value, revision


async def _repo(store) -> tuple[Repository, Network, Endpoint, Sandbox]:  # type: ignore[no-untyped-def]
    repo = Repository(store, store)
    nw = Network(NID, "n1", "bridge", "local")
    ep = Endpoint(EID, "e1", NID, "02:42:c6:33:64:02")
    sb = Sandbox(SID, "/run/netns/x", True)
    await repo.add_network(nw)
    await repo.add_sandbox(sb)
    await repo.add_endpoint(nw, ep)
    return repo, nw, ep, sb


def _joined(e: Endpoint) -> None:
    e.sandbox_id, e.ifname = SID, "eth0"


def _unjoined(e: Endpoint) -> None:
    e.sandbox_id, e.ifname = None, None


async def test_endpoint_writes_are_one_commit_each_on_sqlite(sqlite: SQLiteStore) -> None:
    repo, nw, ep, sb = await _repo(sqlite)
    commits = sqlite._writes
    ep, sb = await repo.update_endpoint_and_sandbox(ep, _joined, sb, lambda s: s.endpoints.append(EID))
    assert sqlite._writes == commits + 1
    assert (await repo.endpoint(EID)).sandbox_id == SID and (await repo.sandbox(SID)).endpoints == [EID]
    assert ep.sandbox_id == SID and sb.endpoints == [EID]
    commits = sqlite._writes
    await repo.delete_endpoint(nw, ep)
    assert sqlite._writes == commits + 1
    assert await sqlite.list(f"{P}/endpoint") == []
    commits = sqlite._writes
    await repo.add_endpoint(nw, Endpoint("d" * 64, "e2", NID, "02:42:c6:33:64:03"))
    assert sqlite._writes == commits + 1
    assert (await repo.endpoint("d" * 64)).name == "e2"


async def test_a_concurrent_write_between_read_and_commit_is_read_again(sqlite: SQLiteStore) -> None:
    repo, _, ep, sb = await _repo(sqlite)
    real_get, raced = sqlite.get, []

    async def racing_get(key: str):  # type: ignore[no-untyped-def]
        pair = await real_get(key)
        if key.endswith(SID) and not raced:  # another writer adds an endpoint to the sandbox meanwhile
            raced.append(key)
            other = Repository(sqlite, sqlite)
            await other.update_sandbox(sb, lambda s: s.endpoints.append("e" * 64))
        return pair

    fresh = Repository(sqlite, sqlite)  # holds no pairs of the two records: reads them
    sqlite.get = racing_get  # type: ignore[method-assign]
    _, sb = await fresh.update_endpoint_and_sandbox(ep, _joined, sb, lambda s: s.endpoints.append(EID))
    assert raced and sb.endpoints == ["e" * 64, EID]
    assert (await repo.sandbox(SID)).endpoints == ["e" * 64, EID]


async def test_records_read_by_the_operation_are_not_read_again_for_the_write(sqlite: SQLiteStore) -> None:
    repo, _, ep, sb = await _repo(sqlite)
    ep, sb = await repo.endpoint(EID), await repo.sandbox(SID)
    real_get, keys = sqlite.get, []

    async def counting(key: str):  # type: ignore[no-untyped-def]
        keys.append(key)
        return await real_get(key)

    sqlite.get = counting  # type: ignore[method-assign]
    ep, sb = await repo.update_endpoint_and_sandbox(ep, _joined, sb, lambda s: s.endpoints.append(EID))
    ep = await repo.update_endpoint(ep, lambda e: setattr(e, "leaving", "me"))
    assert keys == []  # issue 22: each record read once per operation
    assert (await repo.sandbox(SID)).endpoints == [EID] and (await repo.endpoint(EID)).leaving == "me"


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_held_pair_another_writer_replaced_is_read_again(kind: str, sqlite: SQLiteStore) -> None:
    store = MemoryStore() if kind == "memory" else sqlite
    repo, _, ep, sb = await _repo(store)
    ep, sb = await repo.endpoint(EID), await repo.sandbox(SID)  # held by repo
    other = Repository(store, store)  # another process changes both meanwhile
    await other.update_sandbox(sb, lambda s: s.endpoints.append("e" * 64))
    await other.update_endpoint(ep, lambda e: setattr(e, "aliases", ["web"]))
    ep, sb = await repo.update_endpoint_and_sandbox(ep, _joined, sb, lambda s: s.endpoints.append(EID))
    assert sb.endpoints == ["e" * 64, EID] and ep.aliases == ["web"] and ep.sandbox_id == SID
    stored_ep, stored_sb = await other.endpoint(EID), await other.sandbox(SID)
    assert stored_sb.endpoints == ["e" * 64, EID] and stored_ep.aliases == ["web"]
    # a single update from a replaced pair, also one that changes nothing on the held pair
    await other.update_endpoint(ep, lambda e: setattr(e, "leaving", "x"))
    assert (await repo.update_endpoint(ep, lambda e: setattr(e, "gateway", False))).leaving == "x"
    await other.update_endpoint(ep, lambda e: setattr(e, "leaving", ""))
    assert (await repo.update_endpoint(ep, lambda e: setattr(e, "leaving", "x"))).leaving == "x"
    assert (await other.endpoint(EID)).leaving == "x"


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_missing_sandbox_leaves_the_endpoint_as_it_was(kind: str, sqlite: SQLiteStore) -> None:
    store = MemoryStore() if kind == "memory" else sqlite
    repo, _, ep, sb = await _repo(store)
    await repo.delete_sandbox(sb)
    with pytest.raises(KeyNotFound):
        await repo.update_endpoint_and_sandbox(ep, _joined, sb, lambda s: s.endpoints.append(EID), ep_undo=_unjoined)
    assert (await repo.endpoint(EID)).sandbox_id is None
    with pytest.raises(NoSuchSandbox):
        await repo.sandbox(SID)
