"""The key-value store contract every backend implements.

libnet keeps its desired state in a store (DESIGN.md, "State and the store").
Backends: memory (tests), SQLite (default, one machine), etcd and Consul
(clusters); :func:`libnet.store.open_store` picks one from a URL.

Semantics all backends share, checked by one conformance test module:

- keys are ``/``-separated paths like ``libnet/v1/networks/ID``: no empty
  segment, no ``.`` or ``..``, printable ASCII, at most 512 characters;
- values are ``bytes`` of at most 1 MiB (:data:`MAX_VALUE`);
- every write gets a store-wide, increasing ``revision``; a :class:`KVPair`
  carries the revision of its last modification, which is what
  ``atomic_put``/``atomic_delete`` compare against;
- ``delete`` of a missing key succeeds; ``atomic_delete`` of one raises
  ``KeyNotFound``;
- a TTL makes a key disappear (with a delete event) after that many seconds
  unless written again;
- watches yield every change after their start revision exactly once, in
  revision order, and resume across reconnects from the last revision seen;
  when that history is gone they raise ``WatchCompacted``;
- an unreachable store raises ``StoreUnavailable`` within the configured
  timeout (5 s by default) instead of hanging.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from libnet.errors import BadRequest, KeyExists, KeyModified, KeyNotFound

MAX_VALUE = 1 << 20
MAX_KEY = 512
DEFAULT_TIMEOUT = 5.0
_KEY_RE = re.compile(r"[A-Za-z0-9\-_.:@=+,%]+(?:/[A-Za-z0-9\-_.:@=+,%]+)*")


@dataclass(frozen=True)
class KVPair:
    """A key, its value and the revision of its last modification."""

    key: str
    value: bytes
    revision: int


@dataclass(frozen=True)
class WatchEvent:
    """One change: ``put`` (with the new value) or ``delete`` (value ``b""``)."""

    kind: Literal["put", "delete"]
    key: str
    value: bytes
    revision: int


@dataclass(frozen=True)
class Write:
    """One write of :func:`write_all`: ``value`` None deletes the key.  ``checked``: only if
    the key is still at ``previous`` (None: absent), as ``atomic_put``/``atomic_delete``
    (which raise the same errors); unchecked, as ``put``/``delete`` (absent is fine)."""

    key: str
    value: bytes | None
    previous: KVPair | None = None
    checked: bool = False


async def write_all(store: Store, writes: Sequence[Write]) -> list[KVPair | None]:
    """Make ``writes`` in order: in one transaction (all or none) on a store with
    ``atomic_batch`` (SQLite), else one call each, as separate writes always were.  Each
    transaction costs a store a commit (issue 22: 15 of them per connect+disconnect were
    a fifth of the agent's time), so writes that belong together go in one.  Returns the
    new pair of each put, None for each delete."""
    batch = getattr(store, "atomic_batch", None)
    if batch is not None:
        result: list[KVPair | None] = await batch(writes)
        return result
    out: list[KVPair | None] = []
    for w in writes:
        if w.value is None:
            if w.checked:
                if w.previous is None:
                    raise BadRequest("a checked delete needs the pair it expects", key=w.key)
                await store.atomic_delete(w.key, w.previous)
            else:
                await store.delete(w.key)
            out.append(None)
        elif w.checked:
            out.append(await store.atomic_put(w.key, w.value, w.previous))
        else:
            out.append(await store.put(w.key, w.value))
    return out


@runtime_checkable
class Store(Protocol):
    """An asynchronous key-value store with compare-and-swap and watches."""

    #: the URL scheme of the backend ("memory", "sqlite", "etcd", "consul")
    scheme: str

    async def revision(self) -> int:
        """The store's current revision: watch from it to miss nothing after a read."""
        ...

    async def get(self, key: str) -> KVPair:
        """The value of ``key``; ``KeyNotFound`` if absent."""
        ...

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> KVPair:
        """Write ``key`` unconditionally; with ``ttl`` it expires after that many seconds."""
        ...

    async def delete(self, key: str) -> bool:
        """Remove ``key``; absent is fine.  True if it was there."""
        ...

    async def exists(self, key: str) -> bool:
        """Whether ``key`` is present."""
        ...

    async def list(self, prefix: str) -> list[KVPair]:
        """Every pair whose key starts with ``prefix``, sorted by key."""
        ...

    async def atomic_put(self, key: str, value: bytes, previous: KVPair | None, ttl: float | None = None) -> KVPair:
        """Compare-and-swap.

        ``previous=None`` creates only (``KeyExists`` if present); otherwise
        the write happens only if the key still has ``previous.revision``
        (``KeyModified`` if it changed, ``KeyNotFound`` if it was deleted).
        Returns the new pair.
        """
        ...

    async def atomic_delete(self, key: str, previous: KVPair) -> None:
        """Delete only if unchanged since ``previous`` (``KeyModified``/``KeyNotFound``)."""
        ...

    def watch(self, key: str, start_revision: int | None = None) -> AsyncIterator[WatchEvent]:
        """Changes of one key with a revision above ``start_revision``.

        Without ``start_revision`` the watch starts when iteration starts;
        to miss nothing between a read and the watch, pass the revision
        from :meth:`revision` taken before the read.
        """
        ...

    def watch_prefix(self, prefix: str, start_revision: int | None = None) -> AsyncIterator[WatchEvent]:
        """Changes of every key under ``prefix``, as :meth:`watch`."""
        ...

    def lock(self, key: str, ttl: float = 15.0) -> AbstractAsyncContextManager[None]:
        """A cluster-wide mutex held while the ``async with`` body runs.

        The lock key expires after ``ttl`` seconds if its holder dies; a live holder
        refreshes it.  If it is lost while the body runs (taken or removed by another
        writer, or not refreshed within ``ttl`` because the store did not answer), the
        body is cancelled and ``LockLost`` (``key``) raised: another holder may have it.
        """
        ...

    async def close(self) -> None:
        """Release connections, threads and watchers."""
        ...


#: keys found valid lately, each checked once while it stays here (issue 22: the check -- a regex
#: over a key of two 64-digit ids, ~4 us -- ran ~35 times per connect+disconnect, ~2% of the
#: agent's event loop); at most VALID_KEYS_KEPT, then forgotten all at once (~100 KiB)
_valid_keys: dict[str, None] = {}
VALID_KEYS_KEPT = 512


def check_key(key: object, prefix: bool = False) -> str:
    """Validate a key (or, with ``prefix=True``, a prefix that may end in ``/``)."""
    # type(), not key.__class__ (an attribute a subclass may set to str): only a plain str's == and
    # hash are the text's own
    if type(key) is str and not prefix and key in _valid_keys:
        return key
    if not isinstance(key, str):
        raise BadRequest(f"store key must be a string, not {type(key).__name__}", key=repr(key))
    body = key[:-1] if prefix and key.endswith("/") else key
    if prefix and body == "":
        return key  # the empty prefix: everything
    if not body or len(key) > MAX_KEY:
        raise BadRequest(f"store key must be 1-{MAX_KEY} characters", key=key)
    if _KEY_RE.fullmatch(body) is None:
        raise BadRequest("store key needs non-empty segments of [A-Za-z0-9-_.:@=+,%] between '/'", key=key)
    wrapped = f"/{body}/"
    if "/./" in wrapped or "/../" in wrapped:
        raise BadRequest("store key has a '.' or '..' segment", key=key)
    if type(key) is str and not prefix:  # a str subclass is checked every time
        if len(_valid_keys) >= VALID_KEYS_KEPT:
            _valid_keys.clear()
        _valid_keys[key] = None
    return key


def check_value(key: str, value: object) -> bytes:
    """Validate a value: bytes of at most :data:`MAX_VALUE`."""
    if not isinstance(value, bytes):
        raise BadRequest(f"store value must be bytes, not {type(value).__name__}", key=key)
    if len(value) > MAX_VALUE:
        raise BadRequest(f"store value of {len(value)} bytes exceeds the 1 MiB limit", key=key)
    return value


def check_ttl(key: str, ttl: object) -> float | None:
    """Validate a TTL: None or a positive number of seconds."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= 10 * 365 * 86400:
        raise BadRequest(f"invalid ttl {ttl!r}: a positive number of seconds", key=key)
    return float(ttl)


def check_previous(key: str, cur: KVPair | None, previous: KVPair | None) -> None:
    """Raise the CAS error that fits, shared by all backends."""
    if previous is None:
        if cur is not None:
            raise KeyExists("key already exists", key=key, revision=cur.revision)
        return
    if cur is None:
        raise KeyNotFound("key was deleted", key=key, expected_revision=previous.revision)
    if cur.revision != previous.revision:
        raise KeyModified("key was modified", key=key, expected_revision=previous.revision, revision=cur.revision)
