"""Issue 22: creating an endpoint (a connect's first step) writes its name, addresses, id index
and record in one SQLite transaction (it took four), and deleting one (a disconnect's last step)
releases its addresses and deletes its records in one (it took three), with the same outcomes as
one by one: refusals leave nothing, an address another owner holds now is left alone, an address
taken behind the allocator's back or changing hands meanwhile makes it go the old way."""

from __future__ import annotations

from typing import Any

import pytest

from libnet import Controller
from libnet.errors import AddressInUse, KernelError, NameInUse
from libnet.repository import P
from libnet.store.sqlite import SQLiteStore
from tests.unit.conftest import fake_bridge_controller

ADDRESSES = f"{P}/ipam/local/addresses/"


@pytest.fixture(params=["sqlite", "memory"])
async def ctl(request, tmp_path):
    async with fake_bridge_controller(request.param, tmp_path) as c:
        await c.create_network("web", ipv4_subnet="198.51.100.0/24", ipv6_subnet="2001:db8:1::/64")
        yield c


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


def _used(ctl: Controller) -> int:
    return sum(len(state.used) for state in ctl._ipam._states.values())


async def test_an_endpoint_is_made_in_one_commit(ctl: Controller) -> None:
    await ctl.create_endpoint("web", "warm")  # the pools' states loaded
    before = _commits(ctl)
    ep = await ctl.create_endpoint("web", "e1")
    if isinstance(ctl.repo.local, SQLiteStore):
        assert _commits(ctl) - before == 1  # were 4: name, IPv4, IPv6, records
    assert (await ctl.endpoint("e1", "web")).id == ep.id and (await ctl.endpoint(ep.id)).ipv4 == ep.ipv4
    assert {ep.ipv4.split("/")[0], ep.ipv6.split("/")[0]} <= await _held(ctl)
    assert ep.mac == "02:42:" + ":".join(f"{int(b):02x}" for b in ep.ipv4.split("/")[0].split("."))


async def test_refusals_leave_nothing(ctl: Controller) -> None:
    first = await ctl.create_endpoint("web", "e1")
    held, used, keys = await _held(ctl), _used(ctl), await ctl.repo.local.list(f"{P}/")
    with pytest.raises(NameInUse) as exc:
        await ctl.create_endpoint("web", "E1")
    assert exc.value.ids["holder"] == first.id
    with pytest.raises(AddressInUse, match="already allocated"):
        await ctl.create_endpoint("web", "e2", ipv4=first.ipv4.split("/")[0])
    ctl.driver("bridge").fail_on = "create_endpoint"
    with pytest.raises(KernelError):
        await ctl.create_endpoint("web", "e3")
    assert await ctl.repo.local.list(f"{P}/") == keys and await _held(ctl) == held and _used(ctl) == used
    second = await ctl.create_endpoint("web", "e2")
    assert second.ipv4 != first.ipv4 and second.ipv6 != first.ipv6


async def test_an_address_taken_behind_the_allocators_back_is_passed_by(ctl: Controller) -> None:
    first = await ctl.create_endpoint("web", "e1")
    n = int(first.ipv4.split("/")[0].rsplit(".", 1)[1])
    taken = f"198.51.100.{n + 1}"
    await ctl.repo.local.put(ADDRESSES + "198.51.100.0_24/" + taken, b"another-process")
    ep = await ctl.create_endpoint("web", "e2")
    assert ctl._ipam.conflicts == 1  # found taken once, then passed by
    assert ep.ipv4.split("/")[0] not in (taken, first.ipv4.split("/")[0])
    assert (await ctl.repo.local.get(ADDRESSES + "198.51.100.0_24/" + taken)).value == b"another-process"
    assert [e.name for e in await ctl.endpoints("web")] == ["e1", "e2"]


async def test_concurrent_creations_get_distinct_addresses(ctl: Controller) -> None:
    import asyncio

    made = await asyncio.gather(*(ctl.create_endpoint("web", f"e{i}") for i in range(12)))
    assert len({e.ipv4 for e in made}) == 12 and len({e.ipv6 for e in made}) == 12
    assert len(await _held(ctl)) == 24


