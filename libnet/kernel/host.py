"""The real :class:`~libnet.kernel.api.Kernel`: this host's kernel through
netlink (:mod:`~libnet.kernel.netlink`, :mod:`~libnet.kernel.sandbox`),
nftables (:mod:`~libnet.kernel.firewall`), named namespaces
(:mod:`~libnet.kernel.netns`) and sysctls (:mod:`~libnet.kernel.sysctl`).

Constructing it touches nothing; each handle it returns is opened on use.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time

from libnet.kernel import netns, sysctl
from libnet.kernel.firewall import Firewall
from libnet.kernel.netlink import Netlink
from libnet.kernel.rtnl import RtnlSocket
from libnet.kernel.sandbox import SandboxLinks

#: sandbox handles kept open while unused, at most (each holds its namespace alive)
KEEP_SANDBOXES = 16

#: seconds an unused sandbox handle is kept open
KEEP_IDLE = 1.0


class KeptSandboxes:
    """Sandbox rtnetlink sockets kept open between operations (issue 22): opening one is a
    dozen system calls (the namespace entered and left, the socket made, bound and set up),
    each a point where the event loop lets the host thread take the GIL, and a connect and its
    disconnect opened one each.  Each :meth:`open` returns a handle of its own; closing it
    hands the socket back (from any thread, once).  A kept socket is lent again only while its
    path still shows the namespace it was made in (one ``stat``: a namespace deleted and
    another mounted at the same path gets a socket of its own), and closed once unused for
    :data:`KEEP_IDLE` seconds or when :data:`KEEP_SANDBOXES` others are kept, so a namespace its
    runtime deleted is not held alive by libnet for longer than that."""

    def __init__(self, keep: int = KEEP_SANDBOXES, idle: float = KEEP_IDLE) -> None:
        self.keep, self.idle = keep, idle
        self._lock = threading.Lock()
        # path -> (socket, namespace identity, unused since), the oldest first
        self._unused: dict[str, tuple[RtnlSocket, tuple[int, int], float]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweep: asyncio.TimerHandle | None = None

    async def open(self, path: str) -> SandboxLinks:
        """A handle for the namespace at ``path``: on a kept socket if its namespace is still
        the one there, else on a new one (``NoSuchNamespace`` if it is gone)."""
        self._loop = asyncio.get_running_loop()
        with self._lock:
            kept = self._unused.pop(path, None)
        keeper = functools.partial(self._give_back, path)
        if kept is not None:
            sock, ident, _ = kept
            if netns.identity(path) == ident:
                return SandboxLinks(sock, ident, keeper)
            sock.close()
        links = await SandboxLinks.open(path)
        links.keeper = keeper
        return links

    def _give_back(self, path: str, sock: RtnlSocket, ident: tuple[int, int]) -> None:
        """A handle's socket, done with (any thread): kept, unless one of that namespace is
        kept already or enough are."""
        with self._lock:
            keep = path not in self._unused and len(self._unused) < self.keep
            if keep:
                self._unused[path] = (sock, ident, time.monotonic())
        if not keep:
            sock.close()
            return
        loop = self._loop
        if self._sweep is None and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing sweeps
                loop.call_soon_threadsafe(self._plan_sweep)

    def _plan_sweep(self) -> None:
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self.idle, self._sweep_unused)

    def _sweep_unused(self) -> None:
        """On the event loop: close the sockets unused for :attr:`idle` seconds; again later
        while any are left."""
        self._sweep = None
        cutoff = time.monotonic() - self.idle
        with self._lock:
            stale = [path for path, (_, _, since) in self._unused.items() if since <= cutoff]
            closing = [self._unused.pop(path)[0] for path in stale]
            left = bool(self._unused)
        for sock in closing:
            sock.close()
        if left:
            self._plan_sweep()

    def close(self) -> None:
        """Close every unused socket (lent ones are closed when they come back)."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self.keep = 0
        with self._lock:
            closing = [sock for sock, _, _ in self._unused.values()]
            self._unused.clear()
        for sock in closing:
            sock.close()


class HostKernel:
    """The kernel of this host (see the module docstring)."""

    def __init__(self) -> None:
        self._sandboxes = KeptSandboxes()

    def netlink(self, ns: str | None) -> Netlink:
        return Netlink(ns)

    async def open_sandbox(self, path: str) -> SandboxLinks:
        return await self._sandboxes.open(path)

    def firewall(self, ns: str | None, table: str) -> Firewall:
        return Firewall(ns, table=table)

    def netns_exists(self, name: str) -> bool:
        return netns.exists(name)

    def netns_create(self, name: str) -> str:
        return netns.create(name)

    def netns_delete(self, name: str) -> None:
        netns.delete(name)

    def netns_list(self, prefix: str = "") -> list[str]:
        return netns.list_names(prefix)

    def sysctl_get(self, ns: str | None, key: str | tuple[str, ...]) -> str:
        return sysctl.get(ns, key)

    def sysctl_set(self, ns: str | None, key: str | tuple[str, ...], value: int | str) -> None:
        sysctl.set(ns, key, value)

    async def enable_forwarding(self, ns: str | None) -> None:
        # on a thread inside ``ns``: /proc/sys shows the namespace of the thread that opens it
        await netns.run_in_async(ns, sysctl.set_forwarding, None, True)
