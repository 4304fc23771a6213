"""Network namespaces: create, delete, list, and run code inside one.

Entering a namespace is done in-process with ``setns(2)`` on a thread, not by
forking a helper (pyroute2's ``netns.create`` and ``IPRoute(netns=...)`` fork
one, 6-8 ms each; ``setns`` costs well under 1 ms).  ``setns`` with
``CLONE_NEWNET`` changes the namespace of the calling *thread* only, so every
piece of code that must act inside a namespace runs on a thread that entered
it: :func:`run_in` for one call, :class:`NamespaceThread` for a series of
calls (netlink handles live on such a thread, because pyroute2 opens its
sockets lazily per thread).  Sockets keep the namespace they were created in,
which is how :func:`open_socket` hands the DNS server a listener inside a
sandbox.  On hot paths (attaching a container) :func:`sockets_in` makes them
on the calling thread instead, which enters the namespace and comes straight
back: a hand-over to another thread costs 0.2-0.5 ms on a busy machine (a
thread wake-up and the GIL), the two ``setns`` calls a few microseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import queue
import socket
import stat
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from libnet.errors import BadRequest, NoSuchNamespace, NotANamespace
from libnet.kernel.errors import from_errno

T = TypeVar("T")
log = logging.getLogger("libnet.kernel")

NETNS_DIR = "/run/netns"

_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096
_MS_REC = 16384
_MS_SHARED = 1 << 20
_MNT_DETACH = 2
_NS_GET_NSTYPE = 0xB703  # ioctl(2) on a namespace file: its CLONE_NEW* type
_NS_TYPES = {
    0x00020000: "mount",
    0x02000000: "cgroup",
    0x04000000: "uts",
    0x08000000: "ipc",
    0x10000000: "user",
    0x20000000: "pid",
    0x00000080: "time",
}
_PATH_MAX = 4096
_PROC_DYNAMIC_FIRST = 0xF0000000

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, action: str, **ids: Any) -> None:
    if ret != 0:
        raise from_errno(ctypes.get_errno(), action, **ids)


def _validate_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or len(name) > 200:
        raise BadRequest(f"invalid namespace name {name!r}", netns=name)


def path_of(ns: str) -> str:
    """The filesystem path of a namespace given by name or by path.

    ``"h1"`` means ``/run/netns/h1``; absolute paths (``/proc/PID/ns/net``,
    ``/var/run/netns/NAME``) are taken as they are.
    """
    if ns.startswith("/"):
        return ns
    _validate_name(ns)
    return os.path.join(NETNS_DIR, ns)


def check_path(path: object) -> tuple[int, int]:
    """Make sure ``path`` (given by a user as a container's namespace) is a
    network namespace; returns its identity ``(st_dev, st_ino)``.

    The path must be absolute, without NUL, at most PATH_MAX.  Symlinks are
    followed (``/proc/PID/ns/net`` is a magic link, ``/var/run`` a link to
    ``/run``): what counts is the file at the end, which must be a namespace
    file (``NS_GET_NSTYPE`` says ``CLONE_NEWNET``).  Directories, devices,
    FIFOs and sockets are refused from ``stat`` alone, never opened (opening a
    FIFO blocks, opening some devices has effects).  Anything else is
    ``NotANamespace`` (a ``BadRequest``) naming the path and saying why.
    """
    if not isinstance(path, str) or not path.startswith("/"):
        raise NotANamespace(f"netns {path!r} must be an absolute path to a network namespace", netns=str(path))
    if "\x00" in path:
        raise NotANamespace(f"netns path {path!r} contains a NUL byte", netns=path)
    if len(path.encode(errors="surrogateescape")) >= _PATH_MAX:
        raise NotANamespace(f"netns path {path[:64]!r}... is too long (PATH_MAX is {_PATH_MAX})", netns=path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # namespace files are regular files of nsfs
            what = "a directory" if stat.S_ISDIR(st.st_mode) else "a device, FIFO or socket"
            raise NotANamespace(f"netns path {path} is {what}, not a network namespace", netns=path)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise NotANamespace(f"netns path {path} {_why(exc)}", netns=path, errno=exc.errno) from None
    try:
        st = os.fstat(fd)  # the file opened, wherever the path pointed meanwhile
        try:
            kind = fcntl.ioctl(fd, _NS_GET_NSTYPE)
        except OSError:  # ENOTTY, EINVAL: a file of another file system
            raise NotANamespace(f"netns path {path} is a plain file, not a network namespace", netns=path) from None
    finally:
        os.close(fd)
    if kind != _CLONE_NEWNET:
        what = _NS_TYPES.get(kind, f"type {kind:#x}")
        raise NotANamespace(f"netns path {path} is a {what} namespace, not a network namespace", netns=path)
    return st.st_dev, st.st_ino


def _why(exc: OSError) -> str:
    return {
        errno.ENOENT: "does not exist",
        errno.ENOTDIR: "has a component that is not a directory",
        errno.EACCES: "cannot be opened: permission denied",
        errno.EPERM: "cannot be opened: permission denied",
        errno.ELOOP: "has too many levels of symbolic links",
        errno.ENAMETOOLONG: "is too long",
    }.get(exc.errno or 0, f"cannot be opened: {exc.strerror}")


def is_initial(ident: tuple[int, int]) -> bool:
    """Whether a namespace identity (from :func:`check_path`) is the machine's
    initial namespace: Linux numbers namespaces from 0xF0000000 up
    (``PROC_DYNAMIC_FIRST``) and gives the initial ones fixed numbers below
    (the initial network namespace's is 0xEFFFFFF9 on recent kernels; older
    ones number it dynamically, so callers compare with ``/proc/1/ns/net`` too)."""
    return ident[1] < _PROC_DYNAMIC_FIRST


def identity(path: str) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the file at ``path`` (None when there is none):
    for comparing with what :func:`check_path` returned; never raises."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def exists(ns: str) -> bool:
    """Whether the namespace exists."""
    return os.path.exists(path_of(ns))


def open_own() -> int:
    """A descriptor of the calling thread's network namespace (the caller closes it), for handing "this
    namespace" to code on another thread.

    Never a path for that: ``/proc/self/ns/net`` and ``/proc/<pid>/ns/net`` name the namespace the
    process's *main* thread is in when the path is opened, and the main thread -- the agent's event
    loop -- is inside a sandbox for a moment whenever :func:`sockets_in` makes sockets there, while
    other threads run on.  Opened on the event loop's thread (which is at home whenever Python code
    runs on it), this names the agent's own namespace."""
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def _make_dir_shared() -> None:
    # as iproute2 does: /run/netns is a shared mount so that namespaces made
    # here propagate to other mount namespaces (containers, ip netns exec)
    os.makedirs(NETNS_DIR, exist_ok=True)
    d = NETNS_DIR.encode()
    if _libc.mount(b"", d, b"none", _MS_SHARED | _MS_REC, None) == 0:
        return
    if ctypes.get_errno() != errno.EINVAL:
        _check(-1, "make netns dir shared", path=NETNS_DIR)
    _check(_libc.mount(d, d, b"none", _MS_BIND | _MS_REC, None), "bind netns dir", path=NETNS_DIR)
    _check(_libc.mount(b"", d, b"none", _MS_SHARED | _MS_REC, None), "make netns dir shared", path=NETNS_DIR)


