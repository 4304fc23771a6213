"""open_store: URLs to backends, and clear errors for bad ones."""

from __future__ import annotations

import pytest

from libnet.errors import BadRequest
from libnet.store import open_store
from libnet.store.etcd import EtcdStore
from libnet.store.memory import MemoryStore
from libnet.store.sqlite import SQLiteStore


def test_good_urls() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    s = open_store("sqlite:///var/lib/libnet/store.db?timeout=2")
    assert isinstance(s, SQLiteStore) and s.path == "/var/lib/libnet/store.db" and s.timeout == 2
    e = open_store("etcd://10.0.0.1,10.0.0.2:2380,[2001:db8::1]:2381")
    assert isinstance(e, EtcdStore)
    assert e.endpoints == [("10.0.0.1", 2379), ("10.0.0.2", 2380), ("2001:db8::1", 2381)]
    assert open_store("consul://127.0.0.1").port == 8500


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("", "expected SCHEME://"),
        ("redis://host", "unknown scheme 'redis'"),
        ("sqlite://relative/path.db", "no host"),
        ("sqlite:///dir/", "absolute file path"),
        ("etcd://", "empty host"),
        ("etcd://host:port", "not a number"),
        ("etcd://host:70000", "out of range"),
        ("etcd://[nothex]:1", "not an IPv6 address"),
        ("etcd://h/path", "no path"),
        ("memory://x", "no host or path"),
        ("sqlite:///a.db?timeout=soon", "timeout must be a number"),
        ("sqlite:///a.db?timeout=-1", "between 0 and 3600"),
        ("sqlite:///a.db?colour=blue", "unknown option"),
        ("consul://a:1,b:2", "one agent address"),
    ],
)
def test_bad_urls_name_the_problem(url: str, says: str) -> None:
    with pytest.raises(BadRequest) as err:
        open_store(url)
    assert says in str(err.value)
    assert err.value.ids["url"] == url


async def test_sqlite_page_cache_is_bounded_per_connection(tmp_path) -> None:
    """Each connection's page cache is CACHE_KIB (SQLite's default, 2,000 KiB each, filled
    up to 8 MiB of an agent's RSS with a local and a cluster store: issue 22); a value
    larger than the cache still reads back."""
    from libnet.store import sqlite

    store = SQLiteStore(str(tmp_path / "s.db"))
    try:
        big = bytes(range(256)) * 4096  # 1 MiB: more pages than the cache holds
        await store.put("libnet/v1/big", big)
        assert (await store.get("libnet/v1/big")).value == big
        for db in (store._inline_conn(), store._blocking_conn()):
            assert db.execute("PRAGMA cache_size").fetchone()[0] == -sqlite.CACHE_KIB
    finally:
        await store.close()
