"""Embedded SQLite store, libnet's default (``sqlite:///path/store.db``).

One file shared safely by several processes on one machine:

- WAL journal, so readers never block the writer; every write is a
  ``BEGIN IMMEDIATE`` transaction (one writer at a time across processes,
  waiting up to the store timeout, then ``StoreUnavailable``);
- revisions come from an AUTOINCREMENT event log, so they grow store-wide and
  are never reused; each write appends its event in the same transaction;
- TTLs are wall-clock expiry times; expired rows are invisible at once; a
  write of the key removes its expired row first (with a delete event), and
  the others are removed (likewise) by a write or watcher poll at most
  :data:`PURGE_INTERVAL` later (issue 22: a purge query in every write
  transaction was ~8% of its cost);
- watchers of this process are woken by its own writes directly, and by a
  poller that checks ``PRAGMA data_version`` every 10 ms for commits of other
  processes, which delivers their events well within 100 ms.

Each call runs on the event loop when SQLite is free (a thread hop costs
three times the statement) and moves to a worker thread only to wait for
another process's write lock, which keeps the event loop free.  The WAL is
checkpointed on that worker thread too, every :data:`CHECKPOINT_EVERY` writes
of this process (SQLite's automatic checkpoint ran inside a commit on the
event loop, with two ``fdatasync``: 2-30 ms stalls of every request, issue 22);
if those checkpoints keep giving up (a loaded machine), the writer that reaches
:data:`WAL_HARD_LIMIT_WRITES` waits for one that truncates the WAL.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from libnet.errors import BadRequest, KeyNotFound, StoreUnavailable
from libnet.store.base import (
    DEFAULT_TIMEOUT,
    KVPair,
    WatchEvent,
    Write,
    check_key,
    check_previous,
    check_ttl,
    check_value,
)
from libnet.store.locking import cas_lock
from libnet.store.logwatch import LogWatchMixin

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    revision INTEGER NOT NULL,
    expires REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_expires ON kv(expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    revision INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    kind INTEGER NOT NULL,  -- 1 put, 2 delete
    value BLOB NOT NULL
);
"""
_PUT, _DELETE = 1, 2
_KINDS = {_PUT: "put", _DELETE: "delete"}


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    msg = str(exc)
    return "locked" in msg or "busy" in msg


def _prefix_range(prefix: str) -> tuple[str, str]:
    """[lo, hi) covering every key starting with ``prefix`` (index-friendly)."""
    return prefix, prefix + "\U0010ffff"


#: seconds between purges of expired keys in write transactions (a key written is purged at once)
PURGE_INTERVAL = 0.1

#: this process's writes between two WAL checkpoints (on the worker thread): at ~4 pages a
#: write, ~8 MiB of WAL; each cycle costs the writer that starts the WAL again one fdatasync
CHECKPOINT_EVERY = 500

#: WAL frames (pages) past which a checkpoint makes sure the WAL starts again (~16 MiB)
WAL_LIMIT_FRAMES = 4096

#: seconds a checkpoint waits for writers and readers to let it finish the WAL (worker thread)
RESTART_WAIT = 0.05

#: this process's writes since the WAL last started again past which the writer that gets
#: there waits for a checkpoint that truncates it (~27 MiB of WAL at ~3.5 pages a write):
#: the worker's checkpoints above give up after RESTART_WAIT, and under load (a busy event
#: loop, a CI machine) they can keep giving up while the WAL grows
WAL_HARD_LIMIT_WRITES = 4 * CHECKPOINT_EVERY

#: seconds that truncating checkpoint waits for writers and readers to let it through
TRUNCATE_WAIT = 1.0

