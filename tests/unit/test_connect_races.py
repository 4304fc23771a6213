"""Races of a connect with other operations on its endpoint or sandbox (breaker of issue 22's
attach changes: connect's join uses the endpoint record it stored, not read again)."""

from __future__ import annotations

import asyncio

import pytest

from libnet import Config, Controller
from libnet.errors import Conflict, NotFound
from libnet.store.memory import MemoryStore
from libnet.testing.fakes import FakeDriver, FakeNamespaces


def hold_first_refresh(ctl: Controller) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold the first connect's step after its join (the proxies' refresh: a proxy host reads the
    store there) until ``go`` is set; ``held`` is set once it waits."""
    held, go = asyncio.Event(), asyncio.Event()
    real = ctl._proxies.refresh

    async def refresh(network_id=None):  # type: ignore[no-untyped-def]
        if not held.is_set():
            held.set()
            await go.wait()
        await real(network_id)

    ctl._proxies.refresh = refresh  # type: ignore[method-assign]
    return held, go


def _controller(tmp_path) -> Controller:  # type: ignore[no-untyped-def]
    return Controller(
        Config(state_dir=str(tmp_path), resolv_conf=str(tmp_path / "resolv.conf")),
        store=MemoryStore(),
        drivers={"bridge": FakeDriver("bridge")},
        namespaces=FakeNamespaces(),
    )


async def _until(pred, limit: int = 500) -> None:  # type: ignore[no-untyped-def]
    for _ in range(limit):
        if await pred():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never met")


async def test_a_connect_whose_endpoint_is_joined_elsewhere_meanwhile_does_not_join_it_too(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ctl = _controller(tmp_path)
    await ctl.start()
    try:
        await ctl.create_network("web", ipv4_subnet="198.51.100.0/24", ipv6=False)
        a, b = await ctl.create_sandbox("a"), await ctl.create_sandbox("b")
        lock = ctl._joins._lock(a.id)
        await lock.acquire()  # another operation on sandbox a holds it
        task = asyncio.ensure_future(ctl.connect("web", a.id, name="x"))

        async def made() -> bool:
            return any(e.name == "x" for e in await ctl.endpoints("web"))

        await _until(made)
        (x,) = [e for e in await ctl.endpoints("web") if e.name == "x"]
        await ctl.join(x.id, b.id)  # somebody joins the new endpoint to sandbox b meanwhile
        lock.release()
        with pytest.raises(Conflict):
            await task
        eps = await ctl.endpoints("web")
        joined = {e.id: e.sandbox_id for e in eps}
        a, b = await ctl.sandbox(a.id), await ctl.sandbox(b.id)
        for e, sid in joined.items():
            assert (e in a.endpoints) == (sid == a.id) and (e in b.endpoints) == (sid == b.id), (joined, a, b)
        assert not (set(a.endpoints) & set(b.endpoints))
        assert joined == {x.id: b.id} and a.endpoints == [] and b.endpoints == [x.id]  # b's join stands
    finally:
        await ctl.close()


def _consistent(eps, sandboxes) -> None:  # type: ignore[no-untyped-def]
    """Every endpoint is listed by the one sandbox it names, and no sandbox lists another."""
    joined = {e.id: e.sandbox_id for e in eps}
    for sb in sandboxes:
        assert sorted(sb.endpoints) == sorted(e for e, s in joined.items() if s == sb.id), (joined, sb)


async def test_an_endpoint_deleted_while_its_connect_waits_is_not_joined(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ctl = _controller(tmp_path)
    await ctl.start()
    try:
        await ctl.create_network("web", ipv4_subnet="198.51.100.0/24", ipv6=False)
        a = await ctl.create_sandbox("a")
        lock = ctl._joins._lock(a.id)
        await lock.acquire()
        task = asyncio.ensure_future(ctl.connect("web", a.id, name="x"))

        async def made() -> bool:
            return any(e.name == "x" for e in await ctl.endpoints("web"))

        await _until(made)
        (x,) = await ctl.endpoints("web")
        await ctl.delete_endpoint(x.id)
        lock.release()
        with pytest.raises(NotFound):
            await task
        assert await ctl.endpoints("web") == [] and (await ctl.sandbox(a.id)).endpoints == []
    finally:
        await ctl.close()


@pytest.mark.parametrize("first", ["delete marks", "join writes"])
async def test_a_delete_and_a_join_of_one_endpoint_do_not_both_succeed(tmp_path, first) -> None:  # type: ignore[no-untyped-def]
    """A delete reads the endpoint unjoined and is held; the join runs (or the delete marks the
    endpoint first and is held after): whichever writes first wins, the other is refused."""
    ctl = _controller(tmp_path)
    await ctl.start()
    try:
        await ctl.create_network("web", ipv4_subnet="198.51.100.0/24", ipv6=False)
        a = await ctl.create_sandbox("a")
        x = await ctl.create_endpoint("web", "x")
        held, go = asyncio.Event(), asyncio.Event()
        if first == "delete marks":  # held after marking, in the driver
            drv = ctl._drivers.driver("bridge")
            real = drv.delete_endpoint

            async def slow(*args):  # type: ignore[no-untyped-def]
                held.set()
                await go.wait()
                return await real(*args)

            drv.delete_endpoint = slow  # type: ignore[method-assign]
        else:  # held after reading the endpoint unjoined, before marking it
            real_owns = ctl._proxies.owns_endpoint

            async def slow_owns(ep):  # type: ignore[no-untyped-def]
                held.set()
                await go.wait()
                return await real_owns(ep)

            ctl._proxies.owns_endpoint = slow_owns  # type: ignore[method-assign]
        deleting = asyncio.ensure_future(ctl.delete_endpoint(x.id))
        await asyncio.wait_for(held.wait(), 5)
        joining = asyncio.ensure_future(ctl.join(x.id, a.id))
        await asyncio.wait([joining], timeout=2)
        go.set()
        results = await asyncio.gather(deleting, joining, return_exceptions=True)
        assert sum(isinstance(r, Conflict) for r in results) == 1, results
        eps = await ctl.endpoints("web")
        _consistent(eps, [await ctl.sandbox(a.id)])
        assert [e.sandbox_id for e in eps] == ([] if first == "delete marks" else [a.id])
    finally:
        await ctl.close()


class _Views:
    """A DNS binding that records each sandbox's endpoints as last served."""

    def __init__(self, ctl: Controller) -> None:
        self.ctl, self.views = ctl, {}  # type: ignore[var-annotated]

    async def sandbox(self, sb, reads=None) -> None:  # type: ignore[no-untyped-def]
        self.views[sb.id] = sorted(sb.endpoints)

    async def left(self, ep, sandbox_id, sb=None) -> None:  # type: ignore[no-untyped-def]
        await self.sandbox(sb if sb is not None else await self.ctl.sandbox(sandbox_id))

    async def sandbox_deleted(self, sandbox_id) -> None:  # type: ignore[no-untyped-def]
        self.views.pop(sandbox_id, None)

    def network_deleted(self, network_id) -> None:  # type: ignore[no-untyped-def]
        pass

    async def close(self) -> None:
        pass


