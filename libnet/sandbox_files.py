"""Per-sandbox ``resolv.conf`` and ``hosts`` files.

Containers see the host's resolvers, minus loopback ones (127.0.0.0/8 and
::1 mean the sandbox itself inside its namespace), and a hosts file with
localhost, the sandbox's own name and its addresses on each network.

A sandbox may have its own DNS settings (``--dns``, ``--dns-search``,
``--dns-option``, as Docker's): with the embedded DNS server the nameserver
stays 127.0.0.11 and ``--dns`` servers become that sandbox's upstreams; the
given search domains and options replace the host's (each list on its own:
Docker's rule).  Without the embedded server the ``--dns`` servers are
written as the nameservers.  :func:`check_dns` validates all three before
anything is made.

:class:`SandboxFiles` writes them for a stored sandbox (reading its endpoints
from the repository and the host's resolv.conf through a
:class:`HostResolvConf` cache).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import ipaddress
import os
import re
import stat
import struct
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from libnet.errors import BadRequest, Conflict, NotFound, Unavailable
from libnet.model import address_of
from libnet.names import check_sandbox_id
from libnet.sandbox_dirs import DirPool

if TYPE_CHECKING:
    from libnet.model import Endpoint, Sandbox
    from libnet.repository import Repository

#: resolv.conf options a sandbox may set: name -> (least, most) value, or None for a flag
DNS_OPTIONS: dict[str, tuple[int, int] | None] = {
    "ndots": (0, 15),
    "timeout": (1, 30),
    "attempts": (1, 5),
    "rotate": None,
    "edns0": None,
    "trust-ad": None,
    "inet6": None,
    "single-request": None,
    "single-request-reopen": None,
    "no-tld-query": None,
    "no-check-names": None,
    "use-vc": None,
    "no-reload": None,
    "no-aaaa": None,
    "debug": None,
}
MAX_DNS_ENTRIES = 32  # per list; glibc reads 3 nameservers, Docker sets no limit
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")  # used with fullmatch: no '$'-before-newline


def check_dns(
    servers: list[str] | None, search: list[str] | None, options: list[str] | None
) -> tuple[list[str], list[str], list[str]]:
    """The sandbox's DNS settings, checked and normalised; BadRequest naming the bad value.

    ``servers``: IP addresses (IPv6 link-local with its zone, ``fe80::1%eth0``),
    no ports (as Docker's ``--dns``); ``search``: DNS names (a trailing dot is
    dropped; ``.`` alone means "no search domains", as in Docker); ``options``:
    the names in :data:`DNS_OPTIONS`, ``NAME:N`` for those with a value."""
    from libnet.dns.forwarder import parse_upstream  # libnet.dns imports the model; keep this module light

    out_servers, out_search, out_options = [], [], []
    for kind, values in (("--dns", servers), ("--dns-search", search), ("--dns-option", options)):
        if values is None:
            continue
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise BadRequest(f"{kind} must be a list of strings", option=kind)
        if len(values) > MAX_DNS_ENTRIES:
            raise BadRequest(f"{kind}: at most {MAX_DNS_ENTRIES} values", option=kind)
    for text in servers or []:
        if text.strip().startswith("[") or text.count(":") == 1:
            raise BadRequest(f"--dns {text!r}: an IP address without a port", dns=text)
        try:
            host, _ = parse_upstream(text)
        except ValueError as exc:
            raise BadRequest(f"--dns {text!r}: {exc}", dns=text) from None
        if host not in out_servers:
            out_servers.append(host)
    for text in search or []:
        name = text.strip()
        if name == ".":
            out_search.append(".")
            continue
        name = name[:-1] if name.endswith(".") else name
        if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
            raise BadRequest(f"--dns-search {text!r}: not a DNS name", dns_search=text)
        if name.lower() not in (n.lower() for n in out_search):
            out_search.append(name)
    if "." in out_search and len(out_search) > 1:
        raise BadRequest("--dns-search '.' (no search domains) excludes other domains", dns_search=".")
    for text in options or []:
        name, colon, value = text.strip().partition(":")
        if name not in DNS_OPTIONS:
            raise BadRequest(f"--dns-option {text!r}: unknown option; known: {', '.join(DNS_OPTIONS)}", dns_option=text)
        bounds = DNS_OPTIONS[name]
        if bounds is None:
            if colon:
                raise BadRequest(f"--dns-option {text!r}: {name} takes no value", dns_option=text)
            out_options.append(name)
            continue
        if not (value.isascii() and value.isdigit()) or not bounds[0] <= int(value) <= bounds[1]:
            raise BadRequest(f"--dns-option {text!r}: {name}:N with N in {bounds[0]}..{bounds[1]}", dns_option=text)
        out_options = [o for o in out_options if not o.startswith(name + ":")]  # the last one wins
        out_options.append(f"{name}:{int(value)}")
    return out_servers, out_search, list(dict.fromkeys(out_options))


def _own(search: list[str] | None, options: list[str] | None) -> list[str]:
    """The sandbox's own search/options lines (``search .``: none at all)."""
    out = []
    if search and search != ["."]:
        out.append("search " + " ".join(search))
    if options:
        out.append("options " + " ".join(options))
    return out