async def test_records_written_here_are_kept_not_decoded_again(ctl: Controller, monkeypatch) -> None:
    """A connect+disconnect decoded 11 documents, 5 of them records it had just written itself:
    those are kept as written (copies), and read back equal to what the store holds."""
    from libnet import model
    from libnet.repository import Repository

    sb = await ctl.create_sandbox("s1")
    await ctl.connect("web", sb.id)  # the pools' states, the network's record: read once
    await ctl.disconnect("web", sb.id)
    decoded: list[str] = []
    real = model.decode

    def counting(raw: bytes, kind: str, **kw: Any) -> Any:
        decoded.append(kind)
        return real(raw, kind, **kw)

    monkeypatch.setattr(model, "decode", counting)
    ep = await ctl.connect("web", sb.id)
    fresh = Repository(ctl.repo.local, ctl.repo.cluster)  # decodes what the store holds
    assert await ctl.repo.endpoint(ep.id) == await fresh.endpoint(ep.id)
    assert await ctl.repo.sandbox(sb.id) == await fresh.sandbox(sb.id)
    await ctl.disconnect("web", sb.id)
    if isinstance(ctl.repo.local, SQLiteStore):
        assert len(decoded) <= 8, decoded  # the fresh repository's 2, and the operations' own


async def test_a_disconnect_unjoins_and_deletes_in_one_commit(ctl: Controller) -> None:
    """The leave recorded the endpoint as unjoined, and the delete right after threw that away
    (issue 22): the sandbox's record, the endpoint's records and its addresses now go in the
    leave's own transaction, after the removing mark (a crash in between is rolled forward)."""
    sb = await ctl.create_sandbox("s1")
    await ctl.connect("web", sb.id)
    await ctl.disconnect("web", sb.id)  # warm
    ep = await ctl.connect("web", sb.id)
    used, before, mark = _used(ctl), _commits(ctl), await ctl.repo.local.revision()
    await ctl.disconnect("web", sb.id)
    store = ctl.repo.local
    if isinstance(store, SQLiteStore):
        assert _commits(ctl) - before == 2  # the removing mark, then everything else (were 3)
        events = [(e.kind, e.key) for e in await store._events_after(mark, 100)]
        assert events[0] == ("put", f"{P}/endpoints/{ep.network_id}/{ep.id}")  # the mark
        assert {("put", f"{P}/sandboxes/{sb.id}"), ("delete", f"{P}/endpoint-ids/{ep.id}")} <= set(events[1:])
        assert ("put", f"{P}/endpoints/{ep.network_id}/{ep.id}") not in events[1:]  # no unjoined record
    assert await _held(ctl) == set() and await ctl.endpoints() == []
    assert (await ctl.sandbox(sb.id)).endpoints == [] and _used(ctl) == used - 2  # in the IPAM's memory too
    again = await ctl.connect("web", sb.id)  # its name free again
    assert again.name == ep.name


async def test_a_disconnect_whose_sandbox_changed_meanwhile_goes_the_usual_way(ctl: Controller, monkeypatch) -> None:
    sb = await ctl.create_sandbox("s1")
    await ctl.connect("web", sb.id)
    other = await ctl.create_endpoint("web", "other")
    real = ctl.repo.unjoin_and_delete_endpoint
    lost: list[bool] = []

    async def racing(*args: Any, **kw: Any) -> Any:
        # another writer changes the sandbox's record between the leave's read and its commit
        pair = await ctl.repo.local.get(f"{P}/sandboxes/{sb.id}")
        await ctl.repo.local.put(pair.key, pair.value)
        stored = await real(*args, **kw)
        lost.append(stored is None)
        return stored

    monkeypatch.setattr(ctl.repo, "unjoin_and_delete_endpoint", racing)
    await ctl.disconnect("web", sb.id)
    if isinstance(ctl.repo.local, SQLiteStore):
        assert lost == [True]  # refused as a whole: nothing of it written
    assert [e.name for e in await ctl.endpoints()] == ["other"]
    assert await _held(ctl) == {other.ipv4.split("/")[0], other.ipv6.split("/")[0]}
    assert (await ctl.sandbox(sb.id)).endpoints == []


