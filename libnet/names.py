"""Names libnet derives from user-supplied ids (README, "Names").

Every derivation is injective, so two different ids never share a kernel
object, a file or a store key:

- a sandbox's namespace is ``<sandbox prefix><full sandbox id>`` (ids are
  checked by :func:`check_sandbox_id`; namespace names are
  file names, not limited to IFNAMSIZ, so nothing is truncated);
- a sandbox's default endpoint name (``connect`` without a name and without a
  hostname) is ``ep-<id>`` for short lowercase ids, else ``ep-`` + the id's
  first 12 characters made a DNS label + ``-`` + 8 hex digits of a hash of the
  FULL id: endpoint names are case-insensitive DNS labels, so neither
  truncation nor case may decide alone (an unlucky hash collision is a
  ``NameInUse`` conflict naming the holder, never a shared endpoint);
- link names inside the host namespace come from random 64-hex ids (networks,
  endpoints; :mod:`libnet.drivers.bridge`) and overlay namespaces from the VNI,
  never from user input; the ``bridge_name`` option may not take one of those
  derived shapes.
"""

from __future__ import annotations

import hashlib
import re

from libnet.errors import InvalidName

#: sandbox (container) ids: CNI's container id rule, at most 128 characters; Docker's 64 hex digits fit
_SANDBOX_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_sandbox_id(sandbox_id: object) -> str:
    """A sandbox id names a directory under the state dir, a store key and (with
    the instance's prefix) a namespace: 1-128 of ``[A-Za-z0-9_.-]`` starting
    with a letter or digit, so never ``.``/``..``, a ``/``, a NUL or a newline.
    Ids are case-sensitive (CNI's are): ``ABC`` and ``abc`` are two sandboxes."""
    if not isinstance(sandbox_id, str) or _SANDBOX_ID.fullmatch(sandbox_id) is None:
        raise InvalidName(
            f"sandbox id {str(sandbox_id)[:80]!r} must start with a letter or digit and be 1-128 of [A-Za-z0-9_.-]",
            sandbox_id=str(sandbox_id)[:128],
        )
    return sandbox_id


_SHORT = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?")


def sandbox_namespace(prefix: str, sandbox_id: str) -> str:
    """The name of the namespace libnet makes for a sandbox."""
    return prefix + sandbox_id


def default_endpoint_name(sandbox_id: str) -> str:
    """The endpoint name ``connect`` uses when given neither name nor hostname."""
    if _SHORT.fullmatch(sandbox_id):
        return f"ep-{sandbox_id}"
    head = re.sub(r"[^a-z0-9]+", "-", sandbox_id[:12].lower()).strip("-") or "x"
    return f"ep-{head}-{hashlib.sha256(sandbox_id.encode()).hexdigest()[:8]}"
