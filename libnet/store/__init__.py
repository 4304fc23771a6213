"""libnet's key-value stores behind one contract (:class:`Store`).

``open_store(url)`` picks the backend:

============================================  ==================================
``memory://``                                 in-process, for tests
``sqlite:///var/lib/libnet/store.db``         the default: one file per machine
``etcd://10.0.0.1:2379,10.0.0.2:2379``        etcd v3 cluster (extra ``etcd``)
``consul://10.0.0.1:8500``                    Consul KV (extra ``consul``)
============================================  ==================================

A ``?timeout=SECONDS`` query sets how long a call may take before
``StoreUnavailable`` (default 5).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import parse_qs, urlsplit

from libnet.config import DEFAULT_STORE
from libnet.errors import BadRequest
from libnet.store.base import DEFAULT_TIMEOUT, MAX_VALUE, KVPair, Store, WatchEvent

DEFAULT_URL = DEFAULT_STORE
SCHEMES = ("memory", "sqlite", "etcd", "consul")

__all__ = ["DEFAULT_URL", "MAX_VALUE", "KVPair", "Store", "WatchEvent", "open_store", "parse_endpoints"]


def _bad(url: str, why: str) -> BadRequest:
    return BadRequest(f"invalid store URL {url!r}: {why}", url=url)


def parse_endpoints(url: str, netloc: str, default_port: int) -> list[tuple[str, int]]:
    """``host:port,host:port`` (IPv6 hosts in brackets) -> [(host, port)]."""
    endpoints = []
    for part in netloc.split(","):
        if not part:
            raise _bad(url, "empty host in the host list")
        if part.startswith("["):
            host, _, rest = part[1:].partition("]")
            port_s = rest[1:] if rest.startswith(":") else ""
            if rest and not rest.startswith(":"):
                raise _bad(url, f"malformed IPv6 host {part!r}")
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise _bad(url, f"{host!r} is not an IPv6 address") from None
        else:
            host, _, port_s = part.partition(":")
        if not host:
            raise _bad(url, f"missing host in {part!r}")
        try:
            port = int(port_s) if port_s else default_port
        except ValueError:
            raise _bad(url, f"port {port_s!r} is not a number") from None
        if not 0 < port < 65536:
            raise _bad(url, f"port {port} out of range")
        endpoints.append((host, port))
    return endpoints


def open_store(url: str = DEFAULT_URL, timeout: float | None = None) -> Store:
    """A store for ``url``; nothing is contacted until the first call."""
    if not isinstance(url, str) or "://" not in url:
        raise _bad(str(url), "expected SCHEME://..., one of " + ", ".join(f"{s}://" for s in SCHEMES))
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. a malformed [IPv6] host
        raise _bad(url, f"{exc} (not an IPv6 address in brackets?)") from None
    query = parse_qs(parts.query)
    if set(query) - {"timeout"}:
        raise _bad(url, f"unknown option(s) {sorted(set(query) - {'timeout'})}; only 'timeout' is known")
    if timeout is None:
        try:
            timeout = float(query["timeout"][0]) if "timeout" in query else DEFAULT_TIMEOUT
        except ValueError:
            raise _bad(url, "timeout must be a number of seconds") from None
    if not 0 < timeout <= 3600:
        raise _bad(url, "timeout must be between 0 and 3600 seconds")

    scheme = parts.scheme
    if scheme == "memory":
        if parts.netloc or parts.path:
            raise _bad(url, "memory:// takes no host or path")
        from libnet.store.memory import MemoryStore

        return MemoryStore()
    if scheme == "sqlite":
        if parts.netloc:
            raise _bad(url, "sqlite URLs have no host: sqlite:///absolute/path/store.db")
        if not parts.path.startswith("/") or parts.path.endswith("/"):
            raise _bad(url, "expected an absolute file path: sqlite:///absolute/path/store.db")
        from libnet.store.sqlite import SQLiteStore

        return SQLiteStore(parts.path, timeout=timeout)
    if scheme == "etcd":
        if parts.path not in ("", "/"):
            raise _bad(url, "etcd URLs have no path: etcd://host:2379[,host:2379]")
        endpoints = parse_endpoints(url, parts.netloc, 2379)
        try:
            from libnet.store.etcd import EtcdStore
        except ImportError as exc:
            raise _bad(url, f"the etcd client is not installed ({exc.name}): pip install 'libnet[etcd]'") from None
        return EtcdStore(endpoints, timeout=timeout)
    if scheme == "consul":
        if parts.path not in ("", "/"):
            raise _bad(url, "consul URLs have no path: consul://host:8500")
        endpoints = parse_endpoints(url, parts.netloc, 8500)
        if len(endpoints) != 1:
            raise _bad(url, "consul:// takes one agent address (Consul agents forward to the servers)")
        try:
            from libnet.store.consul import ConsulStore
        except ImportError as exc:
            raise _bad(url, f"the Consul client is not installed ({exc.name}): pip install 'libnet[consul]'") from None
        return ConsulStore(*endpoints[0], timeout=timeout)
    raise _bad(url, f"unknown scheme {scheme!r}; use one of " + ", ".join(f"{s}://" for s in SCHEMES))
