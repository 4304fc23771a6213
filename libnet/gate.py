"""Operations and maintenance: reconcile must not run while operations are half done.

Between its steps, an operation holds state a reconcile pass would take for
a leak (a reserved name, addresses owned by an endpoint not yet stored).
:class:`OperationGate` lets any number of operations run together and makes
:meth:`~OperationGate.exclusive` wait until none is in flight and hold new
ones back meanwhile.  Operations nested in one another (``connect`` runs
``create_endpoint`` and ``join``) count once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from libnet.errors import Unavailable

T = TypeVar("T")
Args = ParamSpec("Args")


class _Gated(Protocol):
    _gate: OperationGate


G = TypeVar("G", bound=_Gated)
_inside = contextvars.ContextVar("libnet_operation", default=False)
_in_flight = [0]  # operations in flight in this process, over every gate
_last_busy = [0.0]  # time.monotonic() when the last operation started or ended


def in_flight() -> int:
    """Operations in flight in this process now (nested ones count once): a hint for
    code that may block the event loop briefly rather than hand work to a thread."""
    return _in_flight[0]


def idle_for() -> float:
    """Seconds since the last operation of this process started or ended; 0 while any is in
    flight.  For work that stalls others (deleting links holds the kernel's rtnl lock) and can
    wait for a pause."""
    return 0.0 if _in_flight[0] else time.monotonic() - _last_busy[0]


class OperationGate:
    """Shared for operations, exclusive for maintenance."""

    def __init__(self) -> None:
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = asyncio.Event()
        self._open.set()
        self._maintenance = asyncio.Lock()
        self._closed = False

    @contextlib.asynccontextmanager
    async def operation(self) -> AsyncIterator[None]:
        if _inside.get():  # nested: already counted
            yield
            return
        if self._closed:
            raise Unavailable("the agent is stopping; retry when it is back")
        await self._open.wait()
        if self._closed:
            raise Unavailable("the agent is stopping; retry when it is back")
        self._active += 1
        _in_flight[0] += 1
        _last_busy[0] = time.monotonic()
        self._idle.clear()
        token = _inside.set(True)
        try:
            yield
        finally:
            _inside.reset(token)
            self._active -= 1
            _in_flight[0] -= 1
            _last_busy[0] = time.monotonic()
            if self._active == 0:
                self._idle.set()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._maintenance:
            self._open.clear()
            token = None
            try:
                await self._idle.wait()
                token = _inside.set(True)  # maintenance may run operations itself
                yield
            finally:
                if token is not None:
                    _inside.reset(token)
                self._open.set()

    async def close(self, timeout: float) -> bool:
        """For a graceful stop: refuse new operations (``Unavailable``) and wait up to
        ``timeout`` seconds for those in flight and a running maintenance pass to
        finish.  True if all did.  The gate stays closed."""
        self._closed = True
        self._open.set()  # operations waiting on a maintenance pass wake up and are refused
        try:
            async with asyncio.timeout(timeout):
                await self._maintenance.acquire()  # held for good: no maintenance after this
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


def operation(
    method: Callable[Concatenate[G, Args], Awaitable[T]],
) -> Callable[Concatenate[G, Args], Coroutine[Any, Any, T]]:
    """Run a controller method as an operation of its ``_gate``."""

    async def wrapper(self: G, /, *args: Args.args, **kwargs: Args.kwargs) -> T:
        async with self._gate.operation():
            return await method(self, *args, **kwargs)

    functools.update_wrapper(wrapper, method)
    return wrapper
