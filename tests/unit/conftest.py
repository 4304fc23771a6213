"""Fixtures shared by unit tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.api import AgentState, make_app
from agent.metrics import Metrics
from ipam.ipam import StoreIpam
from libnet import Config, Controller
from libnet.store.memory import MemoryStore
from libnet.store.sqlite import SQLiteStore
from libnet.testing.fakes import FakeDriver, FakeNamespaces


@asynccontextmanager
async def fake_bridge_controller(
    kind: str, tmp_path: Path, resolv: str = "nameserver 198.51.100.53\n", state: str = ""
) -> AsyncIterator[Controller]:
    """A started controller on a ``kind`` store ("sqlite" or "memory") with a fake ``bridge``
    driver and fake namespaces; closed (and its store) on exit.  ``resolv``: the host's
    resolv.conf text; ``state``: its state dir under ``tmp_path`` ("": ``tmp_path`` itself)."""
    store: Any = SQLiteStore(str(tmp_path / "store.db")) if kind == "sqlite" else MemoryStore()
    c = Controller(
        Config(state_dir=str(tmp_path / state), resolv_conf=str(tmp_path / "resolv.conf")),
        store=store,
        ipam=StoreIpam(store),
        drivers={"bridge": FakeDriver("bridge")},
        namespaces=FakeNamespaces(),
    )
    (tmp_path / "resolv.conf").write_text(resolv)
    await c.start()
    try:
        yield c
    finally:
        await c.close()
        if isinstance(store, SQLiteStore):
            await store.close()


@pytest.fixture
def served(tmp_path):
    """An agent API (controller on fakes: a bridge and an overlay-scoped fake driver)
    on a unix socket, served from a thread (the CLI is synchronous).  Yields
    ``(socket path, controller, call)``; ``call(coro)`` runs on the agent's loop."""
    path = str(tmp_path / "agent.sock")
    loop = asyncio.new_event_loop()
    held: dict = {}

    async def setup() -> None:
        store = MemoryStore()
        ctl = Controller(
            Config(state_dir=str(tmp_path), node_name="n"),
            store=store,
            ipam=StoreIpam(store),
            drivers={"bridge": FakeDriver("bridge"), "overlay": FakeDriver("overlay", scope="global")},
            namespaces=FakeNamespaces(),
        )
        await ctl.start()
        runner = web.AppRunner(make_app(AgentState(ctl, "n", Metrics())))
        await runner.setup()
        await web.UnixSite(runner, path).start()
        held.update(ctl=ctl, runner=runner)

    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(setup())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)

    def call(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(10)

    yield path, held["ctl"], call
    call(held["runner"].cleanup())
    call(held["ctl"].close())
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()