async def test_a_join_that_lands_after_a_connects_join_stays_in_the_dns_view(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """connect 1's join writes the sandbox and lets go of its lock; connect 2's join writes it
    again and serves its names; connect 1 then serves the sandbox's names from its own record:
    not the one it wrote (the view would lose connect 2's network), the current one."""
    ctl = _controller(tmp_path)
    await ctl.start()
    views = _Views(ctl)
    ctl._dns_binding = views  # type: ignore[assignment]
    try:
        await ctl.create_network("n1", ipv4_subnet="198.51.100.0/26", ipv6=False)
        await ctl.create_network("n2", ipv4_subnet="198.51.100.64/26", ipv6=False)
        sb = await ctl.create_sandbox("s")
        held, go = hold_first_refresh(ctl)
        first = asyncio.ensure_future(ctl.connect("n1", sb.id))
        await asyncio.wait_for(held.wait(), 5)
        await ctl.connect("n2", sb.id)
        go.set()
        await first
        final = sorted((await ctl.sandbox(sb.id)).endpoints)
        assert len(final) == 2 and views.views[sb.id] == final
    finally:
        await ctl.close()


async def test_a_connect_whose_endpoint_was_disconnected_meanwhile_connects_no_gateway_bridge(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """connect joins an endpoint of a network without a way out of its own; a disconnect takes it out
    again before connect carries out the gateway bridge policy: decided on the sandbox as it is (no
    endpoint), not as the join wrote it (which would connect the gateway bridge for nothing)."""
    from libnet.driverapi import Capabilities

    class NoWayOut(FakeDriver):
        def capabilities(self) -> Capabilities:
            return Capabilities(scope=self.scope, external_via_gateway_bridge=True)  # type: ignore[arg-type]

    class Bridge(FakeDriver):
        def parse_network_options(self, options):  # type: ignore[no-untyped-def]
            return dict(options)  # the gateway bridge's bridge_name

    ctl = Controller(
        Config(state_dir=str(tmp_path), resolv_conf=str(tmp_path / "resolv.conf")),
        store=MemoryStore(),
        drivers={"bridge": Bridge("bridge"), "ov": NoWayOut("ov")},
        namespaces=FakeNamespaces(),
    )
    await ctl.start()
    try:
        other = await ctl.create_sandbox("t")  # the gateway bridge works: another sandbox gets it
        await ctl.create_network("ov", "ov", ipv4_subnet="198.51.100.0/26", ipv6=False)
        sb = await ctl.create_sandbox("s")
        held, go = hold_first_refresh(ctl)
        first = asyncio.ensure_future(ctl.connect("ov", sb.id))
        await asyncio.wait_for(held.wait(), 5)
        await ctl.disconnect("ov", sb.id)
        go.set()
        await first
        assert (await ctl.sandbox(sb.id)).endpoints == []
        assert not [e for n in await ctl.networks() for e in await ctl.endpoints(n.id)]
        await ctl.connect("ov", other.id)  # the gateway bridge is there where needed
        assert len((await ctl.sandbox(other.id)).endpoints) == 2
    finally:
        await ctl.close()


async def test_a_connect_racing_the_removal_of_its_sandbox_is_refused_not_left_joined(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Fuzzer (concurrent connect and ``DELETE /v1/sandboxes`` of one sandbox, real agent): a join whose
    store step came after the removal marked the sandbox was recorded on a sandbox whose endpoint list
    the removal had read already: the namespace and the record went, the endpoint stayed joined to
    the gone sandbox (its veth missing at every reconcile, and adopted by the next sandbox of that
    id).  A sandbox being removed takes no new endpoint (Conflict), checked on the record as stored."""
    ctl = _controller(tmp_path)
    await ctl.start()
    try:
        await ctl.create_network("web", ipv4_subnet="198.51.100.0/24", ipv6=False)
        await ctl.create_sandbox("a")
        drv = ctl.driver("bridge")
        in_join, go_join = asyncio.Event(), asyncio.Event()
        real_join = drv.join

        async def join(nw, ep, sb):  # type: ignore[no-untyped-def]
            in_join.set()
            await go_join.wait()
            await real_join(nw, ep, sb)

        drv.join = join  # type: ignore[method-assign]
        in_delete, go_delete = asyncio.Event(), asyncio.Event()
        real_delete = ctl.repo.delete_sandbox

        async def delete_sandbox(sb):  # type: ignore[no-untyped-def]
            in_delete.set()
            await go_delete.wait()
            await real_delete(sb)

        ctl.repo.delete_sandbox = delete_sandbox  # type: ignore[method-assign]
        connect = asyncio.ensure_future(ctl.connect("web", "a", name="x"))
        await asyncio.wait_for(in_join.wait(), 5)
        remove = asyncio.ensure_future(ctl.delete_sandbox("a"))
        await asyncio.wait_for(in_delete.wait(), 5)  # marked, its endpoints (none yet) let go
        go_join.set()
        with pytest.raises(Conflict, match="being removed"):
            await connect
        go_delete.set()
        await remove
        assert await ctl.sandboxes() == [] and await ctl.endpoints() == []
    finally:
        await ctl.close()


async def test_two_deletes_of_one_network_at_once_take_it_apart_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Fuzzer (``DELETE /v1/networks/NAME`` x4 at once, real agent): every delete passed the checks and
    took the network apart in the driver at the same time; the bridge driver's nftables removals then
    failed for all but one ('No such file or directory': 500 KernelError).  Now the deletes of one
    network run one after the other: the later ones find it gone (NoSuchNetwork, a 404)."""
    from libnet.errors import NoSuchNetwork

    ctl = _controller(tmp_path)
    await ctl.start()
    try:
        await ctl.create_network("web", ipv4_subnet="198.51.100.0/24", ipv6=False)
        drv = ctl.driver("bridge")
        calls, go = [], asyncio.Event()
        real = drv.delete_network

        async def delete_network(info):  # type: ignore[no-untyped-def]
            calls.append(info.id)
            await go.wait()
            await real(info)

        drv.delete_network = delete_network  # type: ignore[method-assign]
        tasks = [asyncio.ensure_future(ctl.delete_network("web")) for _ in range(3)]
        await _until(lambda: asyncio.sleep(0, bool(calls)))
        for _ in range(20):
            await asyncio.sleep(0)  # the others reach the driver too, if nothing holds them
        go.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert len(calls) == 1
        assert sorted(type(r).__name__ for r in results) == ["NoSuchNetwork", "NoSuchNetwork", "NoneType"]
        assert all(isinstance(r, NoSuchNetwork) for r in results if r is not None)
        assert await ctl.networks() == []
    finally:
        await ctl.close()
