"""Issue 22: deleting an endpoint (a disconnect's last step) releases its addresses and deletes
its records in one SQLite transaction (it took three: one per address, one for the records),
with the same outcome as one by one: an address another owner holds now is left alone, and an
address that changes hands between its read and the commit makes it go the old way."""

from __future__ import annotations

from typing import Any

import pytest

from ipam.ipam import StoreIpam
from libnet import Config, Controller
from libnet.repository import P
from libnet.store.memory import MemoryStore
from libnet.store.sqlite import SQLiteStore
from libnet.testing.fakes import FakeDriver, FakeNamespaces

ADDRESSES = f"{P}/ipam/local/addresses/"


@pytest.fixture(params=["sqlite", "memory"])
async def ctl(request, tmp_path):
    store: Any = SQLiteStore(str(tmp_path / "store.db")) if request.param == "sqlite" else MemoryStore()
    c = Controller(
        Config(state_dir=str(tmp_path), resolv_conf=str(tmp_path / "resolv.conf")),
        store=store,
        ipam=StoreIpam(store),
        drivers={"bridge": FakeDriver("bridge")},
        namespaces=FakeNamespaces(),
    )
    (tmp_path / "resolv.conf").write_text("nameserver 198.51.100.53\n")
    await c.start()
    await c.create_network("web", ipv4_subnet="198.51.100.0/24", ipv6_subnet="2001:db8:1::/64")
    yield c
    await c.close()
    if isinstance(store, SQLiteStore):
        await store.close()


def _commits(ctl: Controller) -> int:
    return int(getattr(ctl.repo.local, "_writes", 0))


async def _held(ctl: Controller) -> set[str]:
    return {p.key.rsplit("/", 1)[1] for p in await ctl.repo.local.list(ADDRESSES) if not p.value.startswith(b"gateway")}


async def test_an_endpoint_and_its_addresses_go_in_one_commit(ctl: Controller) -> None:
    ep = await ctl.create_endpoint("web", "e1")
    assert len(await _held(ctl)) == 2
    used = sum(len(state.used) for state in ctl._ipam._states.values())
    before = _commits(ctl)
    await ctl.delete_endpoint(ep.id)
    if isinstance(ctl.repo.local, SQLiteStore):
        assert _commits(ctl) - before == 2  # the removing mark, then addresses + records (were 4)
    assert await _held(ctl) == set() and await ctl.endpoints() == []
    assert sum(len(state.used) for state in ctl._ipam._states.values()) == used - 2  # in its memory too


async def test_a_disconnect_leaves_nothing(ctl: Controller) -> None:
    sb = await ctl.create_sandbox("s1")
    for _ in range(3):
        await ctl.connect("web", sb.id)
        await ctl.disconnect("web", sb.id)
    assert await _held(ctl) == set() and await ctl.endpoints() == []
    assert (await ctl.sandbox(sb.id)).endpoints == []


async def test_an_address_held_by_another_owner_is_left_alone(ctl: Controller) -> None:
    ep = await ctl.create_endpoint("web", "e1")
    v4 = ep.ipv4.split("/")[0]
    key = ADDRESSES + "198.51.100.0_24/" + v4
    await ctl.repo.local.put(key, b"someone-else")  # taken over (e.g. by a reconcile elsewhere)
    await ctl.delete_endpoint(ep.id)
    assert (await ctl.repo.local.get(key)).value == b"someone-else"
    assert await _held(ctl) == {v4} and await ctl.endpoints() == []


async def test_an_address_changing_hands_meanwhile_goes_the_old_way(ctl: Controller, monkeypatch) -> None:
    if not isinstance(ctl.repo.local, SQLiteStore):
        pytest.skip("one by one anyway on a store without transactions")
    ep = await ctl.create_endpoint("web", "e1")
    v4 = ep.ipv4.split("/")[0]
    key = ADDRESSES + "198.51.100.0_24/" + v4
    ipam = ctl._ipam
    real = ipam.release_write

    async def racing(pool: str, address: str, owner: str) -> Any:
        planned = await real(pool, address, owner)
        if address == ep.ipv4:  # another writer changes it between the read and the commit
            await ctl.repo.local.put(key, b"someone-else")
        return planned

    monkeypatch.setattr(ipam, "release_write", racing)
    await ctl.delete_endpoint(ep.id)
    assert (await ctl.repo.local.get(key)).value == b"someone-else"
    assert await _held(ctl) == {v4} and await ctl.endpoints() == []
