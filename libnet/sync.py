"""A thin synchronous facade over the async :class:`~libnet.controller.Controller`, for scripts.

::

    from libnet import Config, SyncController

    with SyncController(Config(store="sqlite:///tmp/libnet.db")) as ctl:
        net = ctl.create_network("web")
        sb = ctl.create_sandbox(hostname="app")
        ep = ctl.connect("web", sb.id)

Every coroutine method of the controller is available under the same name and
runs to completion on the facade's own event loop.  Not for use inside a
running event loop: there, use the controller itself.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from typing import Any

from libnet.config import Config
from libnet.controller import Controller


class SyncController:
    """Blocking access to a controller; see the module docstring."""

    def __init__(self, config: Config | None = None, **collaborators: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._controller = Controller(config, **collaborators)
        self._loop.run_until_complete(self._controller.start())

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._controller, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run_until_complete(attr(*args, **kwargs))

        return call

    def close(self) -> None:
        """Close the controller and the loop (the data plane stays)."""
        if not self._loop.is_closed():
            self._loop.run_until_complete(self._controller.close())
            self._loop.close()

    def __enter__(self) -> SyncController:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