def _unshare_and_bind(path: str) -> None:
    _check(_libc.unshare(_CLONE_NEWNET), "unshare network namespace", netns=path)
    src = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
    _check(_libc.mount(src, path.encode(), b"none", _MS_BIND, None), "bind namespace", netns=path)


def create(name: str) -> str:
    """Create a named namespace (like ``ip netns add``); returns its path.

    Raises ``KernelObjectExists`` if the name is taken.
    """
    path = path_of(name)
    _make_dir_shared()
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    except FileExistsError:
        raise from_errno(errno.EEXIST, "create namespace", netns=name) from None
    try:
        # unshare on a throwaway thread: the caller's thread stays where it was
        _run_on_thread(_unshare_and_bind, path)
    except BaseException:
        _libc.umount2(path.encode(), _MNT_DETACH)
        os.unlink(path)
        raise
    return path


def delete(name: str) -> None:
    """Delete a named namespace; a missing one is success (idempotent)."""
    path = path_of(name)
    _libc.umount2(path.encode(), _MNT_DETACH)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def list_names(prefix: str = "") -> list[str]:
    """Names of the namespaces under /run/netns starting with ``prefix``."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def _enter(ns: str) -> None:
    try:
        fd = os.open(path_of(ns), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NoSuchNamespace("no such network namespace", netns=ns) from None
    try:
        _check(_libc.setns(fd, _CLONE_NEWNET), "enter namespace", netns=ns)
    finally:
        os.close(fd)


def _run_on_thread(fn: Callable[..., T], *args: Any, ns: str | None = None) -> T:
    result: list[Any] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            if ns is not None:
                _enter(ns)
            result.append(fn(*args))
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    t = threading.Thread(target=body, name=f"netns:{ns}", daemon=True)
    t.start()
    t.join()
    if failure:
        raise failure[0]
    value: T = result[0]
    return value


def preexec_enter(ns: str) -> Callable[[], None]:
    """A ``subprocess`` ``preexec_fn`` that runs the child inside ``ns``.

    Cheaper than ``ip netns exec`` (no mount namespace, no /sys remount);
    for running tools such as CNI plugins in a test host.
    """
    path = path_of(ns)

    def enter() -> None:
        fd = os.open(path, os.O_RDONLY)
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            os._exit(127)
        os.close(fd)

    return enter


def run_in(ns: str | None, fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn(*args)`` on a fresh thread inside namespace ``ns``.

    ``ns=None`` means the namespace this process runs in.  The thread ends
    after the call, so nothing else ever runs in the wrong namespace.
    """
    return _run_on_thread(fn, *args, ns=ns)


