"""The one place where kernel errno values become typed libnet errors."""

from __future__ import annotations

import errno as _errno
import os
from typing import Any

from libnet.errors import (
    KernelBusy,
    KernelError,
    KernelInvalidArgument,
    KernelObjectExists,
    KernelObjectMissing,
    KernelPermissionDenied,
)

_BY_ERRNO: dict[int, type[KernelError]] = {
    _errno.EEXIST: KernelObjectExists,
    _errno.ENOENT: KernelObjectMissing,
    _errno.ENODEV: KernelObjectMissing,
    _errno.ESRCH: KernelObjectMissing,
    _errno.EADDRNOTAVAIL: KernelObjectMissing,
    _errno.ENXIO: KernelObjectMissing,
    _errno.EINVAL: KernelInvalidArgument,
    _errno.ERANGE: KernelInvalidArgument,
    _errno.EOPNOTSUPP: KernelInvalidArgument,
    _errno.EAFNOSUPPORT: KernelInvalidArgument,
    _errno.ENETUNREACH: KernelInvalidArgument,
    _errno.EBUSY: KernelBusy,
    _errno.ENOBUFS: KernelBusy,
    _errno.ENOMEM: KernelBusy,
    _errno.ENOSPC: KernelBusy,
    _errno.EAGAIN: KernelBusy,
    _errno.EPERM: KernelPermissionDenied,
    _errno.EACCES: KernelPermissionDenied,
}

#: errno values that mean "the object is already gone"; deletes treat them as success
GONE = frozenset({_errno.ENOENT, _errno.ENODEV, _errno.ESRCH, _errno.EADDRNOTAVAIL, _errno.ENXIO})


def errno_of(exc: BaseException) -> int | None:
    """The errno carried by an OSError or a pyroute2 NetlinkError, if any."""
    code = getattr(exc, "code", None)  # pyroute2 NetlinkError
    if isinstance(code, int) and code:
        return abs(code)
    err = getattr(exc, "errno", None)
    return abs(err) if isinstance(err, int) else None


def from_errno(code: int, action: str, **ids: Any) -> KernelError:
    """Build the typed error for ``code`` raised while doing ``action``."""
    cls = _BY_ERRNO.get(code, KernelError)
    return cls(f"{action}: {os.strerror(code)}", errno=code, **ids)


def translate(exc: BaseException, action: str, **ids: Any) -> KernelError:
    """Translate a kernel-level exception into a typed libnet error."""
    code = errno_of(exc)
    if code is None:
        return KernelError(f"{action}: {exc}", **ids)
    return from_errno(code, action, **ids)


def is_gone(exc: BaseException) -> bool:
    """True when ``exc`` says the object does not exist (any more)."""
    return errno_of(exc) in GONE