def resolv_conf(
    host_text: str,
    servers: list[str] | None = None,
    search: list[str] | None = None,
    options: list[str] | None = None,
) -> str:
    """The sandbox's resolv.conf from the host's (no embedded DNS); the sandbox's
    own ``servers``, ``search`` and ``options`` replace the host's where given."""
    out = ["# generated by libnet"]
    dropped = []
    out += [f"nameserver {s}" for s in servers or []]
    for line in host_text.splitlines():
        words = line.split()
        if not words or words[0].startswith(("#", ";")):
            continue
        if (
            (servers and words[0] == "nameserver")
            or (search and words[0] in ("search", "domain"))
            or (options and words[0] == "options")
        ):
            continue
        if words[0] == "nameserver" and len(words) > 1:
            try:
                if ipaddress.ip_address(words[1].split("%")[0]).is_loopback:
                    dropped.append(words[1])
                    continue
            except ValueError:
                continue
        if words[0] in ("nameserver", "search", "domain", "options"):
            out.append(" ".join(words))
    out += _own(search, options)
    if dropped:
        out.append(f"# host resolvers on loopback ({', '.join(dropped)}) are not reachable from a sandbox")
    return "\n".join(out) + "\n"


def resolv_conf_embedded(
    host_text: str, address: str, search: list[str] | None = None, options: list[str] | None = None
) -> str:
    """The sandbox's resolv.conf when libnet's DNS serves it: only ``address``
    as nameserver (it forwards to the upstreams itself), the host's search
    domains, ``options ndots:0`` (a name with no dot goes out as is first, so
    container names resolve without search-list detours) and the host's other
    options.  The sandbox's own ``search``/``options`` replace the host's
    (its ``ndots:N`` then wins over ndots:0)."""
    out = ["# generated by libnet: the embedded DNS server forwards to the upstream resolvers", f"nameserver {address}"]
    host_search: list[str] = []
    host_options: list[str] = []
    for line in host_text.splitlines():
        words = line.split()
        if not words or words[0].startswith(("#", ";")):
            continue
        if words[0] in ("search", "domain"):
            host_search = words[1:]  # the last of search/domain wins, as in glibc
        elif words[0] == "options":
            host_options += [w for w in words[1:] if not w.startswith("ndots:")]
    if search:
        host_search = [] if search == ["."] else search
    if host_search:
        out.append("search " + " ".join(host_search))
    if options:
        own = [o for o in options if not o.startswith("ndots:")]
        ndots = [o for o in options if o.startswith("ndots:")] or ["ndots:0"]
        out.append("options " + " ".join([*ndots, *own]))
    else:
        out.append("options " + " ".join(["ndots:0", *dict.fromkeys(host_options)]))
    return "\n".join(out) + "\n"