async def run_in_async(ns: str | None, fn: Callable[..., T], *args: Any) -> T:
    """Like :func:`run_in`, awaited: the event loop keeps running meanwhile."""
    import asyncio

    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def deliver(ok: bool, value: Any) -> None:
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def body() -> None:
        try:
            if ns is not None:
                _enter(ns)
            result = fn(*args)
        except BaseException as exc:
            loop.call_soon_threadsafe(deliver, False, exc)
            return
        loop.call_soon_threadsafe(deliver, True, result)

    threading.Thread(target=body, name=f"netns:{ns}", daemon=True).start()
    return await fut


def open_socket(ns: str | None, family: int, type_: int, proto: int = 0) -> socket.socket:
    """A socket created inside namespace ``ns`` (it stays bound to it).

    Made by one long-lived helper thread that enters ``ns``, creates the
    socket and goes back to its home namespace: no thread start per socket.
    If the helper ever fails to go home it stops, and a fresh one is started.
    """
    global _opener
    with _opener_lock:
        if _opener is None or not _opener.alive:
            _opener = _SocketOpener()
        opener = _opener
    return opener.open(ns, family, type_, proto)


def open_socket_future(ns: str | None, family: int, type_: int, proto: int = 0) -> Future[socket.socket]:
    """:func:`open_socket` as a future (``asyncio.wrap_future`` awaits it)."""
    global _opener
    with _opener_lock:
        if _opener is None or not _opener.alive:
            _opener = _SocketOpener()
        opener = _opener
    return opener._thread.submit(opener._open, ns, family, type_, proto)


