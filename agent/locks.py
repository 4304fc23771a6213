"""One agent per state dir, and one per socket: exclusive ``flock`` locks.

``<state_dir>/agent.lock`` is taken first thing at start and held for the
agent's life (the kernel drops it when the process dies, however it dies), so
two agents never share a store, an instance id or a namespace ledger.  A lock
file next to the socket (``<socket>.lock``) does the same for the socket, so
an agent with another state dir but the same socket path is refused instead
of stealing the live agent's socket.  Each lock file holds the holder's pid,
which the refusal names.  Lock files are never unlinked: removing one while
another process waits on it would let two processes hold "the" lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time

from libnet.errors import Conflict

STATE_LOCK = "agent.lock"


class AgentLocked(Conflict):
    """Another process holds the lock."""


class PidLock:
    """An exclusive, non-blocking ``flock`` on ``path`` holding this process's pid."""

    def __init__(self, path: str, what: str) -> None:
        self.path, self.what = path, what
        self._fd: int | None = None

    def acquire(self) -> PidLock:
        """Take the lock, or raise :class:`AgentLocked` naming the holder's pid."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            pid = holder_pid(self.path)
            who = f"pid {pid}" if pid else "another process (pid not written yet)"
            raise AgentLocked(
                f"another libnet-agent ({who}) holds {self.what}; stop it first, or give this one "
                "its own --state-dir and --socket",
                pid=pid,
                lock=self.path,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Let go of the lock (the file stays, see the module docstring)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PidLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder_pid(path: str, wait: float = 1.0) -> int | None:
    """The pid written in a lock file; waits up to ``wait`` seconds for a
    holder that has the lock but has not written its pid yet."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            text = ""
        if text.isdigit():
            return int(text)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


def state_lock(state_dir: str) -> PidLock:
    """The lock of a state dir (``<state_dir>/agent.lock``)."""
    return PidLock(os.path.join(state_dir, STATE_LOCK), f"the state dir {state_dir}")


def socket_lock(socket_path: str) -> PidLock:
    """The lock of an API socket path (``<socket>.lock``)."""
    return PidLock(socket_path + ".lock", f"the socket {socket_path}")
