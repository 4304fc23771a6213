"""Sandbox namespaces in the kernel: :class:`libnet.namespaces.Namespaces` on
:mod:`libnet.kernel.netns` and the instance's namespace ledger."""

from __future__ import annotations

import errno
import os
import select
import threading
import weakref

from libnet.errors import Conflict, KernelObjectExists, LibnetError, NotANamespace
from libnet.kernel import netns
from libnet.ownership import NamespaceLedger


class KernelNamespaces:
    """The real thing, on :mod:`libnet.kernel.netns` and the instance's namespace ledger."""

    def __init__(self, state_dir: str, instance: str | None, host_netns: str | None = None) -> None:
        assert instance is not None, "Config.resolved() fills the instance in"
        self.ledger = NamespaceLedger(state_dir, instance)
        self.host_netns = host_netns
        # other sandboxes' namespace paths -> their identity when seen here; valid while
        # the mount table stays as it was (see check_external)
        self._seen: dict[str, tuple[int, int]] = {}
        self._mounts = MountWatch()
        # the namespace this object was made in (the agent's, the host's): taken now, since
        # /proc/self/ns/net shows whatever namespace the main thread is in at the moment of
        # the look, and the event loop's thread steps into sandboxes for a moment to make
        # sockets there (netns.sockets_in)
        self._own = netns.identity("/proc/thread-self/ns/net")
        # the names a create of this process is making now (creates run on worker threads)
        self._making: set[str] = set()
        self._making_lock = threading.Lock()

    def host_paths(self) -> list[str]:
        """The host's namespaces, which no container may use."""
        paths = ["/proc/self/ns/net", "/proc/1/ns/net"]
        if self.host_netns is not None:
            paths.append(netns.path_of(self.host_netns))
        return paths

    def identity(self, path: str) -> str | None:
        ident = netns.identity(path)
        return None if ident is None else f"{ident[0]}-{ident[1]}"

    def check_external(self, path: str, sandboxes: dict[str, str]) -> None:
        ident = netns.check_path(path)
        if netns.is_initial(ident):
            raise NotANamespace(
                f"netns path {path} is the machine's initial network namespace (the host's own): a container's "
                "interfaces would land on the host; give the container's namespace",
                netns=path,
            )
        for host in self.host_paths():
            if netns.identity(host) == ident or (host == "/proc/self/ns/net" and ident == self._own):
                raise NotANamespace(
                    f"netns path {path} is the host's own network namespace ({host}): a container's interfaces "
                    "would land on the host; give the container's namespace",
                    netns=path,
                )
        for rec in self.ledger.records("overlay"):
            if netns.identity(netns.path_of(rec.name)) == ident:
                raise NotANamespace(
                    f"netns path {path} is libnet's namespace of overlay network {rec.owner[:12]}, not a container's",
                    netns=path,
                    network_id=rec.owner,
                )
        # Which namespace a path shows changes only with a mount or unmount there (a
        # bind mount under /run/netns) or, for /proc/PID/... paths, with the process:
        # so the other sandboxes' paths are stat once and again only after the mount
        # table changed; /proc paths and symlinks every time.  create_sandbox's hot path: one stat
        # per sandbox cost more than the rest of the check.
        if self._mounts.changed() or len(self._seen) > 2 * len(sandboxes) + 64:
            self._seen = {}
        for sid, other in sandboxes.items():
            known = self._seen.get(other)
            if known is None:
                known = netns.identity(other)
                # a symlink (README: followed) can be pointed elsewhere without any mount: stat every time
                if known is not None and not other.startswith("/proc/") and not os.path.islink(other):
                    self._seen[other] = known
            if known == ident:
                raise Conflict(
                    f"netns path {path} is the namespace of sandbox {sid} already ({other})",
                    netns=path,
                    holder=sid,
                )

    def create(self, name: str, owner: str) -> str:
        # one create of a name at a time: two at once (two creates of one sandbox id) both found no
        # namespace, wrote the ledger record through one temporary file, and the loser's clean-up
        # removed the winner's record (its namespace then outlived its sandbox)
        with self._making_lock:
            if name in self._making or netns.exists(name):
                raise KernelObjectExists("a namespace of that name exists", errno=errno.EEXIST, netns=name)
            self._making.add(name)
        try:
            self.ledger.record(name, "sandbox", owner)
            try:
                return netns.create(name)
            except BaseException:
                self.ledger.forget(name)  # the name was someone else's, or nothing was made
                raise
        finally:
            with self._making_lock:
                self._making.discard(name)

    def delete(self, path: str) -> bool:
        if not path.startswith(netns.NETNS_DIR + "/"):
            return False
        name = os.path.basename(path)
        if not self.ledger.owns(name, "sandbox"):
            return False
        netns.delete(name)
        self.ledger.forget(name)
        return True

    def exists(self, path: str) -> bool:
        """Whether ``path`` is (still) a network namespace: a container's bind
        mount that was unmounted leaves a plain file behind."""
        try:
            netns.check_path(path)
        except NotANamespace:
            return False
        return True

    def in_use(self, path: str) -> bool:
        from libnet.kernel.netlink import Netlink

        try:
            with Netlink(path) as nl:
                return any(link.name != "lo" for link in nl.links())
        except LibnetError:
            return False  # gone meanwhile

    def owned(self) -> dict[str, str]:
        out = {}
        for rec in self.ledger.records("sandbox"):
            path = os.path.join(netns.NETNS_DIR, rec.name)
            if os.path.exists(path):
                out[path] = rec.owner
            else:
                self.ledger.forget(rec.name)  # a crash between record and create
        return out


class MountWatch:
    """Whether this process's mount table changed since the last call: a poll of
    ``/proc/self/mountinfo``, which reports ``POLLPRI`` after a mount or unmount
    (proc(5)).  True on the first call, and whenever the file cannot be watched."""

    def __init__(self) -> None:
        self._poll: select.poll | None = None

    def changed(self) -> bool:
        if self._poll is None:
            try:
                fd = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return True
            weakref.finalize(self, os.close, fd)
            self._poll = select.poll()
            self._poll.register(fd, select.POLLPRI)
            return True
        return bool(self._poll.poll(0))
