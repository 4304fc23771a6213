"""File descriptor numbers: libnet's many long-lived sockets above ``FD_SETSIZE``.

Some C libraries libnet loads wait on their own sockets with ``select(2)``,
whose ``fd_set`` holds descriptors below ``FD_SETSIZE`` (1024) only;
libnftables (the firewall, :mod:`libnet.kernel.firewall`) does, and glibc's
checked ``FD_SET`` aborts the whole process on a higher one (``*** bit out of
range 0 - FD_SETSIZE on fd_set ***``).  A socket gets the lowest free number,
so once the embedded DNS's listeners of ~250 sandboxes (four sockets each)
held the low numbers, the next nftables context opened above 1024 and the
agent died -- at start, too, so it could not come back.

So the sockets libnet keeps per sandbox are moved above ``FD_SETSIZE``
(:func:`lift`), keeping the low numbers for what uses them briefly and for
those libraries; and the agent raises its soft ``RLIMIT_NOFILE`` to the hard
limit at start (:func:`raise_nofile_limit`), as Go programs (dockerd,
containerd) do, so those numbers exist.
"""

from __future__ import annotations

import fcntl
import logging
import os
import resource
import socket

log = logging.getLogger("libnet.kernel.fds")

#: glibc's fd_set size: descriptors below it are left to select(2) users
FD_SETSIZE = 1024


#: an open files limit below this is said at start: a sandbox with the embedded DNS holds four
RECOMMENDED_NOFILE = 8192


def raise_nofile_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; returns the soft limit now
    (unchanged, and logged, if it cannot be raised).  A limit below :data:`RECOMMENDED_NOFILE`
    is logged as a warning, with what it allows (the unit in ``contrib/`` sets 65536)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    now = soft
    if hard == resource.RLIM_INFINITY or soft < hard:
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            now = want
        except (ValueError, OSError) as exc:
            log.warning("open files limit stays %d (hard %d): %s", soft, hard, exc)
    if now != resource.RLIM_INFINITY and now < RECOMMENDED_NOFILE:
        log.warning(
            "open files limit %d: room for about %d sandboxes with the embedded DNS (4 sockets each); "
            "raise it (LimitNOFILE=65536 in the systemd unit, ulimit -n) for more",
            now,
            max(0, (now - 256) // 4),
        )
    return now


def lowest_free() -> int:
    """The number the next descriptor this process opens gets (the lowest free one); ``OSError``
    (``EMFILE``) if none is free."""
    fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    os.close(fd)
    return fd


def lift(sock: socket.socket) -> socket.socket:
    """``sock`` on a descriptor at or above :data:`FD_SETSIZE` (the same socket, the low number
    closed; close-on-exec), or ``sock`` itself if its number is high already or the open files
    limit leaves no room above (then nothing changed)."""
    fd = sock.fileno()
    if fd >= FD_SETSIZE:
        return sock
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft <= FD_SETSIZE:
        return sock
    try:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FD_SETSIZE)
    except OSError:  # EMFILE/EINVAL: no room above; the socket stays where it is
        return sock
    try:
        lifted = socket.socket(sock.family, sock.type, sock.proto, fileno=high)
    except BaseException:
        os.close(high)
        raise
    lifted.settimeout(sock.gettimeout())
    sock.close()
    return lifted
