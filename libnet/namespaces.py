"""The controller's seam to the kernel for sandbox namespaces.

The controller creates and removes sandbox namespaces through this protocol
only, so its logic runs in unit tests against an in-memory fake
(``libnet.testing.fakes.FakeNamespaces``).
"""

from __future__ import annotations

import errno
import os
from typing import Protocol

from libnet.errors import LibnetError
from libnet.kernel import netns
from libnet.kernel.errors import KernelObjectExists
from libnet.ownership import NamespaceLedger


class Namespaces(Protocol):
    """Create, delete and check the sandbox namespaces this libnet instance owns.

    Ownership (DESIGN.md, "Ownership"): a namespace is the instance's only if
    it was recorded before being created; :meth:`delete` and :meth:`owned`
    never touch or list anything else, whatever its name.
    """

    def create(self, name: str, owner: str) -> str:
        """Record, then create a named namespace for sandbox ``owner``; returns its path.

        ``KernelObjectExists`` (a ``Conflict``) if the name is taken; nothing is changed then."""
        ...

    def delete(self, path: str) -> bool:
        """Delete a namespace this instance created; gone is fine.  False (and
        nothing done) when the namespace is not the instance's."""
        ...

    def exists(self, path: str) -> bool:
        """Whether the namespace at ``path`` is still there."""
        ...

    def owned(self) -> dict[str, str]:
        """Path -> owner (sandbox id) of every existing sandbox namespace the instance created."""
        ...

    def in_use(self, path: str) -> bool:
        """Whether the namespace holds anything but its loopback (an interface a
        container uses): reconcile keeps such a namespace even when the store
        does not know its sandbox (a lost record)."""
        ...


class KernelNamespaces:
    """The real thing, on :mod:`libnet.kernel.netns` and the instance's namespace ledger."""

    def __init__(self, state_dir: str, instance: str | None) -> None:
        assert instance is not None, "Config.resolved() fills the instance in"
        self.ledger = NamespaceLedger(state_dir, instance)

    def create(self, name: str, owner: str) -> str:
        if netns.exists(name):
            raise KernelObjectExists("a namespace of that name exists", errno=errno.EEXIST, netns=name)
        self.ledger.record(name, "sandbox", owner)
        try:
            return netns.create(name)
        except BaseException:
            self.ledger.forget(name)  # the name was someone else's, or nothing was made
            raise

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
        return os.path.exists(path)

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
