"""A publish that reaches an endpoint marked for deletion (by a disconnect or ``endpoint rm``
since it read the record) holds no host port afterwards: before, it recorded the ports on the
marked endpoint, and the deletion, working from the record as it read it, deleted the endpoint
without releasing them (the port stayed "already published by endpoint <gone>" until a reconcile)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from libnet import Controller
from libnet.errors import Conflict, NotFound
from libnet.repository import P
from tests.unit.conftest import fake_bridge_controller


@pytest.fixture(params=["sqlite", "memory"])
async def ctl(request, tmp_path):  # type: ignore[no-untyped-def]
    async with fake_bridge_controller(request.param, tmp_path) as c:
        await c.create_network("a", ipv4_subnet="198.51.100.0/25", ipv6=False)
        await c.create_network("b", ipv4_subnet="198.51.100.128/25", ipv6=False)
        yield c


async def _ports_held(ctl: Controller) -> list[bytes]:
    return [p.value for p in await ctl.repo.local.list(f"{P}/ports/")]


async def test_a_publish_during_an_endpoint_rm_is_refused_and_holds_nothing(ctl: Controller, monkeypatch) -> None:
    ep = await ctl.create_endpoint("a", "e1")
    driver = ctl.driver("bridge")
    real = driver.delete_endpoint
    outcome: list[object] = []

    async def delete_endpoint(nw: Any, info: Any) -> None:  # the deletion under way: marked, records not yet gone
        try:
            outcome.append(await ctl.publish(ep.id, [{"container_port": 80, "host_port": 0}]))
        except Conflict as exc:
            outcome.append(exc)
        await real(nw, info)

    monkeypatch.setattr(driver, "delete_endpoint", delete_endpoint)
    await ctl.delete_endpoint(ep.id)
    assert [type(o) for o in outcome] == [Conflict], outcome
    assert "being deleted" in str(outcome[0])
    assert await ctl.endpoints() == [] and await _ports_held(ctl) == []


async def _disconnect_with_a_publish_racing(ctl: Controller, sandbox: str, monkeypatch: Any) -> object:
    """Disconnect ``sandbox`` from ``a`` while a publish of its endpoint there comes in (during the
    leave: it waits for the sandbox); the publish's outcome."""
    ep = await ctl.connect("a", sandbox)
    await ctl.connect("b", sandbox)
    driver = ctl.driver("bridge")
    real_leave, real_delete = driver.leave, driver.delete_endpoint
    publish: list[asyncio.Future[Any]] = []

    async def leave(nw: Any, info: Any, sbi: Any) -> None:
        if info.id == ep.id and not publish:
            publish.append(asyncio.ensure_future(ctl.publish(ep.id, [{"container_port": 80, "host_port": 0}])))
        await real_leave(nw, info, sbi)

    async def delete_endpoint(nw: Any, info: Any) -> None:
        for _ in range(50):  # whatever may run meanwhile runs
            await asyncio.sleep(0)
        await real_delete(nw, info)

    monkeypatch.setattr(driver, "leave", leave)
    monkeypatch.setattr(driver, "delete_endpoint", delete_endpoint)
    await ctl.disconnect("a", sandbox)
    monkeypatch.undo()
    [done] = await asyncio.gather(*publish, return_exceptions=True)
    return done


async def test_a_publish_racing_a_disconnect_holds_no_port_afterwards(ctl: Controller, monkeypatch) -> None:
    """The publish waits for the sandbox while the disconnect's leave holds it, and gets it
    before the disconnect deletes the endpoint (always so where the leave cannot delete it in
    its own transaction: the memory store)."""
    sb = await ctl.create_sandbox("s1")
    for _ in range(3):
        done = await _disconnect_with_a_publish_racing(ctl, sb.id, monkeypatch)
        assert not isinstance(done, Exception) or isinstance(done, (Conflict, NotFound)), done
        await ctl.disconnect("b", sb.id)
        assert await ctl.endpoints() == [] and await _ports_held(ctl) == [], done
