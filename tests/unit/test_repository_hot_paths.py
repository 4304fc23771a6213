"""The repository on hot paths: an endpoint's index (endpoint id -> network) is read
once, also when the endpoint is deleted behind its back (another process, another
host); the sandboxes' namespaces are listed without building every sandbox."""

from __future__ import annotations

import pytest

from libnet.errors import NoSuchEndpoint
from libnet.model import Endpoint, Network
from libnet.repository import P, Repository
from libnet.store.memory import MemoryStore

NID, EID = "a" * 64, "b" * 64


async def _repo() -> tuple[Repository, MemoryStore, Network, Endpoint]:
    store = MemoryStore()
    repo = Repository(store, store)
    nw = Network(NID, "n1", "bridge", "local")
    ep = Endpoint(EID, "e1", NID, "02:42:c6:33:64:02")
    await repo.add_network(nw)
    await repo.add_endpoint(nw, ep)
    return repo, store, nw, ep


async def test_index_read_once_per_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    repo, store, _, ep = await _repo()
    keys: list[str] = []
    real = store.get

    async def counting(key: str):  # type: ignore[no-untyped-def]
        keys.append(key)
        return await real(key)

    monkeypatch.setattr(store, "get", counting)
    for _ in range(3):
        assert (await repo.endpoint(EID)).name == "e1"
    await repo.update_endpoint(ep, lambda e: setattr(e, "name", "e2"))
    assert (await repo.endpoint(EID)).name == "e2"
    assert keys.count(f"{P}/endpoint-ids/{EID}") == 0  # added through this repository: its place is known
    other = Repository(store, store)  # another process: reads the index once
    for _ in range(3):
        assert (await other.endpoint(EID)).name == "e2"
    assert keys.count(f"{P}/endpoint-ids/{EID}") == 1


async def test_endpoint_deleted_behind_the_repository_is_not_found() -> None:
    repo, store, nw, ep = await _repo()
    await repo.endpoint(EID)  # its place is remembered
    other = Repository(store, store)  # another process on the same store
    await other.delete_endpoint(nw, await other.endpoint(EID))
    with pytest.raises(NoSuchEndpoint):
        await repo.endpoint(EID)
    with pytest.raises(NoSuchEndpoint):
        await repo.update_endpoint(ep, lambda e: setattr(e, "name", "x"))


async def test_record_gone_but_index_left_still_says_vanished() -> None:
    repo, store, _, _ = await _repo()
    await repo.endpoint(EID)
    await store.delete(f"{P}/endpoints/{NID}/{EID}")  # a crash between the two deletes
    with pytest.raises(NoSuchEndpoint):
        await repo.endpoint(EID)
