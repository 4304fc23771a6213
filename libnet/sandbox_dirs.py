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
import stat
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
        self._purge_again = False  # a directory was trashed while a purge ran: another round
        self._closed = False
        self._seq = itertools.count()
        self._tag = f"{os.getpid()}-{id(self):x}"
        self._exec: ThreadPoolExecutor | None = None
        self._started = False
        self._kept: set[str] = set()  # trash entries holding files libnet did not make
        self._disabled = False  # .pool is not a directory libnet can use (a file, a symlink): no pool
        self._warned: set[str] = set()  # .pool/.trash found not to be directories (logged once)

    # --- the caller's side -------------------------------------------------------

    def take(self) -> Ready | None:
        """A ready directory (path, file stats), now the caller's to fill and rename
        away; None when none is ready (the caller makes its own).  Starts a refill
        when the pool runs low (the first call fills it, after clearing what a
        previous run left)."""
        if self._closed or self._disabled:
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

    def tidy(self) -> None:
        """At start: what an earlier run left in ``.pool`` and ``.trash`` (a crash, a kill)
        is deleted on the pool's thread now, not only at the first sandbox made or
        removed (which may be long after, or never).  The pool is not filled here."""
        if self._closed or self._started:
            return
        if any(os.path.lexists(p) and os.listdir(p) for p in (self._pool_dir, self._trash_dir) if _plain_dir(p)):
            self._submit(self._tidy)

    def give_back(self, ready: Ready) -> None:
        """A taken directory the caller did not use (its rename failed): deleted."""
        self.discard(ready[0])

    def discard(self, directory: str) -> bool:
        """Move ``directory`` (a sandbox's, or a taken pool one) out of the way into the
        trash, deleted there in the background; False if it does not exist.  Where it
        cannot be moved (the trash cannot be made, or is not a plain directory) it is
        deleted here and now.  What is not a plain directory (a symlink put in its
        place, a file) is not libnet's: left where it is, logged, never followed."""
        try:
            st = os.lstat(directory)
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("sandbox directory %s not removed: %s", directory, exc)
            return True
        if not stat.S_ISDIR(st.st_mode):
            log.warning(
                "sandbox directory %s kept: not a directory libnet made (a symlink or file); remove it by hand",
                directory,
            )
            return True
        target = os.path.join(self._trash_dir, f"{os.path.basename(directory)}.{self._tag}.{next(self._seq)}")
        try:
            if not _plain_dir(self._trash_dir):  # missing (first use, removed by hand), or a symlink/file
                os.mkdir(self._trash_dir, 0o755)  # FileExistsError for a symlink or file: deleted here below
            os.rename(directory, target)
        except FileNotFoundError:
            if not os.path.lexists(directory):
                return False
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
            if self._closed:
                return
            if self._purging:  # the running purge may have listed the trash already: it goes round again
                self._purge_again = True
                return
            self._purging = True
        self._submit(self._empty_trash)

    def _start(self) -> None:
        """Clear what an earlier run left in the pool (files it may have half made) and
        the trash, then fill the pool."""
        self._tidy()
        with self._lock:
            self._refilling = True
        self._make_batch()

    def _tidy(self) -> None:
        """Delete the pool's directories (none of this run's: taken before the first fill)
        and empty the trash."""
        fd = self._open_own(self._pool_dir)
        if fd is not None:
            try:
                for name in os.listdir(fd):
                    self._remove_at(fd, name, os.path.join(self._pool_dir, name))
            finally:
                os.close(fd)
        with self._lock:
            self._purging = True
        self._empty_trash()

    def _open_own(self, path: str, make: bool = False) -> int | None:
        """A descriptor of ``path``, a plain directory (made if ``make``); None when it is
        missing, or is a symlink or a file: never followed (logged once; for ``.pool`` the
        pool is off from then on)."""
        if make:
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o755)
        try:
            return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:  # ELOOP (a symlink), ENOTDIR (a file)
            if path not in self._warned:
                self._warned.add(path)
                log.warning(
                    "%s is not a directory (%s): libnet neither follows nor removes it; %s",
                    path,
                    exc.strerror,
                    "no sandbox directories made ahead"
                    if path == self._pool_dir
                    else "removed sandbox directories are deleted at once",
                )
            if path == self._pool_dir:
                self._disabled = True
            return None

    def _make_batch(self) -> None:
        try:
            os.makedirs(self.root, mode=0o755, exist_ok=True)
            fd = self._open_own(self._pool_dir, make=True)
            if fd is None:
                return
            try:
                for _ in range(self.batch):
                    if self._closed or len(self._ready) >= self.low + self.batch:
                        break
                    ready = self._make_one(fd)
                    if ready is not None:
                        self._ready.append(ready)
            finally:
                os.close(fd)
        finally:
            with self._lock:
                self._refilling = False

    def _make_one(self, pool_fd: int) -> Ready | None:
        name = f"d{self._tag}.{next(self._seq)}"
        path = os.path.join(self._pool_dir, name)
        try:
            os.mkdir(name, 0o755, dir_fd=pool_fd)
        except OSError as exc:
            log.debug("sandbox directory pool: %s not made: %s", path, exc)
            return None
        try:
            stats = {}
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pool_fd)
            try:
                for file in self.names:
                    ffd = os.open(
                        file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644, dir_fd=fd
                    )
                    try:
                        stats[file] = os.fstat(ffd)
                    finally:
                        os.close(ffd)
            finally:
                os.close(fd)
        except OSError as exc:
            log.debug("sandbox directory pool: %s not made: %s", path, exc)
            self._remove_at(pool_fd, name, path)
            return None
        return path, stats

    def _empty_trash(self) -> None:
        """Empty the trash, again while directories were trashed during a round (their
        :meth:`_purge` found this one running and left the work to it).  The last look
        at that flag and the end of the purge are one step under the lock."""
        for _ in range(100):  # bounded: each round is one more discard seen during the last
            try:
                self._empty_trash_once()
            except BaseException:
                with self._lock:
                    self._purging = self._purge_again = False
                raise
            with self._lock:
                if not self._purge_again:
                    self._purging = False
                    return
                self._purge_again = False
        with self._lock:
            self._purging = False

    def _empty_trash_once(self) -> None:
        fd = self._open_own(self._trash_dir)
        if fd is None:
            return
        try:
            for _ in range(1000):  # bounded: what was trashed while this ran is taken next round
                names = os.listdir(fd)
                if not names or set(names) <= self._kept:
                    return
                for name in names:
                    if name not in self._kept and not self._remove_at(fd, name, os.path.join(self._trash_dir, name)):
                        self._kept.add(name)
        finally:
            os.close(fd)

    def _remove(self, path: str) -> bool:
        """:meth:`_remove_at` of ``path`` (its parent directory's path is followed as given)."""
        try:
            parent = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return True
        except OSError as exc:
            log.warning("sandbox directory %s not removed: %s", path, exc)
            return False
        try:
            return self._remove_at(parent, os.path.basename(path), path)
        finally:
            os.close(parent)

    def _remove_at(self, parent: int, name: str, path: str) -> bool:
        """Delete the directory ``name`` of ``parent`` (``path``, for the log) with the files
        libnet makes in it; gone is fine.  Nothing is followed.  False (and logged) when it
        is not a plain directory (a symlink, a file: not libnet's) or holds anything else
        than libnet's regular files: that stays."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        except FileNotFoundError:
            return True
        except OSError as exc:  # ELOOP, ENOTDIR: a symlink or a file, not libnet's
            log.warning("%s kept: not a directory libnet made (%s); remove it by hand", path, exc.strerror)
            return False
        try:
            names = os.listdir(fd)
            foreign = sorted(set(names) - self.own)
            for file in set(names) & self.own:
                try:
                    os.unlink(file, dir_fd=fd)  # a symlink itself, never what it names
                except FileNotFoundError:
                    pass
                except OSError:  # a directory of that name (EISDIR): not libnet's
                    foreign.append(file)
        except OSError as exc:
            log.warning("sandbox directory %s not removed: %s", path, exc)
            return False
        finally:
            os.close(fd)
        if foreign:
            log.warning(
                "sandbox directory %s kept: it holds files libnet did not make (%s); remove it by hand",
                path,
                ", ".join(sorted(foreign)[:5]),
            )
            return False
        try:
            os.rmdir(name, dir_fd=parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("sandbox directory %s not removed: %s", path, exc)
            return False
        return True


def _plain_dir(path: str) -> bool:
    """Whether ``path`` is a directory itself (not a symlink to one)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _logged(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:  # a background chore: logged, the callers fall back to making their own
        log.exception("sandbox directory pool")
