"""An id prefix that several objects share is said to be ambiguous, as Docker says it
("network ab12 is ambiguous (2 matches found based on ID prefix)"); before, it was
"no such network" -- wrong, and no hint to type more of the id."""

from __future__ import annotations

import itertools

import pytest

from libnet.errors import Ambiguous, BadRequest, NoSuchEndpoint, NoSuchNetwork, NoSuchSandbox
from tests.unit.conftest import fake_bridge_controller


async def test_a_shared_id_prefix_is_ambiguous_a_longer_one_finds_it(tmp_path, monkeypatch) -> None:
    made = (f"abcd{i}{'0' * 59}" for i in itertools.count(1))
    monkeypatch.setattr("libnet.controller._new_id", lambda: next(made))
    async with fake_bridge_controller("memory", tmp_path) as c:
        n1 = await c.create_network("n1")
        n2 = await c.create_network("n2")
        assert n1.id.startswith("abcd1") and n2.id.startswith("abcd2")
        with pytest.raises(Ambiguous, match=r"network abcd is ambiguous \(2 matches found based on ID prefix\)") as e:
            await c.network("abcd")
        assert isinstance(e.value, BadRequest) and e.value.ids["matches"] == 2
        assert (await c.network("abcd2")).name == "n2"
        with pytest.raises(NoSuchNetwork):
            await c.network("abce")

        s1 = await c.create_sandbox("beef1" + "0" * 59)
        await c.create_sandbox("beef2" + "0" * 59)
        with pytest.raises(Ambiguous, match="sandbox beef is ambiguous"):
            await c.sandbox("beef")
        assert (await c.sandbox("beef1")).id == s1.id
        with pytest.raises(NoSuchSandbox):
            await c.sandbox("beee")

        e1 = await c.connect("n1", s1.id)
        e2 = await c.connect("n2", s1.id)
        assert e1.id[:4] == e2.id[:4] == "abcd"
        with pytest.raises(Ambiguous, match="endpoint abcd is ambiguous"):
            await c.endpoint("abcd")
        assert (await c.endpoint(e2.id[:6])).id == e2.id
        with pytest.raises(NoSuchEndpoint):
            await c.endpoint("abce")
