"""Stored objects as versioned JSON, and the one way to update them.

Every object libnet stores is a JSON document
``{"schema": N, "kind": "network", "data": {...}}``: the schema version lets
a newer libnet read (and migrate) what an older one wrote, and refuse what a
newer one wrote instead of misreading it.

Compatibility rule (upgrades, agents of two versions sharing a cluster
store): within one schema version a kind's fields are only *added*, each with
a default, never renamed, removed or given another meaning; readers ignore
fields they do not know (:func:`_fields`), so an older agent still reads what
a newer one wrote.  A change that cannot be made so raises
:data:`SCHEMA_VERSION`; the newer libnet reads every older schema (migrating
on read, writing the new one on its next update) and an older one refuses
the newer schema with a message naming it.

:func:`update` is the only way code changes a shared object: read, apply a
pure function, compare-and-swap on the revision read, and on a lost race
retry with jittered exponential backoff, a bounded number of times.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import json
import os
import random
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from libnet.errors import BadRequest, KeyExists, KeyModified, KeyNotFound, Unavailable
from libnet.store.base import KVPair, Store

SCHEMA_VERSION = 1
DEFAULT_ATTEMPTS = 100


class Contention(Unavailable):
    """A read-modify-CAS loop lost every one of its attempts; retryable later."""


def encode(kind: str, data: dict[str, Any], schema: int = SCHEMA_VERSION) -> bytes:
    """Serialise ``data`` as a versioned document of ``kind``."""
    return json.dumps({"schema": schema, "kind": kind, "data": data}, separators=(",", ":"), sort_keys=True).encode()


def decode(raw: bytes, kind: str, *, intern: bool = True) -> dict[str, Any]:
    """The ``data`` of a versioned document, checking kind and schema.  ``intern``: with
    its keys interned (for documents that are kept; a copy decoded to be changed and
    written back is dropped at once, and interning was half of its decoding time)."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"stored {kind} is not valid JSON: {exc}", kind=kind) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
        raise BadRequest(f"stored {kind} is not a versioned document", kind=kind)
    if doc.get("kind") != kind:
        raise BadRequest(f"stored object is a {doc.get('kind')!r}, expected {kind!r}", kind=kind)
    schema = doc.get("schema")
    if not isinstance(schema, int) or not 1 <= schema <= SCHEMA_VERSION:
        raise BadRequest(
            f"stored {kind} has schema {schema!r}; this libnet reads 1..{SCHEMA_VERSION}", kind=kind, schema=schema
        )
    data: dict[str, Any] = _interned_keys(doc["data"]) if intern else doc["data"]
    return data


def _interned_keys(value: dict[str, Any]) -> dict[str, Any]:
    """``value`` (a decoded JSON object) with every dict key interned, also in nested
    objects and lists: the decoder makes new key strings for each document, so 1,000
    cached endpoints and sandboxes held 28,000 copies of the same field names (~1.5 MiB
    of an agent's RSS: issue 22).  Only dicts and lists are walked (half the time of
    looking at every value)."""
    intern = sys.intern
    out = {}
    for k, v in value.items():
        cls = v.__class__
        if cls is dict:
            v = _interned_keys(v)
        elif cls is list and v:
            v = _interned_list(v)
        out[intern(k)] = v
    return out


