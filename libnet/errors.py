"""Typed errors of libnet.

Every error carries the ids of the objects it is about in ``ids`` (for example
``network_id``, ``endpoint_id``, ``ifname``, ``netns``), so callers and the API
layer can report them without parsing messages.  The hierarchy follows
DESIGN.md: five families under :class:`LibnetError`, and concrete errors below
them.  Kernel errno values are translated into these classes in
``libnet.kernel.errors`` only.
"""

from __future__ import annotations

from typing import Any


class LibnetError(Exception):
    """Base of every error libnet raises on purpose."""

    #: short machine-readable family name, used by the API layer
    kind = "error"

    def __init__(self, message: str, **ids: Any) -> None:
        super().__init__(message)
        self.message = message
        self.ids: dict[str, Any] = {k: v for k, v in ids.items() if v is not None}

    def __str__(self) -> str:
        if not self.ids:
            return self.message
        detail = ", ".join(f"{k}={v}" for k, v in sorted(self.ids.items()))
        return f"{self.message} ({detail})"

    def to_dict(self) -> dict[str, Any]:
        """The error as the API reports it: kind, message and the ids."""
        return {"kind": self.kind, "type": type(self).__name__, "message": self.message, **self.ids}


class NotFound(LibnetError):
    """The object named does not exist."""

    kind = "not_found"


class Conflict(LibnetError):
    """The request collides with existing state."""

    kind = "conflict"


class BadRequest(LibnetError):
    """The input is invalid; nothing was changed."""

    kind = "bad_request"


class Unavailable(LibnetError):
    """A dependency (store, Serf, kernel resource) is unavailable; retryable."""

    kind = "unavailable"


class KernelError(LibnetError):
    """The kernel refused an operation; ``errno`` keeps its reason."""

    kind = "kernel"

    def __init__(self, message: str, errno: int | None = None, **ids: Any) -> None:
        super().__init__(message, **ids)
        self.errno = errno

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "errno": self.errno}


# --- not found -------------------------------------------------------------


class NoSuchNetwork(NotFound):
    """No network with that id or name."""


class NoSuchEndpoint(NotFound):
    """No endpoint with that id or name."""


class NoSuchSandbox(NotFound):
    """No sandbox with that id."""


class NoSuchProxy(NotFound):
    """No proxy with that id or name."""


class NoSuchNode(NotFound):
    """No cluster member, key record or endpoint of that host name is known."""


class NoSuchNamespace(NotFound):
    """No network namespace at that name or path."""


class NoSuchLink(NotFound):
    """No network interface with that name or index."""


class NoSuchPool(NotFound):
    """No IPAM pool with that id."""


class AddressNotAllocated(NotFound):
    """The address is not allocated in that pool."""


class KeyNotFound(NotFound):
    """The store has no such key."""


# --- conflicts -------------------------------------------------------------


class NameInUse(Conflict):
    """The name is already taken by another object."""


class ProxyInUse(Conflict):
    """The object is part of a proxy, or a proxy uses it (its sandbox, a leg, one of its
    networks); ``proxy_id`` and ``proxy`` (its name) say which: remove the proxy instead."""


class AddressInUse(Conflict):
    """The address is already allocated."""


class PoolOverlap(Conflict):
    """The requested pool overlaps a pool already in use."""


class PoolExhausted(Conflict):
    """No free address (or no free default pool) is left."""


class PortsExhausted(PoolExhausted):
    """No free host port is left in the automatic range (``-p CONTAINER``)."""


class KeyExists(Conflict):
    """A create-only store write found the key already there."""


class KeyModified(Conflict):
    """A compare-and-swap lost: the key changed since it was read."""


class WatchCompacted(Conflict):
    """A watch asked to resume from a revision the store no longer keeps.

    The watcher must re-read the current state (``list``) and watch anew.
    """


# --- bad requests ----------------------------------------------------------


class Ambiguous(BadRequest):
    """A reference (an id prefix) that names several objects; ``ref`` and ``matches`` (how many).
    Give more of the id, as Docker asks."""


class InvalidName(BadRequest):
    """A name is not acceptable (length, characters)."""


class InvalidSubnet(BadRequest):
    """A subnet or address is malformed or unsuitable."""


class InvalidOption(BadRequest):
    """An option is unknown or has an invalid value."""


class NotANamespace(BadRequest):
    """A path given as a network namespace is not one (or is one no container may use)."""


# --- unavailable -----------------------------------------------------------


class StoreUnavailable(Unavailable):
    """The key-value store cannot be reached or did not answer in time."""


class StoreOutcomeUnknown(StoreUnavailable):
    """A write reached the store, its answer was lost, and the store stayed unreachable
    long enough that whether it was applied cannot be told: the write may stand or not
    (``key`` names it).  Read the key again once the store answers.  A plain
    ``StoreUnavailable`` from a write means it was not applied."""


class LockLost(Unavailable):
    """A ``Store.lock`` held by this process was lost while its body ran: its key was taken
    or removed by someone else, or the store could not be reached to refresh it before its TTL
    ran out (``key`` names it).  The body was cancelled; another holder may have the lock."""


class TunnelDown(Unavailable):
    """No working WireGuard tunnel (a recent handshake) to the peer hosts named in
    ``nodes`` came up in time; an encrypted network is not joined without one."""


class IncompatibleTunnel(Conflict):
    """A peer host's WireGuard settings (its encryption range) differ from this host's:
    their encrypted overlays cannot reach each other; ``node`` names it."""


class CorruptRecord(LibnetError):
    """A stored record cannot be read (not JSON, wrong kind or schema, missing
    fields); ``key`` names it, so an operator can repair or remove it."""

    kind = "corrupt_record"


# --- kernel ----------------------------------------------------------------


class KernelObjectExists(Conflict, KernelError):
    """The kernel already has that object (EEXIST)."""


class KernelObjectMissing(NotFound, KernelError):
    """The kernel has no such object (ENOENT, ENODEV, ESRCH, ...)."""


class KernelInvalidArgument(BadRequest, KernelError):
    """The kernel rejected the arguments (EINVAL, ERANGE, ...)."""


class KernelBusy(Unavailable, KernelError):
    """The kernel object is busy or resources ran out (EBUSY, ENOBUFS, ...)."""


class KernelPermissionDenied(KernelError):
    """The operation needs privileges this process lacks (EPERM, EACCES)."""