#: seconds between the end of a refused truncate and this process's next try (and at least
#: CHECKPOINT_EVERY writes later): TRUNCATE_WAIT after the first refusal in a row, twice that after
#: the second, ... up to this.  A refused truncate held the write lock, every writer of every
#: process waiting, for all of TRUNCATE_WAIT; retried every CHECKPOINT_EVERY writes (~0.1 s of
#: them) while another process read an old snapshot, one process had the lock ~95% of the time
#: and another process's writes failed after their whole store timeout
TRUNCATE_BACKOFF_MAX = 4 * TRUNCATE_WAIT

#: page cache per connection, KiB (SQLite's default is 2,000 per connection: up to 8 MiB of
#: an agent's RSS with a local and a cluster store; reads it misses come from the OS's cache)
CACHE_KIB = 256


class SQLiteStore(LogWatchMixin):
    """The default store: a SQLite file; see the module docstring."""

    scheme = "sqlite"

    def __init__(
        self, path: str, timeout: float = DEFAULT_TIMEOUT, poll_interval: float = 0.01, history: int = 100_000
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.history = history
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="libnet-sqlite")
        self._inline: sqlite3.Connection | None = None  # event-loop thread, never waits
        self._blocking: sqlite3.Connection | None = None  # worker thread, waits for locks
        self._data_version: int | None = None
        self._writes = 0
        self._purge_due = 0.0  # time.time() from which the next write transaction purges
        self._checkpoint: asyncio.Future[bool] | None = None  # running on the worker thread
        self._since_restart = 0  # this process's writes since the WAL last started again (about)
        self._hard_due = WAL_HARD_LIMIT_WRITES  # _since_restart at which a writer waits for a truncate
        self._hard_after = 0.0  # time.monotonic() before which no writer waits for one (TRUNCATE_BACKOFF_MAX)
        self._refused = 0  # truncates refused in a row
        self._poller: asyncio.Task[None] | None = None
        self._closed = False

    # --- plumbing -------------------------------------------------------------

    def _open(self, busy_timeout: float) -> sqlite3.Connection:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints on the worker thread (_write)
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _inline_conn(self) -> sqlite3.Connection:
        if self._inline is None:
            self._inline = self._open(0)
        return self._inline

    def _blocking_conn(self) -> sqlite3.Connection:
        if self._blocking is None:
            self._blocking = self._open(self.timeout)
        return self._blocking

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(connection, *args)``: inline if SQLite is free, else off the loop.

        A thread hop costs more than the statement itself (about 120 us
        against 40 us here), so each call first runs on the event loop with a
        zero busy timeout; only when another process holds the write lock does
        it wait for it on the worker thread, up to the store timeout.
        """
        if self._closed:
            raise StoreUnavailable("store is closed", path=self.path)
        try:
            return fn(self._inline_conn(), *args)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise StoreUnavailable(f"sqlite: {exc}", path=self.path) from exc

        def body() -> T:
            try:
                return fn(self._blocking_conn(), *args)
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"sqlite: {exc} (waited {self.timeout:g}s)", path=self.path) from exc

        return await asyncio.get_running_loop().run_in_executor(self._exec, body)

    def _write_txn(self, db: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        db.execute("BEGIN IMMEDIATE")
        try:
            now = time.time()
            purge = now >= self._purge_due
            if purge:
                self._purge_expired(db)
            result = fn(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        if purge:  # committed: not before (a rolled-back purge is due again)
            self._purge_due = now + PURGE_INTERVAL
        self._writes += 1
        if self._writes % 1000 == 0:
            # after the commit: an error here must not make the caller retry a
            # write that already happened (a busy database is pruned next time)
            with contextlib.suppress(sqlite3.OperationalError):
                self._prune(db)
        return result

    @staticmethod
    def _current(db: sqlite3.Connection, key: str) -> KVPair | None:
        row = db.execute(
            "SELECT value, revision FROM kv WHERE key = ? AND (expires IS NULL OR expires > ?)",
            (key, time.time()),
        ).fetchone()
        return None if row is None else KVPair(key, row[0], row[1])

    def _current_for_write(self, db: sqlite3.Connection, key: str) -> KVPair | None:
        """:meth:`_current` inside a write transaction: an expired row of ``key`` is removed
        first (its delete event before the write's own), as the periodic purge would."""
        row = db.execute("SELECT value, revision, expires FROM kv WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        if row[2] is not None and row[2] <= time.time():
            self._remove(db, key)
            return None
        return KVPair(key, row[0], row[1])

    @staticmethod
    def _append(db: sqlite3.Connection, kind: int, key: str, value: bytes) -> int:
        cur = db.execute("INSERT INTO events (key, kind, value) VALUES (?, ?, ?)", (key, kind, value))
        return cur.lastrowid  # type: ignore[return-value]

    def _store(self, db: sqlite3.Connection, key: str, value: bytes, ttl: float | None) -> KVPair:
        rev = self._append(db, _PUT, key, value)
        expires = None if ttl is None else time.time() + ttl
        db.execute(
            "INSERT OR REPLACE INTO kv (key, value, revision, expires) VALUES (?, ?, ?, ?)", (key, value, rev, expires)
        )
        return KVPair(key, value, rev)

    def _remove(self, db: sqlite3.Connection, key: str) -> None:
        self._append(db, _DELETE, key, b"")
        db.execute("DELETE FROM kv WHERE key = ?", (key,))

    def _purge_expired(self, db: sqlite3.Connection) -> bool:
        rows = db.execute("SELECT key FROM kv WHERE expires IS NOT NULL AND expires <= ?", (time.time(),)).fetchall()
        for (key,) in rows:
            self._remove(db, key)
        return bool(rows)

    def _prune(self, db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM events WHERE revision <= ?", (self._revision(db) - self.history,))

    @staticmethod
    def _revision(db: sqlite3.Connection) -> int:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return row[0] if row else 0

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        result: T = await self._run(self._write_txn, fn)
        self._notify_watchers()
        self._since_restart += 1
        running = self._checkpoint is not None and not self._checkpoint.done()
        if self._truncate_due():
            await self._truncate_wal()
        elif self._writes % CHECKPOINT_EVERY == 0 and not running:
            self._start_checkpoint(hard=False)
        return result

    def _truncate_due(self) -> bool:
        return self._since_restart >= self._hard_due and time.monotonic() >= self._hard_after

    def _start_checkpoint(self, hard: bool) -> asyncio.Future[bool]:
        began = self._since_restart
        loop = asyncio.get_running_loop()
        if self._closed:  # the worker is shut down or about to be: a write that stood must not fail here
            fut: asyncio.Future[bool] = loop.create_future()
            fut.set_result(False)
            return fut
        fut = loop.run_in_executor(self._exec, self._checkpoint_wal, hard)

        def done(f: asyncio.Future[bool]) -> None:
            if not f.cancelled() and f.exception() is None and f.result():
                # the writes made while it ran may still be in the WAL
                self._since_restart = max(0, self._since_restart - began)
                self._hard_due = WAL_HARD_LIMIT_WRITES
                self._hard_after = 0.0
                self._refused = 0
            elif hard:
                self._refused += 1
                backoff = min(TRUNCATE_WAIT * self._refused, TRUNCATE_BACKOFF_MAX)
                self._hard_after = time.monotonic() + backoff

        fut.add_done_callback(done)
        self._checkpoint = fut
        return fut

    async def _truncate_wal(self) -> None:
        """The hard cap: the writer that finds :data:`WAL_HARD_LIMIT_WRITES` writes since the
        WAL last started again waits (off the loop) for a checkpoint that truncates it.  If
        even that is refused (another process reading an old snapshot all along) the next try
        is :data:`CHECKPOINT_EVERY` writes and a growing pause (:data:`TRUNCATE_BACKOFF_MAX`)
        later, so writers are not held up one by one, nor other processes' writers most of the
        time."""
        running = self._checkpoint
        if running is not None and not running.done():
            await asyncio.shield(running)
        if not self._truncate_due():
            return  # that one started the WAL again, or another writer's truncate did (or was refused)
        self._hard_due = self._since_restart + CHECKPOINT_EVERY  # unless it succeeds
        self._hard_after = float("inf")  # while it runs (its end sets the next)
        await asyncio.shield(self._start_checkpoint(hard=True))

    def _checkpoint_wal(self, hard: bool = False) -> bool:
        """Copy the WAL's committed pages into the database file (worker thread); True if the
        WAL starts again from its beginning (every frame copied, or restarted).

        ``hard=False``: PASSIVE, never waiting for readers or writers; whatever it cannot copy
        now goes next time.  ``hard=True`` (:meth:`_truncate_wal`): TRUNCATE, waiting up to
        :data:`TRUNCATE_WAIT` for writers and readers, which also gives the WAL file's space
        back.  On a connection of its own, closed again: the worker's connection (opened only
        to wait for another process's lock) and its page cache cost ~0.3 MiB of RSS kept for
        good."""
        if self._closed:
            return False
        with contextlib.suppress(sqlite3.Error):
            db = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
            try:
                if hard:
                    db.execute(f"PRAGMA busy_timeout={int(TRUNCATE_WAIT * 1000)}")
                    busy, _frames, _copied = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                    return bool(busy == 0)
                busy, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                # The WAL starts again from its beginning only when a writer finds every frame
                # copied: under sustained writes (the event loop commits while this runs) a
                # PASSIVE pass never gets there and the WAL grew without bound (82 MiB after
                # 6,000 writes of one process, 270 MiB after 20,000).  Past WAL_LIMIT_FRAMES,
                # RESTART copies what was written during the pass (writers held off that
                # long, waiting at most RESTART_WAIT here on the worker thread) so the next
                # writer restarts the WAL.
                if frames > WAL_LIMIT_FRAMES:
                    db.execute(f"PRAGMA busy_timeout={int(RESTART_WAIT * 1000)}")
                    busy, frames, copied = db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                return bool(busy == 0 and copied == frames)
            finally:
                db.close()
        return False

    # --- Store ----------------------------------------------------------------

    async def revision(self) -> int:
        return await self._run(self._revision)

    async def get(self, key: str) -> KVPair:
        check_key(key)
        pair = await self._run(self._current, key)
        if pair is None:
            raise KeyNotFound("no such key", key=key)
        return pair

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> KVPair:
        check_key(key)
        check_value(key, value)
        ttl = check_ttl(key, ttl)

        def body(db: sqlite3.Connection) -> KVPair:
            self._current_for_write(db, key)
            return self._store(db, key, value, ttl)

        return await self._write(body)

    async def delete(self, key: str) -> bool:
        check_key(key)

        def body(db: sqlite3.Connection) -> bool:
            if self._current_for_write(db, key) is None:
                return False
            self._remove(db, key)
            return True

        return await self._write(body)

    async def exists(self, key: str) -> bool:
        check_key(key)
        return await self._run(self._current, key) is not None

    async def list(self, prefix: str) -> list[KVPair]:
        check_key(prefix, prefix=True)
        lo, hi = _prefix_range(prefix)

        def body(db: sqlite3.Connection) -> builtins.list[KVPair]:
            rows = db.execute(
                "SELECT key, value, revision FROM kv WHERE key >= ? AND key < ? "
                "AND (expires IS NULL OR expires > ?) ORDER BY key",
                (lo, hi, time.time()),
            ).fetchall()
            return [KVPair(k, v, r) for k, v, r in rows]

        return await self._run(body)

    async def atomic_put(self, key: str, value: bytes, previous: KVPair | None, ttl: float | None = None) -> KVPair:
        check_key(key)
        check_value(key, value)
        ttl = check_ttl(key, ttl)

        def body(db: sqlite3.Connection) -> KVPair:
            check_previous(key, self._current_for_write(db, key), previous)
            return self._store(db, key, value, ttl)

        return await self._write(body)

    async def atomic_delete(self, key: str, previous: KVPair) -> None:
        check_key(key)

        def body(db: sqlite3.Connection) -> None:
            cur = self._current_for_write(db, key)
            if cur is None:
                raise KeyNotFound("no such key", key=key)
            check_previous(key, cur, previous)
            self._remove(db, key)

        await self._write(body)

    async def atomic_batch(self, writes: Sequence[Write]) -> builtins.list[KVPair | None]:
        """``writes`` in one transaction, in order: all of them or (on the first failed check,
        with its ``atomic_put``/``atomic_delete`` error) none (:func:`libnet.store.base.write_all`)."""
        for w in writes:
            check_key(w.key)
            if w.value is not None:
                check_value(w.key, w.value)
            elif w.checked and w.previous is None:
                raise BadRequest("a checked delete needs the pair it expects", key=w.key)

        def body(db: sqlite3.Connection) -> builtins.list[KVPair | None]:
            out: builtins.list[KVPair | None] = []
            for w in writes:
                cur = self._current_for_write(db, w.key)
                if w.checked:
                    if w.value is None and cur is None:
                        raise KeyNotFound("no such key", key=w.key)
                    check_previous(w.key, cur, w.previous)
                if w.value is None:
                    if cur is not None:
                        self._remove(db, w.key)
                    out.append(None)
                else:
                    out.append(self._store(db, w.key, w.value, None))
            return out

        return await self._write(body)

    def lock(self, key: str, ttl: float = 15.0) -> AbstractAsyncContextManager[None]:
        return cas_lock(self, key, ttl)

    async def close(self) -> None:
        if self._closed:
            return
        if self._poller is not None:
            self._poller.cancel()
        self._closed = True

        def shut() -> None:
            if self._blocking is not None:
                self._blocking.close()
                self._blocking = None

        await asyncio.get_running_loop().run_in_executor(self._exec, shut)
        self._exec.shutdown(wait=True)
        if self._inline is not None:
            self._inline.close()
            self._inline = None

    # --- watch log ------------------------------------------------------------

    async def _events_after(self, revision: int, limit: int) -> builtins.list[WatchEvent]:
        def body(db: sqlite3.Connection) -> builtins.list[WatchEvent]:
            rows = db.execute(
                "SELECT revision, key, kind, value FROM events WHERE revision > ? ORDER BY revision LIMIT ?",
                (revision, limit),
            ).fetchall()
            return [WatchEvent(_KINDS[kind], key, value, rev) for rev, key, kind, value in rows]  # type: ignore[arg-type]

        return await self._run(body)

    async def _oldest_revision(self) -> int:
        def body(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT min(revision) FROM events").fetchone()
            # an empty log after pruning means everything up to now is gone
            return row[0] if row[0] is not None else self._revision(db) + 1 if self._revision(db) else 0

        return await self._run(body)

    async def _before_wait(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        """Wake watchers when another process commits; purge expired keys."""
        last_purge = 0.0
        while self._wakeups:
            await asyncio.sleep(self.poll_interval)

            def check(db: sqlite3.Connection) -> bool:
                (version,) = db.execute("PRAGMA data_version").fetchone()
                changed: bool = version != self._data_version
                self._data_version = version
                return changed

            try:
                changed = await self._run(check)
                now = time.monotonic()
                if now - last_purge > 0.1:
                    last_purge = now
                    due = await self._run(
                        lambda db: db.execute(
                            "SELECT 1 FROM kv WHERE expires IS NOT NULL AND expires <= ? LIMIT 1", (time.time(),)
                        ).fetchone()
                    )
                    if due:
                        await self._write(self._purge_expired)
            except StoreUnavailable:
                continue  # locked by another process for now: try again next tick
            if changed:
                self._notify_watchers()