def stored_copy(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as :func:`decode` gives it back after :func:`encode`: dicts and lists anew
    (tuples as lists), keys interned, nothing shared with ``data`` -- for keeping the document
    just written instead of decoding it again when it is next read (issue 22)."""
    intern = sys.intern
    out = {}
    for k, v in data.items():
        cls = v.__class__
        if cls is dict:
            v = stored_copy(v)
        elif cls is list or cls is tuple:
            v = [stored_copy(x) if x.__class__ is dict else x for x in v]
        out[intern(k)] = v
    return out


def _interned_list(items: list[Any]) -> list[Any]:
    return [
        _interned_keys(x) if x.__class__ is dict else _interned_list(x) if x.__class__ is list else x for x in items
    ]


async def update(
    store: Store,
    key: str,
    mutate: Callable[[bytes | None], bytes | None],
    *,
    ttl: float | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
    base_delay: float = 0.001,
    max_delay: float = 0.05,
    first: KVPair | None = None,
) -> KVPair | None:
    """Read ``key``, write ``mutate(old)`` if nobody changed it meanwhile.

    ``first``: the pair of ``key`` the caller read already (issue 22: one read per
    record per operation); the first attempt starts from it instead of reading, and
    the write is checked against its revision as always, so a pair that is no longer
    current only costs a lost race (no wait) and the read it saved.

    ``mutate`` gets the current value (None if absent) and returns the new
    value, or None to delete the key; it may run several times, so it must be
    pure, and it may raise to abort (e.g. ``NameInUse``).  Returns the
    written pair (None after a delete).  After ``attempts`` lost races it
    raises :class:`Contention`.
    """
    delay = base_delay
    guess = first if first is not None and first.key == key else None
    for _ in range(attempts + (guess is not None)):
        cur: KVPair | None
        if guess is not None:
            cur = guess
        else:
            try:
                cur = await store.get(key)
            except KeyNotFound:
                cur = None
        try:
            new = mutate(None if cur is None else cur.value)
        except Exception:
            if guess is None:
                raise
            guess = None  # refused on the caller's pair: decide on the current one
            continue
        try:
            if new is None:
                if cur is not None:
                    await store.atomic_delete(key, cur)
                return None
            if cur is not None and new == cur.value and ttl is None:
                if guess is not None:  # unchanged from the caller's pair: is that pair current?
                    guess = None
                    continue
                return cur  # nothing to change
            return await store.atomic_put(key, new, cur, ttl=ttl)
        except (KeyExists, KeyModified, KeyNotFound):
            if guess is not None:  # the caller's pair was not current: read it afresh
                guess = None
                continue
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, max_delay)
    raise Contention(f"gave up updating after {attempts} conflicting attempts", key=key, attempts=attempts)


async def update_json(
    store: Store,
    key: str,
    kind: str,
    mutate: Callable[[dict[str, Any] | None], dict[str, Any] | None],
    **kw: Any,
) -> dict[str, Any] | None:
    """:func:`update` for versioned JSON documents: ``mutate`` sees and returns ``data``."""
    result: list[dict[str, Any] | None] = [None]

    def apply(raw: bytes | None) -> bytes | None:
        new = mutate(None if raw is None else decode(raw, kind))
        result[0] = new
        return None if new is None else encode(kind, new)

    await update(store, key, apply, **kw)
    return result[0]


# --- the stored objects -----------------------------------------------------------


_NAMES: dict[type, tuple[str, ...]] = {}


def _names(cls: type) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """Only the fields ``cls`` knows: documents written by a newer libnet with
    extra fields of the same schema still load."""
    return {k: data[k] for k in _names(cls) if k in data}


def to_data(obj: Any) -> dict[str, Any]:
    """A stored object as a plain dict (shallow: nested values are JSON-ready already)."""
    return {k: getattr(obj, k) for k in _names(type(obj))}


@dataclass
class Network:
    """A named L2/L3 domain served by one driver."""

    KIND: ClassVar[str] = "network"

    id: str
    name: str
    driver: str
    scope: str
    internal: bool = False
    ipv4_pool: str | None = None  # IPAM pool id
    ipv4_subnet: str | None = None
    ipv4_gateway: str | None = None  # interface CIDR
    ipv6_pool: str | None = None
    ipv6_subnet: str | None = None
    ipv6_gateway: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    created: float = 0.0
    instance: str = ""  # the libnet instance that created it
    removing: str = ""  # the instance deleting it: a crash mid-delete is rolled forward by its reconcile
    # (records written before these fields load with the defaults: no range, no aux addresses)
    ipv4_range: str | None = None  # dynamic IPv4 addresses only from here (Docker's --ip-range)
    ipv6_range: str | None = None
    aux_addresses: dict[str, str] = field(default_factory=dict)  # name -> address, never handed out

    def to_data(self) -> dict[str, Any]:
        return to_data(self)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Network:
        return cls(**_fields(cls, data))


@dataclass
class Endpoint:
    """One interface on one network, joined to at most one sandbox."""

    KIND: ClassVar[str] = "endpoint"

    id: str
    name: str
    network_id: str
    mac: str
    ipv4: str | None = None  # interface CIDR
    ipv6: str | None = None
    aliases: list[str] = field(default_factory=list)
    services: list[str] = field(default_factory=list)  # "http:80/tcp": SRV records
    ports: list[dict[str, Any]] = field(default_factory=list)  # PortMapping fields
    sandbox_id: str | None = None
    ifname: str | None = None  # name inside the sandbox once joined
    gateway: bool = False  # carries the sandbox's default routes
    connecting: bool = False  # made by connect(), join not finished yet: reconcile removes it
    node: str = ""  # the host the endpoint was made on
    created: float = 0.0
    instance: str = ""  # the libnet instance that made it
    leaving: str = ""  # the instance unplugging it: a crash mid-leave is rolled forward by its reconcile
    removing: str = ""  # the instance deleting it (disconnect, endpoint rm): rolled forward likewise
    proxy: str = ""  # the id of the proxy whose leg it is (only that proxy's removal deletes it)
    dns: bool = True  # published in DNS (name, aliases, PTR, SRV); a proxy's back leg is not

    def to_data(self) -> dict[str, Any]:
        return to_data(self)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Endpoint:
        return cls(**_fields(cls, data))


@dataclass
class Sandbox:
    """A network namespace (a container) and the endpoints joined to it."""

    KIND: ClassVar[str] = "sandbox"

    id: str
    netns: str  # path of the namespace
    owned: bool  # created by libnet, so deleted with the sandbox
    hostname: str | None = None
    endpoints: list[str] = field(default_factory=list)  # ids, in join order
    created: float = 0.0
    removing: str = ""  # the instance deleting it: a crash mid-delete is rolled forward by its reconcile
    #: its own DNS settings (``--dns``, ``--dns-search``, ``--dns-option``); empty: the host's.
    #: Records written before these fields existed load with them empty.
    dns: list[str] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)
    dns_options: list[str] = field(default_factory=list)
    #: libnet writes its resolv.conf and hosts under the state dir (False: the runtime writes the
    #: container's own, as CNI runtimes do; nothing reads libnet's).  Older records load True.
    files: bool = True
    #: who asked for it: "" the library or the API, ``cni`` a CNI ADD (what CNI's GC may remove)
    origin: str = ""
    #: the identity of its namespace when it was made (:meth:`libnet.namespaces.Namespaces.identity`):
    #: the key of its claim on that namespace (:meth:`libnet.repository.Repository.netns_claim`);
    #: "" for records written before claims existed
    netns_id: str = ""
    #: the libnet instance that made it (its files are under that instance's state dir); "" for
    #: records written before this field existed and those ``--adopt`` rebuilt (files=True is a
    #: guess there: their files are repaired only where their directory is)
    instance: str = ""

    def to_data(self) -> dict[str, Any]:
        return to_data(self)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Sandbox:
        return cls(**_fields(cls, data))


@functools.lru_cache(maxsize=16384)
def address_of(cidr: str) -> str:
    """The bare address of an interface CIDR in its canonical text form
    (``"2001:DB8::0:1/64"`` -> ``"2001:db8::1"``, as the kernel reports it).

    Cached: peer tables and DNS records derive the same few thousand
    addresses on every change of a network's peers, and parsing is most of
    that cost.  Raises ``ValueError`` for a malformed CIDR.  A plain
    ``ADDRESS/LEN`` goes through the C library's ``inet_pton``/``inet_ntop`` (a
    tenth of :mod:`ipaddress`'s time: IPv6 addresses are new with each
    connect, so they miss the cache); anything else, and any text those would
    print otherwise than :mod:`ipaddress`, through :mod:`ipaddress`."""
    addr, slash, plen = cidr.partition("/")
    v6 = ":" in addr
    if (not slash or (plen.isascii() and plen.isdigit() and int(plen) <= (128 if v6 else 32))) and "%" not in addr:
        family = socket.AF_INET6 if v6 else socket.AF_INET
        try:
            out = socket.inet_ntop(family, socket.inet_pton(family, addr))
        except (OSError, ValueError):
            out = ""
        if (out and "." not in out) if v6 else out == addr:
            return out
    return str(ipaddress.ip_interface(cidr).ip)


def mac_from_ipv4(cidr: str | None) -> str:
    """``02:42`` + the IPv4 address: a reused address never meets a stale MAC
    elsewhere; without IPv4 a random locally administered MAC."""
    if cidr:
        address = address_of(cidr)
        packed = socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
        return "02:42:" + ":".join(f"{b:02x}" for b in packed)
    return "02:" + ":".join(f"{b:02x}" for b in os.urandom(5))


#: the first byte of a proxy leg's MAC (locally administered, unicast): no other endpoint's
#: MAC starts so (:func:`mac_from_ipv4` gives ``02:...``), so the host's bridges can tell frames
#: to a proxy by it even when networks overlap (:mod:`libnet.kernel.proxy_nat`, ``untrack``)
PROXY_MAC_PREFIX = "06:"


def proxy_leg_mac(cidr: str | None) -> str:
    """A proxy leg's MAC: :data:`PROXY_MAC_PREFIX` + ``42`` + the IPv4 address (random
    without IPv4) -- never the MAC of a user's endpoint, whatever the addresses."""
    return PROXY_MAC_PREFIX + mac_from_ipv4(cidr)[3:]


