"""A graceful stop: operations in flight finish, new ones are refused, the wait is bounded (issue 16)."""

from __future__ import annotations

import asyncio

import pytest

from libnet.errors import Unavailable
from libnet.gate import OperationGate


async def test_close_waits_for_operations_in_flight_and_refuses_new_ones() -> None:
    gate = OperationGate()
    done = []

    async def op(delay: float) -> None:
        async with gate.operation():
            await asyncio.sleep(delay)
            done.append(delay)

    running = asyncio.create_task(op(0.2))
    await asyncio.sleep(0.01)
    assert await gate.close(2)
    assert done == [0.2] and running.done()
    with pytest.raises(Unavailable, match="stopping"):
        await op(0)


async def test_close_is_bounded() -> None:
    gate = OperationGate()

    async def stuck() -> None:
        async with gate.operation():
            await asyncio.sleep(30)

    task = asyncio.create_task(stuck())
    await asyncio.sleep(0.01)
    assert not await gate.close(0.1)
    task.cancel()
