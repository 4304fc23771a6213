"""The controller's seam to the kernel for sandbox namespaces.

The controller creates and removes sandbox namespaces through this protocol
only, so its logic runs in unit tests against an in-memory fake
(``libnet.testing.fakes.FakeNamespaces``); the real one is
:class:`libnet.kernel_namespaces.KernelNamespaces`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
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

    def identity(self, path: str) -> str | None:
        """The identity of the namespace ``path`` shows now, as a store key segment
        (``[A-Za-z0-9-_.]``), None if it shows none: two paths of one namespace give the
        same.  An identity may be reused after its namespace is gone, so a claim made under
        it is checked against its holder's path (:meth:`check_external`) before it counts."""
        ...

    def in_use(self, path: str) -> bool:
        """Whether the namespace holds anything but its loopback (an interface a
        container uses): reconcile keeps such a namespace even when the store
        does not know its sandbox (a lost record)."""
        ...

    def check_external(self, path: str, sandboxes: dict[str, str]) -> None:
        """Check a path a user gives as a container's namespace (changes nothing).

        ``NotANamespace`` (a ``BadRequest``) if it is not a network namespace,
        or is the host's own (the agent's, the configured host namespace, the
        machine's root namespace: a container's eth0 would land on the host),
        or one of this instance's overlay namespaces; ``Conflict`` naming the
        holder if it is the namespace of one of ``sandboxes`` (id -> path)."""
        ...
