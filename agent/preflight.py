"""Host checks before libnet-agent changes anything.

Each check looks (reads only) at one thing the agent needs and, when it is
missing, raises :class:`HostNotReady` with one line saying what is missing
and how to fix it; the agent then exits 1 with nothing changed.  The checks,
in order:

- root (uid 0 with ``CAP_NET_ADMIN`` and ``CAP_SYS_ADMIN``): namespaces,
  interfaces and firewall rules need both;
- the nftables Python binding and the ``libnftables`` library it loads;
- the kernel's nf_tables (a read-only ``list tables`` through
  :class:`libnet.kernel.firewall.Firewall`);
- ``/run/netns`` usable: a writable directory (or creatable) on a writable
  filesystem;
- IPv6 enabled in the agent's namespace when the agent's ``ipv6`` is on.

Every check takes its inputs as arguments (paths, probes) so unit tests run
them without root.
"""

from __future__ import annotations

import errno
import importlib
import os
from collections.abc import Callable

from libnet.errors import LibnetError

CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21
NETNS_DIR = "/run/netns"
IPV6_CONF = "/proc/sys/net/ipv6/conf"


class HostNotReady(LibnetError):
    """The host lacks something the agent needs; nothing was changed."""

    kind = "host"


def check_root(euid: int | None = None, status_path: str = "/proc/self/status") -> None:
    """Root with the capabilities libnet uses."""
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        raise HostNotReady(
            f"libnet-agent must run as root (running as uid {euid}): it creates namespaces, interfaces and "
            "firewall rules; start it with sudo or as the libnet-agent systemd service"
        )
    caps = _effective_caps(status_path)
    needed = ((CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"))
    missing = [name for bit, name in needed if caps is not None and not caps >> bit & 1]
    if missing:
        raise HostNotReady(
            f"libnet-agent runs as root but without {' and '.join(missing)}: give it those capabilities "
            "(a privileged container, or AmbientCapabilities= in the systemd unit)"
        )


def _effective_caps(status_path: str) -> int | None:
    try:
        with open(status_path) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return None  # unknown: let the real operations tell


def check_nftables_binding(importer: Callable[[str], object] = importlib.import_module) -> None:
    """The ``nftables`` Python module and the libnftables shared library it loads."""
    try:
        module = importer("nftables")
    except ImportError:
        raise HostNotReady(
            "the nftables Python binding is missing: install it (pip install pip-nftables, or "
            "apt install python3-nftables) in libnet-agent's Python environment"
        ) from None
    try:
        module.Nftables()  # type: ignore[attr-defined]
    except OSError as exc:
        raise HostNotReady(
            f"the nftables library cannot be loaded ({exc}): install libnftables (apt install libnftables1, "
            "dnf install nftables)"
        ) from None


def check_nf_tables_kernel(probe: Callable[[], None] | None = None) -> None:
    """The kernel's nf_tables: a read-only listing of the tables must work."""
    probe = probe or _list_tables
    try:
        probe()
    except (LibnetError, OSError) as exc:
        text = getattr(exc, "message", None) or str(exc)
        raise HostNotReady(
            f"the kernel's nf_tables does not answer ({text.strip()}): load it (modprobe nf_tables) or use a "
            "kernel built with CONFIG_NF_TABLES"
        ) from None


def _list_tables() -> None:
    from libnet.kernel.firewall import Firewall

    with Firewall(None) as fw:
        fw.rules()  # lists the tables of family inet first


def check_netns_dir(path: str = NETNS_DIR) -> None:
    """``/run/netns`` (where named namespaces are bind-mounted) is usable."""
    fix = f"create it as a writable directory (mkdir -p {path}) on a writable filesystem"
    if os.path.lexists(path):
        if not os.path.isdir(path):
            raise HostNotReady(f"{path} is not a directory, so no network namespace can be named: {fix}")
        where = path
    else:
        where = os.path.dirname(path.rstrip("/")) or "/"
        if not os.path.isdir(where):
            raise HostNotReady(f"{path} cannot be created ({where} does not exist): {fix}")
    if not os.access(where, os.W_OK | os.X_OK):
        raise HostNotReady(f"{where} is not writable, so {path} cannot hold network namespaces: {fix}")
    try:
        if os.statvfs(where).f_flag & os.ST_RDONLY:
            raise HostNotReady(f"{where} is on a read-only filesystem, so {path} cannot hold namespaces: {fix}")
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise HostNotReady(f"cannot examine {where} ({exc.strerror}): {fix}") from None


def check_ipv6(enabled: bool, conf: str = IPV6_CONF) -> None:
    """IPv6 must work in the agent's namespace when networks are dual-stack."""
    if not enabled:
        return
    fix = "start the agent with --no-ipv6 (or ipv6 = false in its configuration), or enable IPv6 on the host"
    if not os.path.isdir(conf):
        raise HostNotReady(f"IPv6 is disabled in this kernel (no {conf}; booted with ipv6.disable=1?): {fix}")
    for which in ("all", "default"):
        try:
            with open(os.path.join(conf, which, "disable_ipv6")) as f:
                off = f.read().strip() == "1"
        except OSError:
            continue
        if off:
            raise HostNotReady(
                f"IPv6 is disabled on this host (net.ipv6.conf.{which}.disable_ipv6 = 1): {fix} "
                f"(sysctl -w net.ipv6.conf.{which}.disable_ipv6=0)"
            )


def check_host(ipv6: bool) -> None:
    """Every check, in order; the first problem raises :class:`HostNotReady`."""
    check_root()
    check_nftables_binding()
    check_nf_tables_kernel()
    check_netns_dir()
    check_ipv6(ipv6)