def is_proxy_mac(mac: str) -> bool:
    """Whether ``mac`` is of :func:`proxy_leg_mac`'s range."""
    return mac.lower().startswith(PROXY_MAC_PREFIX)


@dataclass
class Proxy:
    """A libnet-managed sandbox with a leg on two networks that forwards named
    services from ``source`` to ``target`` (kernel NAT, :mod:`libnet.proxies`).

    ``services``: dicts ``{"alias", "port", "protocol", "listen"}``: connections
    to the proxy's ``source`` address on ``listen`` go to ``port`` of the
    endpoints on ``target`` named or aliased ``alias``.  The sandbox's id is the
    proxy's id; it lives on ``node``."""

    KIND: ClassVar[str] = "proxy"

    id: str
    name: str
    scope: str  # "global" when both networks are, else "local"
    source: str  # network id (NET_A): where clients are
    target: str  # network id (NET_B): where the backends are
    services: list[dict[str, Any]] = field(default_factory=list)
    node: str = ""  # the host whose agent runs it
    front_endpoint: str = ""  # endpoint ids of its legs, once made
    back_endpoint: str = ""
    created: float = 0.0
    instance: str = ""
    creating: str = ""  # the instance making it: a crash part way is rolled back by its reconcile
    removing: str = ""  # the instance deleting it: rolled forward likewise

    def to_data(self) -> dict[str, Any]:
        return to_data(self)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Proxy:
        return cls(**_fields(cls, data))