def sockets_in(ns: str | None, specs: Sequence[tuple[int, int, int]]) -> list[socket.socket | OSError]:
    """Sockets made inside namespace ``ns`` (name or path; None: the caller's own) by the calling thread,
    which enters it once, calls ``socket(family, type, proto)`` for each of
    ``specs`` and goes back before returning (no Python code but those calls
    runs meanwhile, so nothing else on this thread ever acts in ``ns``).

    Returns one slot per spec: the socket, or the ``OSError`` creating it
    raised (``EAFNOSUPPORT`` for IPv6 in a namespace without it); the caller
    closes the sockets.  ``NoSuchNamespace`` if ``ns`` is gone, a ``KernelError``
    if it cannot be entered; then nothing was made.  A thread that cannot go
    back to its own namespace (never seen: ``setns`` to a namespace file held
    open fails only without memory) stops the process (``os.abort``) rather
    than let it run on inside a container's namespace; the data plane lives
    in the kernel and outlives the agent (DESIGN.md, "Liveness")."""
    if ns is None:
        return [_socket_or_error(*spec) for spec in specs]
    try:
        target = os.open(path_of(ns), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NoSuchNamespace("no such network namespace", netns=ns) from None
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(_libc.setns(target, _CLONE_NEWNET), "enter namespace", netns=ns)
            try:
                made = [_socket_or_error(*spec) for spec in specs]
            finally:
                _go_home(home, ns)
            return made
        finally:
            os.close(home)
    finally:
        os.close(target)


def _socket_or_error(family: int, type_: int, proto: int) -> socket.socket | OSError:
    try:
        return socket.socket(family, type_, proto)
    except OSError as exc:
        return exc


def _go_home(home: int, ns: str) -> None:
    for _ in range(3):
        if _libc.setns(home, _CLONE_NEWNET) == 0:
            return
    log.critical(
        "cannot leave network namespace %s (errno %d): stopping rather than acting in it", ns, ctypes.get_errno()
    )
    os.abort()


class _SocketOpener:
    def __init__(self) -> None:
        self._thread = NamespaceThread(None)
        self._home = self._thread.call(os.open, "/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.alive = True

    def open(self, ns: str | None, family: int, type_: int, proto: int) -> socket.socket:
        return self._thread.call(self._open, ns, family, type_, proto)

    def _open(self, ns: str | None, family: int, type_: int, proto: int) -> socket.socket:
        return self._inside(ns, socket.socket, family, type_, proto)

    def _inside(self, ns: str | None, fn: Callable[..., T], *args: Any) -> T:
        if ns is None:
            return fn(*args)
        _enter(ns)
        try:
            return fn(*args)
        finally:
            if _libc.setns(self._home, _CLONE_NEWNET) != 0:
                self.alive = False  # stranded in ns: never use this thread again
                self._thread._queue.put(None)


_opener: _SocketOpener | None = None
_opener_lock = threading.Lock()


class NamespaceThread:
    """A long-lived thread inside one namespace that runs submitted calls.

    Calls run one at a time in submission order, which also serialises all
    use of the per-thread netlink sockets that live on it.  If the thread
    cannot enter the namespace it refuses every call with that error, so code
    never runs in the wrong namespace by accident.
    """

    def __init__(self, ns: str | None) -> None:
        self.ns = ns
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._loop, name=f"netns:{ns}", daemon=True)
        self._thread.start()
        self._ready.result()  # raises NoSuchNamespace & co. right here

    def _loop(self) -> None:
        try:
            if self.ns is not None:
                _enter(self.ns)
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        while True:
            item = self._queue.get()
            if item is None:
                return
            fut, fn, args = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:
                fut.set_exception(exc)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue ``fn(*args)``; the future completes with its result."""
        fut: Future[T] = Future()
        if threading.current_thread() is self._thread:
            # re-entrant call from code already on this thread: run now
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:
                fut.set_exception(exc)
            return fut
        if not self._thread.is_alive():
            raise RuntimeError(f"namespace thread for {self.ns!r} is closed")
        self._queue.put((fut, fn, args))
        return fut

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the thread and wait for the result."""
        return self.submit(fn, *args).result()

    def close(self) -> None:
        """Finish queued calls and end the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            if threading.current_thread() is not self._thread:
                self._thread.join()
