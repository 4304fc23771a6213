"""This host's WireGuard key pair: made locally, the private key only on disk, mode 0600.

Keys are Curve25519, base64 (WireGuard's format), made by ``wg genkey`` and
``wg pubkey`` (Debian ``wireguard-tools``).  The private key file is written
with mode 0600 from its creation (never readable by others, not even briefly)
and replaced atomically.
"""

from __future__ import annotations

import base64
import binascii
import os
import subprocess

from libnet.errors import BadRequest, Unavailable

KEY_FILE = "private.key"


def _wg(args: list[str], stdin: str = "") -> str:
    try:
        out = subprocess.run(["wg", *args], input=stdin, capture_output=True, text=True, timeout=10, check=False)
    except FileNotFoundError:
        raise Unavailable("the wg command is missing: install wireguard-tools") from None
    if out.returncode != 0:
        raise Unavailable(f"wg {args[0]} failed: {out.stderr.strip()}")
    return out.stdout.strip()


def check_key(key: str) -> str:
    """``key`` if it is a base64 32-byte WireGuard key, else ``BadRequest``."""
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise BadRequest("not a WireGuard key (base64 of 32 bytes)")
    return key


def public_key(private: str) -> str:
    return check_key(_wg(["pubkey"], private + "\n"))


def write_private(path: str, private: str) -> None:
    """Write ``private`` to ``path`` (mode 0600 from creation; atomic replace)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(private + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def key_file(slot: int) -> str:
    """The private key file of WireGuard slot ``slot``."""
    return KEY_FILE if slot == 0 else f"private-{slot}.key"


def make_new(directory: str, slot: int) -> tuple[str, str]:
    """A fresh key pair for ``slot`` (a key rotation), replacing its file."""
    private = check_key(_wg(["genkey"]))
    write_private(os.path.join(directory, key_file(slot)), private)
    return private, public_key(private)


def load_or_make(directory: str, slot: int = 0) -> tuple[str, str]:
    """(private, public) of this host's slot: read from ``<directory>/private.key``
    (``private-<slot>.key``), made there if missing.

    A file with group or other permissions is tightened to 0600."""
    path = os.path.join(directory, key_file(slot))
    try:
        with open(path) as f:
            private = check_key(f.read().strip())
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)
    except FileNotFoundError:
        private = check_key(_wg(["genkey"]))
        write_private(path, private)
    return private, public_key(private)