def hosts_file(hostname: str | None, addresses: list[tuple[str, list[str]]]) -> str:
    """``addresses``: (IP, names) pairs for the sandbox's own endpoints."""
    lines = [
        "# generated by libnet",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "ff00::0\tip6-mcastprefix",
        "ff02::1\tip6-allnodes",
        "ff02::2\tip6-allrouters",
    ]
    for ip, names in addresses:
        names = [n for n in ([hostname] if hostname else []) + names if n]
        if names:
            lines.append(f"{ip}\t{' '.join(dict.fromkeys(names))}")
    return "\n".join(lines) + "\n"


#: what SandboxFiles remembers of a file it wrote: written (else the rest is zeros), inode, size,
#: mtime (ns) and the digest of its text.  One bytes object of a stamp per file of _STAMPED per
#: sandbox: the texts and stat tuples themselves cost ~0.9 KiB a sandbox (tracemalloc of a running
#: agent at 1,000 containers, issue 22), this 115 bytes
_STAMP = struct.Struct("=?QQq16s")
_STAMPED = ("resolv.conf", "hosts")
_UNSTAMPED = bytes(_STAMP.size * len(_STAMPED))


def _digest(text: str) -> bytes:
    """128 bits of BLAKE2b of ``text`` (a file's text is compared by this digest)."""
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


#: the files of a sandbox's directory: the two a container sees and their spares (swap_file)
_POOL_FILES = ("resolv.conf", "hosts", ".resolv.conf.spare", ".hosts.spare")
#: every file libnet makes there (write_file's temporaries too): the only ones it removes
_OWN_FILES = (*_POOL_FILES, ".resolv.conf.tmp", ".hosts.tmp")


def _directory(state_dir: str, sandbox_id: str) -> str:
    """``<state_dir>/sandboxes/<id>``; an id that could leave that directory
    (``..``, ``/``, NUL: from a damaged store, say) is refused."""
    try:
        check_sandbox_id(sandbox_id)
    except BadRequest as exc:
        raise BadRequest(f"no sandbox files for {sandbox_id!r}: {exc.message}", sandbox_id=str(sandbox_id)) from None
    return os.path.join(state_dir, "sandboxes", sandbox_id)


