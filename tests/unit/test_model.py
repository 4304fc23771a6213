"""Versioned JSON documents and the read-modify-CAS helper, on the memory store."""

from __future__ import annotations

import asyncio

import pytest

from libnet import model
from libnet.errors import BadRequest, NameInUse
from libnet.store.memory import MemoryStore


def test_encode_decode_round_trip_and_checks() -> None:
    raw = model.encode("network", {"name": "n1", "mtu": 1450})
    assert model.decode(raw, "network") == {"name": "n1", "mtu": 1450}
    with pytest.raises(BadRequest):
        model.decode(raw, "endpoint")
    with pytest.raises(BadRequest):
        model.decode(model.encode("network", {}, schema=model.SCHEMA_VERSION + 1), "network")
    with pytest.raises(BadRequest):
        model.decode(b"{not json", "network")
    with pytest.raises(BadRequest):
        model.decode(b'{"schema": 1, "kind": "network", "data": []}', "network")


async def test_update_creates_changes_and_deletes() -> None:
    store = MemoryStore()
    assert (await model.update(store, "k", lambda old: b"1" if old is None else old + b"!")).value == b"1"
    assert (await model.update(store, "k", lambda old: old + b"!")).value == b"1!"
    same = await store.get("k")
    assert await model.update(store, "k", lambda old: old) == same  # no write when nothing changes
    assert await store.revision() == same.revision
    assert await model.update(store, "k", lambda old: None) is None
    assert not await store.exists("k")


async def test_update_retries_lost_races_and_counts_exactly() -> None:
    store = MemoryStore()
    real_get = store.get
    calls = 0

    async def racing_get(key):  # another writer sneaks in after each of our first reads
        nonlocal calls
        calls += 1
        pair = await real_get(key)
        if calls <= 3:
            await store.put(key, pair.value + b"x")
        return pair

    await store.put("k", b"")
    store.get = racing_get  # type: ignore[method-assign]
    result = await model.update(store, "k", lambda old: old + b"me")
    assert result.value == b"xxxme" and calls == 4


async def test_update_gives_up_with_contention_and_abort_propagates() -> None:
    store = MemoryStore()
    await store.put("k", b"0")
    real_get = store.get

    async def always_raced(key):
        pair = await real_get(key)
        await store.put(key, pair.value + b"x")
        return pair

    store.get = always_raced  # type: ignore[method-assign]
    with pytest.raises(model.Contention) as err:
        await model.update(store, "k", lambda old: b"mine", attempts=5, base_delay=0)
    assert err.value.ids == {"key": "k", "attempts": 5}

    def refuse(_old):
        raise NameInUse("name taken", name="n1")

    with pytest.raises(NameInUse):
        await model.update(MemoryStore(), "k", refuse)


async def test_update_json_concurrent_tasks() -> None:
    store = MemoryStore()

    async def add() -> None:
        for _ in range(50):
            await model.update_json(store, "c", "counter", lambda d: {"n": (d or {"n": 0})["n"] + 1})

    await asyncio.gather(*(add() for _ in range(8)))
    assert model.decode((await store.get("c")).value, "counter") == {"n": 400}


def test_decoded_documents_share_their_field_names() -> None:
    """Every decoded document's keys (nested too) are the interned strings, not copies per
    document (issue 22: 1,000 cached endpoints held a copy of each field name each)."""
    docs = [
        model.decode(model.encode("endpoint", {"network_id": f"n{i}", "ports": [{"host_port": i}]}), "endpoint")
        for i in range(2)
    ]
    (a_key, a_ports), (b_key, b_ports) = (list(d) for d in docs)
    assert a_key is b_key and a_ports is b_ports
    assert next(iter(docs[0]["ports"][0])) is next(iter(docs[1]["ports"][0]))
    assert docs[1] == {"network_id": "n1", "ports": [{"host_port": 1}]}


def test_address_of_prints_what_ipaddress_prints() -> None:
    """address_of's inet_pton/inet_ntop path (issue 22) gives ipaddress's text, or goes through it."""
    import ipaddress
    import random

    from libnet.model import address_of

    rng = random.Random(22)
    cases = ["198.51.100.2/30", "2001:DB8::0:1/64", "2001:db8:0:0:1:0:0:1/64", "::1/128", "::/0", "::ffff:1.2.3.4/96"]
    cases += ["::102:304/64", "::ffff:102:304/64", "fe80::1%eth0/64", "198.51.100.2", "2001:db8::1"]
    for _ in range(2000):
        groups = [rng.choice([0, 0, 0, 1, 0xFFFF, rng.randrange(65536)]) for _ in range(8)]
        cases.append(":".join(f"{g:x}" for g in groups) + f"/{rng.randrange(129)}")
        cases.append(".".join(str(rng.randrange(256)) for _ in range(4)) + f"/{rng.randrange(33)}")
    for cidr in cases:
        assert address_of.__wrapped__(cidr) == str(ipaddress.ip_interface(cidr).ip), cidr
    for bad in ("198.51.100.2/33", "2001:db8::1/129", "010.1.1.1/24", "1.2.3/24", "198.51.100.2/", "x/24", "1.2.3.4/٣"):
        with pytest.raises(ValueError):
            address_of.__wrapped__(bad)
