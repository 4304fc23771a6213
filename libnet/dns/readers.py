"""Readiness of many sockets through one reader of the event loop.

A reader per socket (``loop.add_reader``) keeps, per socket, a ``Handle`` with a
copied context, a ``SelectorKey``, a bound method and an argument tuple in the
loop's selector: about 450 bytes each, four sockets per sandbox, ~1.8 MiB of the
agent's RSS at 1,000 sandboxes (issue 22, tracemalloc of a running agent).  Here
the sockets are in an epoll set of their own (kernel memory), the loop has one
reader -- that set's descriptor, readable while any socket in it is -- and a ready
socket's callback is found in a dict, kept as one flat tuple (callback, *args):
with a plain function and its object as the first argument rather than a bound
method, ~64 bytes a socket instead of ~190.  Level-triggered as the loop's own readers
are: a socket not drained in one round is ready again in the next.  Where epoll
is missing the loop's own readers serve (same behaviour, their memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import select
from collections.abc import Callable
from typing import Any


class Readers:
    """``add(fd, callback, *args)``: ``callback(*args)`` when ``fd`` is readable, until ``remove(fd)``."""

    def __init__(self) -> None:
        self._calls: dict[int, tuple[Any, ...]] = {}  # fd -> (callback, *args)
        self._epoll: Any = None  # select.epoll, made on first use
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, fd: int, callback: Callable[..., object], *args: Any) -> None:
        loop = asyncio.get_running_loop()
        if not hasattr(select, "epoll"):
            loop.add_reader(fd, callback, *args)
            self._calls[fd] = (callback, *args)
            return
        if self._epoll is None:
            self._epoll = select.epoll()
        if loop is not self._loop:  # first use, or a new loop: the set's one reader is on it
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._epoll.fileno())
            loop.add_reader(self._epoll.fileno(), self._ready)
            self._loop = loop
        if fd in self._calls:
            try:
                self._epoll.modify(fd, select.EPOLLIN)
            except FileNotFoundError:  # the number's old socket was closed unremoved: this is a new one
                self._epoll.register(fd, select.EPOLLIN)
        else:
            self._epoll.register(fd, select.EPOLLIN)
        self._calls[fd] = (callback, *args)

    def remove(self, fd: int) -> bool:
        """Stop watching ``fd`` (before it is closed); False if it was not watched."""
        if self._calls.pop(fd, None) is None:
            return False
        if self._epoll is None:
            asyncio.get_running_loop().remove_reader(fd)
        else:
            with contextlib.suppress(OSError):  # closed already: the kernel dropped it from the set
                self._epoll.unregister(fd)
        return True

    def _ready(self) -> None:
        loop = self._loop
        assert loop is not None and self._epoll is not None
        for fd, _ in self._epoll.poll(0):
            call = self._calls.get(fd)
            if call is None:  # removed by an earlier callback of this round
                continue
            try:
                call[0](*call[1:])
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:  # as the loop does for a reader's exception: report, go on
                loop.call_exception_handler({"message": "Exception in a socket reader's callback", "exception": exc})

    def close(self) -> None:
        """Stop watching everything (the sockets stay open: their owners close them)."""
        if self._epoll is None:
            for fd in list(self._calls):
                self.remove(fd)
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._epoll.fileno())
        self._epoll.close()
        self._epoll, self._loop = None, None
        self._calls.clear()
