"""Sandbox directories made ahead and removed behind: file creation off the attach path.

On this project's reference VM (ext4 on a virtual disk) making an inode -- a
directory, a file -- costs 0.3-1.5 ms, and removing one as much, against some
20 us to write an existing file and well under 0.1 ms to rename.  A sandbox's
directory holds four files (``resolv.conf``, ``hosts`` and their spares, see
:func:`libnet.sandbox_files.swap_file`), so making and removing them was the
largest part of an attach and a detach after the kernel's veth work.

:class:`DirPool` keeps a few directories, each with those files made empty, in
``<sandboxes>/.pool/``; a background thread makes them in batches when fewer
than ``low`` are left.  A new sandbox's directory is one of them, filled in
place (nobody can see it yet) and renamed to its place in one ``rename(2)``.  A
removed sandbox's directory is renamed into ``<sandboxes>/.trash/`` and deleted
there by the same thread.  The file system does the same work as before, on
another thread (the calls release the GIL, so on another core): the caller
waits for two renames.  Directories are never reused: a file a container
still holds open (a bind mount) never shows another sandbox's text.

Sandbox ids start with a letter or digit (:func:`libnet.names.check_sandbox_id`),
so ``.pool`` and ``.trash`` are never a sandbox's directory.  What a crash
leaves in either is removed by the next start.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("libnet.sandbox_dirs")

POOL, TRASH = ".pool", ".trash"

#: a ready directory: its path under ``.pool`` and, per file name, the ``stat`` of that empty file
Ready = tuple[str, dict[str, os.stat_result]]


class DirPool:
    """Ready-made sandbox directories under ``root`` (``<state_dir>/sandboxes``), each
    holding the empty regular files ``names``; see the module docstring.

    ``own``: other files libnet may have made in a sandbox's directory.  Only those
    and ``names`` are ever deleted: a directory holding anything else stays in the
    trash (logged) with what libnet did not make.  ``low``: fewer ready directories
    than this start a refill of ``batch`` more.
    :meth:`take` and :meth:`discard` are called from one thread (the event loop's);
    the pool's own thread makes and deletes."""

    def __init__(
        self, root: str, names: tuple[str, ...], own: tuple[str, ...] = (), low: int = 8, batch: int = 32
    ) -> None:
        self.root, self.names, self.low, self.batch = root, names, low, batch
        self.own = frozenset(names) | frozenset(own)
        self._pool_dir = os.path.join(root, POOL)
        self._trash_dir = os.path.join(root, TRASH)
        self._ready: deque[Ready] = deque()
        self._lock = threading.Lock()
        self._refilling = False
        self._purging = False
        self._closed = False
        self._seq = itertools.count()
        self._tag = f"{os.getpid()}-{id(self):x}"
        self._exec: ThreadPoolExecutor | None = None
        self._started = False
        self._kept: set[str] = set()  # trash entries holding files libnet did not make

    # --- the caller's side -------------------------------------------------------

    def take(self) -> Ready | None:
        """A ready directory (path, file stats), now the caller's to fill and rename
        away; None when none is ready (the caller makes its own).  Starts a refill
        when the pool runs low (the first call fills it, after clearing what a
        previous run left)."""
        if self._closed:
            return None
        if not self._started:
            self._started = True
            self._submit(self._start)
            return None
        try:
            ready = self._ready.popleft()
        except IndexError:
            ready = None
        if len(self._ready) < self.low:
            self._refill()
        return ready

    def give_back(self, ready: Ready) -> None:
        """A taken directory the caller did not use (its rename failed): deleted."""
        self.discard(ready[0])

    def discard(self, directory: str) -> bool:
        """Move ``directory`` (a sandbox's, or a taken pool one) out of the way into the
        trash, deleted there in the background; False if it does not exist.  Where it
        cannot be moved (the trash cannot be made) it is deleted here and now."""
        target = os.path.join(self._trash_dir, f"{os.path.basename(directory)}.{self._tag}.{next(self._seq)}")
        try:
            os.rename(directory, target)
        except FileNotFoundError:
            if not os.path.lexists(directory):
                return False
            try:  # the trash itself is missing (first use, or removed by hand)
                os.makedirs(self._trash_dir, exist_ok=True)
                os.rename(directory, target)
            except OSError:
                self._remove(directory)
                return True
        except OSError:
            self._remove(directory)
            return True
        self._purge()
        return True

    def close(self) -> None:
        """Stop the thread after the work queued (a refill is cut short)."""
        self._closed = True
        if self._exec is not None:
            self._exec.shutdown(wait=True)
            self._exec = None

    # --- the pool's thread -------------------------------------------------------

    def _submit(self, fn: Callable[[], None]) -> None:
        if self._closed:
            return
        if self._exec is None:
            self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="libnet-dirs")
        self._exec.submit(_logged, fn)

    def _refill(self) -> None:
        with self._lock:
            if self._refilling or self._closed:
                return
            self._refilling = True
        self._submit(self._make_batch)

    def _purge(self) -> None:
        with self._lock:
            if self._purging or self._closed:
                return
            self._purging = True
        self._submit(self._empty_trash)

    def _start(self) -> None:
        """Clear what an earlier run left in the pool (files it may have half made) and
        the trash, then fill the pool."""
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self._pool_dir):
                self._remove(os.path.join(self._pool_dir, name))
        with self._lock:
            self._purging = True
        self._empty_trash()
        with self._lock:
            self._refilling = True
        self._make_batch()

    def _make_batch(self) -> None:
        try:
            os.makedirs(self._pool_dir, mode=0o755, exist_ok=True)
            for _ in range(self.batch):
                if self._closed or len(self._ready) >= self.low + self.batch:
                    break
                ready = self._make_one()
                if ready is not None:
                    self._ready.append(ready)
        finally:
            with self._lock:
                self._refilling = False

    def _make_one(self) -> Ready | None:
        path = os.path.join(self._pool_dir, f"d{self._tag}.{next(self._seq)}")
        try:
            os.mkdir(path, 0o755)
            stats = {}
            for name in self.names:
                fd = os.open(
                    os.path.join(path, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644
                )
                try:
                    stats[name] = os.fstat(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            log.debug("sandbox directory pool: %s not made: %s", path, exc)
            self._remove(path)
            return None
        return path, stats

    def _empty_trash(self) -> None:
        try:
            for _ in range(1000):  # bounded: what was trashed while this ran is taken next round
                try:
                    names = os.listdir(self._trash_dir)
                except FileNotFoundError:
                    return
                if not names or set(names) <= self._kept:
                    return
                for name in names:
                    if name not in self._kept and not self._remove(os.path.join(self._trash_dir, name)):
                        self._kept.add(name)
        finally:
            with self._lock:
                self._purging = False

    def _remove(self, path: str) -> bool:
        """Delete ``path``: a directory of libnet's files, or a stray file or symlink
        (removed, never followed); gone is fine.  False (and logged) when the
        directory holds something libnet did not make: that stays."""
        try:
            if os.path.islink(path) or not os.path.isdir(path):
                os.unlink(path)
                return True
            names = os.listdir(path)
        except FileNotFoundError:
            return True
        except OSError as exc:
            log.warning("sandbox directory %s not removed: %s", path, exc)
            return False
        foreign = sorted(set(names) - self.own)
        for name in set(names) & self.own:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(path, name))
        if foreign:
            log.warning(
                "sandbox directory %s kept: it holds files libnet did not make (%s); remove it by hand",
                path,
                ", ".join(foreign[:5]),
            )
            return False
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("sandbox directory %s not removed: %s", path, exc)
            return False
        return True


def _logged(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:  # a background chore: logged, the callers fall back to making their own
        log.exception("sandbox directory pool")