def _plain_directory(path: str) -> bool:
    """Whether ``path`` is a directory itself (not a symlink to one)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _holding(path: str, text: str) -> os.stat_result | None:
    """The ``stat`` of ``path`` if it is a regular file holding exactly ``text``, else None
    (missing, unreadable, another text, not a regular file: never followed if a symlink).
    Anything else is not even opened: an open has effects of its own (a writer waiting on a
    FIFO let through, a device's open)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        want = text.encode()
        if not stat.S_ISREG(st.st_mode) or st.st_size != len(want):
            return None
        return st if os.read(fd, len(want) + 1) == want else None
    except OSError:
        return None
    finally:
        os.close(fd)


def _check_own_directory(directory: str, sandbox_id: str) -> None:
    """``Conflict`` when ``directory`` exists and is not a plain directory (a symlink put
    in its place, a file): libnet's files are never written through it."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        raise Conflict(
            f"{directory} is not a directory libnet made (a symlink or a file): the files of sandbox "
            f"{sandbox_id[:12]} are not written through it; remove it by hand",
            sandbox_id=sandbox_id,
            path=directory,
        )


def write(state_dir: str, sandbox_id: str, resolv: str, hosts: str) -> str:
    """Write both files atomically; returns the sandbox's directory."""
    directory = _directory(state_dir, sandbox_id)
    os.makedirs(directory, exist_ok=True)
    _check_own_directory(directory, sandbox_id)
    for name, text in (("resolv.conf", resolv), ("hosts", hosts)):
        write_file(directory, name, text)
    return directory


def write_file(directory: str, name: str, text: str) -> os.stat_result:
    """Replace ``directory/name`` atomically (a new file renamed over it: a reader
    sees the old or the new text, and a file held open keeps its old text); returns
    the new file's ``stat``.  The temporary file is always a new one: whatever has
    its name (a symlink, a hard link to another file) is removed, never written to."""
    tmp = os.path.join(directory, f".{name}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o644)
    except FileExistsError:  # left by a crash, or planted (a symlink, a hard link): never written through
        os.unlink(tmp)
        fd = os.open(tmp, flags, 0o644)
    try:
        os.write(fd, text.encode())
        st = os.fstat(fd)
    finally:
        os.close(fd)
    os.replace(tmp, os.path.join(directory, name))
    return st


def rewrite_file(path: str, text: str, create: bool = False) -> os.stat_result:
    """Replace the text of the existing file ``path`` in place (same inode): no new
    file is made.  NOT safe for a file others read at the same time: Linux does not
    make a read atomic against a write of the same file, so a concurrent reader can
    see a mix of old and new bytes, the new text cut at the old length, or zeros
    past the old end (seen with two readers against a writer: a few in 10^6 reads).
    :class:`SandboxFiles` uses it only on its private spare files
    (:func:`swap_file`).  ``FileNotFoundError`` if ``path`` is gone (``create``: made
    then); a symlink is refused (``ELOOP``), never written through; returns the
    file's ``stat``."""
    data = text.encode()
    flags = os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
    fd = os.open(path, flags, 0o644)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise OSError(errno.EPERM, f"not a private regular file: {path}")
        written = os.pwrite(fd, data, 0)
        if written != len(data):
            raise OSError(errno.EIO, f"short write to {path}")
        if st.st_size > len(data):
            os.ftruncate(fd, len(data))
        return os.fstat(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2  # renameat2(2) flag, linux/fs.h


@functools.cache
def _renameat2() -> Callable[[bytes, bytes], int] | None:
    """libc's renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) returning 0 or the
    errno; None where the C library has no renameat2 (old musl)."""
    import ctypes  # the agent loads ctypes anyway (netns, malloc); the CLI never swaps files

    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd = -100

    def exchange(a: bytes, b: bytes) -> int:
        return 0 if fn(at_fdcwd, a, at_fdcwd, b, _RENAME_EXCHANGE) == 0 else ctypes.get_errno()

    return exchange


def swap_file(directory: str, name: str, text: str) -> os.stat_result | None:
    """Give ``directory/name`` the new text atomically without making a new file (what
    costs on ext4: a new inode, 0.3-1.5 ms on a VM whose file system sees many
    deletions, against some 15 us for writing an existing one): the text goes into the
    private spare ``.NAME.spare`` (the file this swapped out last time) in place, and
    the spare and ``name`` trade places in one ``renameat2(RENAME_EXCHANGE)``.  A
    reader opening ``name`` sees the old text or the new one, never a mix.  The first
    swap makes the spare (one file, as :func:`write_file` would; none for a file that
    never changes, as resolv.conf mostly).  Returns the new file's ``stat``; None if
    this cannot be done here (no renameat2, a file system without RENAME_EXCHANGE,
    ``name`` gone): the caller then makes the file afresh with :func:`write_file`.

    A reader holding ``name`` open across two swaps (or a bind mount of it: pinned to
    one file) sees the second one's in-place write: the swapped-out file is the next
    spare."""
    exchange = _renameat2()
    if exchange is None:
        return None
    spare = os.path.join(directory, f".{name}.spare")
    try:
        st = rewrite_file(spare, text, create=True)
    except OSError:  # a symlink or anything odd in our place: not written through, made afresh next
        with contextlib.suppress(OSError):
            os.unlink(spare)
        return None
    err = exchange(os.fsencode(spare), os.fsencode(os.path.join(directory, name)))
    return st if err == 0 else None


def remove(state_dir: str, sandbox_id: str) -> None:
    """Remove the sandbox's directory; gone is fine."""
    directory = _directory(state_dir, sandbox_id)
    try:
        if not stat.S_ISDIR(os.lstat(directory).st_mode):
            return  # a symlink or a file in its place: not libnet's, neither followed nor removed
    except OSError:
        return
    for name in _OWN_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, name))
    with contextlib.suppress(OSError):
        os.rmdir(directory)


class HostResolvConf:
    """The host's resolv.conf, re-read only when it changes ("" if unreadable)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._cache: tuple[int, str] | None = None

    def read(self) -> str:
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except OSError:
            return ""
        if self._cache is None or self._cache[0] != mtime:
            try:
                with open(self.path) as f:
                    self._cache = (mtime, f.read())
            except OSError:
                return ""
        return self._cache[1]


class SandboxFiles:
    """The files of the sandboxes of one state dir.  ``embedded_dns``: the
    sandboxes' nameserver is the embedded DNS server at ``dns_address``.

    Creating a file is the costly part of writing one (0.2-1.5 ms on a VM's
    ext4, against microseconds for a ``stat``), so a file whose text did not
    change is not written again: each file written is remembered with a
    digest of its text and its identity (inode, size, mtime), and rewritten
    when the text differs or the file on disk is no longer the one written (removed or
    changed by someone else, another process's write).  A file that is still
    the one written here trades places with its spare holding the new text
    (:func:`swap_file`: no file made, readers see the old or the new text);
    any other is made afresh and renamed over the old one (:func:`write_file`)."""

    def __init__(
        self, state_dir: str, host_resolv_conf: str, repo: Repository, embedded_dns: bool, dns_address: str
    ) -> None:
        self.state_dir = state_dir
        self.host = HostResolvConf(host_resolv_conf)
        self.repo = repo
        self.embedded_dns = embedded_dns
        self.dns_address = dns_address
        self._written: dict[str, bytes] = {}  # sandbox id -> a _STAMP per file of _STAMPED
        #: sandboxes whose embedded DNS server could not be served (the agent out of descriptors,
        #: say): their resolv.conf names the upstream servers, as without the embedded DNS (nothing
        #: listens on ``dns_address`` in them), until it is served (the controller keeps this set)
        self.unserved: set[str] = set()
        # directories made ahead / removed behind on a thread of its own (libnet.sandbox_dirs)
        self.dirs = DirPool(os.path.join(state_dir, "sandboxes"), _POOL_FILES, _OWN_FILES)

    def has(self, sandbox_id: str) -> bool:
        """Whether the sandbox's directory is under this instance's state dir (a plain directory:
        made here, by :meth:`write` or the pool): its files are this instance's to write."""
        return _plain_directory(_directory(self.state_dir, sandbox_id))

    async def write(self, sb: Sandbox, known: Mapping[str, Endpoint] | None = None) -> bool:
        """(Re)write the sandbox's resolv.conf and hosts from its stored endpoints (only those
        whose text changed; resolv.conf names the embedded DNS server unless the sandbox is in
        :attr:`unserved`); nothing for a sandbox without files (``Sandbox.files``), or one
        being removed (its files go next).  ``Conflict`` when a symlink or a file stands in the
        place of the sandbox's directory (never written through); ``Unavailable`` when the
        files cannot be written (a read-only state dir).  ``known``: endpoints by id as the
        caller's step just wrote them (a join's), not read again.  Returns whether a file was
        written (False: each held the text already)."""
        if not sb.files or sb.removing:
            return False
        entries = []
        for eid in sb.endpoints:
            with contextlib.suppress(NotFound):
                ep = known[eid] if known is not None and eid in known else await self.repo.endpoint(eid)
                for cidr in (ep.ipv4, ep.ipv6):
                    if cidr:
                        entries.append((address_of(cidr), [ep.name, *ep.aliases]))
        if self.embedded_dns and sb.id not in self.unserved:
            resolv = resolv_conf_embedded(self.host.read(), self.dns_address, sb.dns_search, sb.dns_options)
        else:
            resolv = resolv_conf(self.host.read(), sb.dns, sb.dns_search, sb.dns_options)
        hosts = hosts_file(sb.hostname, entries)
        # two small local files: cheaper written here than handed to a thread
        directory = _directory(self.state_dir, sb.id)
        try:
            return self._write(sb.id, directory, resolv, hosts)
        except OSError as exc:  # a read-only or immutable state dir, say: said as such, not "internal error"
            raise Unavailable(
                f"the files of sandbox {sb.id[:12]} cannot be written in {directory}: {exc.strerror or exc}",
                sandbox_id=sb.id,
                path=directory,
            ) from None

    def _write(self, sid: str, directory: str, resolv: str, hosts: str) -> bool:
        _check_own_directory(directory, sid)
        fresh = sid not in self._written
        if fresh and self._place_ready(sid, directory, (("resolv.conf", resolv), ("hosts", hosts))):
            return True
        made = wrote = False
        for name, text in (("resolv.conf", resolv), ("hosts", hosts)):
            mine = self._mine(sid, directory, name)
            digest = _digest(text)
            if mine is not None and mine == digest:
                continue
            if mine is None:  # not written by this process (a restart), or changed since
                same = _holding(os.path.join(directory, name), text)
                if same is not None:  # the text already: kept as it is (the same file, no new inode)
                    self._remember(sid, name, digest, same)
                    continue
            wrote = True
            st = None
            if mine is not None:  # the file written here, untouched since: swapped with its spare
                st = swap_file(directory, name, text)
            if st is None:
                if not made:
                    os.makedirs(directory, exist_ok=True)
                    _check_own_directory(directory, sid)  # made just now by someone else: a symlink, say
                    made = True
                st = write_file(directory, name, text)
            self._remember(sid, name, digest, st)
        return wrote

    def _place_ready(self, sandbox_id: str, directory: str, texts: tuple[tuple[str, str], ...]) -> bool:
        """A new sandbox's files in a directory of the pool: written in place while only
        this process can see them, then the directory renamed to its place (one
        ``rename(2)``: a reader finds no directory or both files whole).  False (nothing
        changed) when no directory is ready or ``directory`` exists already."""
        if os.path.lexists(directory):
            return False
        ready = self.dirs.take()
        if ready is None:
            return False
        path, made = ready
        try:
            stats = {}
            for name, text in texts:
                target = os.path.join(path, name)
                st = made[name]
                if text:
                    st = rewrite_file(target, text)
                stats[name] = st
            os.rename(path, directory)
        except OSError:  # e.g. the directory appeared meanwhile: the usual way, this one goes
            self.dirs.give_back(ready)
            return False
        for name, text in texts:
            self._remember(sandbox_id, name, _digest(text), stats[name])
        return True

    def tidy(self) -> None:
        """At start: delete what an earlier run left in the directory pool and trash (on its thread)."""
        self.dirs.tidy()

    def close(self) -> None:
        """Stop the directory pool's thread."""
        self.dirs.close()

    def _remember(self, sandbox_id: str, name: str, digest: bytes, st: os.stat_result) -> None:
        """``name`` of the sandbox was written here: the digest of its text, and the file's identity."""
        i = _STAMPED.index(name) * _STAMP.size
        old = self._written.get(sandbox_id, _UNSTAMPED)
        stamp = _STAMP.pack(True, st.st_ino, st.st_size, st.st_mtime_ns, digest)
        self._written[sandbox_id] = old[:i] + stamp + old[i + _STAMP.size :]

    def _mine(self, sandbox_id: str, directory: str, name: str) -> bytes | None:
        """The digest of the text last written here to ``directory/name`` (:func:`_digest`)
        if the file on disk is still the one written (same inode, size and mtime), else None."""
        known = self._written.get(sandbox_id)
        if known is None:
            return None
        written, ino, size, mtime_ns, digest = _STAMP.unpack_from(known, _STAMPED.index(name) * _STAMP.size)
        if not written:
            return None
        try:
            st = os.stat(os.path.join(directory, name))
        except OSError:
            return None
        return digest if (st.st_ino, st.st_size, st.st_mtime_ns) == (ino, size, mtime_ns) else None

    def remove(self, sandbox_id: str) -> None:
        """The sandbox's directory goes: out of the way at once (one rename), deleted
        by the pool's thread; gone is fine."""
        self._written.pop(sandbox_id, None)
        self.unserved.discard(sandbox_id)
        self.dirs.discard(_directory(self.state_dir, sandbox_id))