async def test_a_disconnect_the_driver_refuses_to_finish_fails_as_before(ctl: Controller, monkeypatch) -> None:
    sb = await ctl.create_sandbox("s1")
    ep = await ctl.connect("web", sb.id)
    driver = ctl.driver("bridge")

    async def refused(*args: Any) -> None:
        raise KernelError("injected failure in delete_endpoint", errno=5)

    monkeypatch.setattr(driver, "delete_endpoint", refused)
    with pytest.raises(KernelError):
        await ctl.disconnect("web", sb.id)
    left = await ctl.endpoint(ep.id)  # left (unjoined), kept for the retry, marked as being removed
    assert left.sandbox_id is None and left.removing == ctl.instance
    assert (await ctl.sandbox(sb.id)).endpoints == []
    monkeypatch.undo()
    await ctl.delete_endpoint(ep.id)
    assert await _held(ctl) == set() and await ctl.endpoints() == []


async def test_a_disconnect_the_driver_refuses_once_is_finished_the_usual_way(ctl: Controller) -> None:
    sb = await ctl.create_sandbox("s1")
    await ctl.connect("web", sb.id)
    ctl.driver("bridge").fail_on = "delete_endpoint"  # once: the usual way's delete goes through
    await ctl.disconnect("web", sb.id)
    assert await _held(ctl) == set() and await ctl.endpoints() == []
    assert (await ctl.sandbox(sb.id)).endpoints == []


async def test_releasing_addresses_it_wrote_reads_none_of_them(ctl: Controller, monkeypatch) -> None:
    """The allocator remembers the revision and owner of each address key its own planned write
    made (issue 22: a disconnect read both back only to delete them, checked, at that revision)."""
    if not isinstance(ctl.repo.local, SQLiteStore):
        pytest.skip("one by one on a store without transactions: no planned writes to remember")
    sb = await ctl.create_sandbox("s1")
    used = _used(ctl)
    await ctl.connect("web", sb.id)
    store = ctl.repo.local
    real = store.get
    read: list[str] = []

    async def get(key: str) -> Any:
        read.append(key)
        return await real(key)

    monkeypatch.setattr(store, "get", get)
    await ctl.disconnect("web", sb.id)
    assert not [k for k in read if k.startswith(ADDRESSES)], read
    assert await _held(ctl) == set() and await ctl.endpoints() == []
    assert _used(ctl) == used and not any(state.written for state in ctl._ipam._states.values())


async def test_a_remembered_address_changed_behind_its_back_is_read_again(ctl: Controller) -> None:
    ep = await ctl.create_endpoint("web", "e1")
    v4 = ep.ipv4.split("/")[0]
    key = ADDRESSES + "198.51.100.0_24/" + v4
    await ctl._ipam._state(next(iter(ctl._ipam._states)), reload=True)  # a reload keeps what it wrote
    held = await ctl.repo.local.get(key)
    await ctl.repo.local.atomic_put(key, held.value, held)  # same owner, another revision (a rewrite)
    await ctl.delete_endpoint(ep.id)  # the checked delete at the remembered revision fails: read, then released
    assert await _held(ctl) == set() and await ctl.endpoints() == []


async def test_two_racing_disconnects_one_succeeds_the_other_is_not_connected(ctl: Controller, monkeypatch) -> None:
    import asyncio

    from libnet.errors import NoSuchEndpoint, NotFound

    driver = ctl.driver("bridge")
    real = driver.leave

    async def slow_leave(*args: Any) -> None:  # the kernel's part takes a while: the other one starts
        await asyncio.sleep(0.01)
        await real(*args)

    monkeypatch.setattr(driver, "leave", slow_leave)
    sb = await ctl.create_sandbox("s1")
    for _ in range(5):
        await ctl.connect("web", sb.id)
        results = await asyncio.gather(
            ctl.disconnect("web", sb.id), ctl.disconnect("web", sb.id), return_exceptions=True
        )
        assert sum(r is None for r in results) == 1, results
        (failed,) = [r for r in results if r is not None]
        assert isinstance(failed, NotFound) and not isinstance(failed, NoSuchEndpoint), failed
        assert "is not connected to network web" in str(failed)
    assert await _held(ctl) == set() and await ctl.endpoints() == []
