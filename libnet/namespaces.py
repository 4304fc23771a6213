"""The controller's seam to the kernel for sandbox namespaces.

The controller creates and removes sandbox namespaces through this protocol
only, so its logic runs in unit tests against an in-memory fake
(``libnet.testing.fakes.FakeNamespaces``).
"""

from __future__ import annotations

import os
from typing import Protocol

from libnet.kernel import netns


class Namespaces(Protocol):
    """Create, delete and check sandbox namespaces."""

    def create(self, name: str) -> str:
        """Create a named namespace; returns its path."""
        ...

    def delete(self, path: str) -> None:
        """Delete a namespace libnet created; gone is fine."""
        ...

    def exists(self, path: str) -> bool:
        """Whether the namespace at ``path`` is still there."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Paths of the named namespaces whose name starts with ``prefix``."""
        ...


class KernelNamespaces:
    """The real thing, on :mod:`libnet.kernel.netns`."""

    def create(self, name: str) -> str:
        return netns.create(name)

    def delete(self, path: str) -> None:
        if path.startswith(netns.NETNS_DIR + "/"):
            netns.delete(os.path.basename(path))

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def list(self, prefix: str) -> list[str]:
        return [os.path.join(netns.NETNS_DIR, n) for n in netns.list_names(prefix)]
