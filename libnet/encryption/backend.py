"""WireGuard backends: the kernel's (netlink, through pyroute2) where the
module is loaded, else ``wireguard-go`` (userspace, over TUN).

A backend makes one WireGuard interface exist (:meth:`Backend.create`), says
whether it still does (:meth:`Backend.alive`), sets its whole configuration
-- private key, listen port, the exact set of peers -- (:meth:`Backend.configure`;
peers not in the set are removed, existing sessions of kept peers stay) and
removes it (:meth:`Backend.delete`).  :func:`choose` picks one and says why.

``wireguard-go`` keeps its control socket at ``/var/run/wireguard/<ifname>.sock``,
one path for every namespace of the machine: interface names must be unique
per machine (the tunnel derives its name from the libnet instance id).  Its
start banner claims kernel support exists on kernels where it does not; it
is ignored: :func:`choose` looks at ``/sys/module/wireguard``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from libnet.errors import Unavailable

SOCKET_DIR = "/var/run/wireguard"
MODULE_DIR = "/sys/module/wireguard"


#: seconds between keepalives to every peer.  Besides keeping sessions warm, it makes an
#: interface that (re)starts -- a killed ``wireguard-go`` brought back -- handshake with every
#: peer at once, so the peers drop their sessions with the dead process right away instead of
#: sending into them until WireGuard's 15 s "no answer" timer
KEEPALIVE = 25


@dataclass(frozen=True)
class WgPeer:
    """One peer: its public key, ``host:port`` endpoint, allowed addresses (CIDRs), keepalive (seconds)."""

    public_key: str
    endpoint: str
    allowed_ips: tuple[str, ...]
    keepalive: int = KEEPALIVE


@dataclass(frozen=True)
class WgConfig:
    """An interface's whole configuration."""

    private_key: str
    listen_port: int
    peers: tuple[WgPeer, ...] = field(default_factory=tuple)

    def render(self) -> str:
        """As a ``wg setconf``/``wg syncconf`` file."""
        lines = ["[Interface]", f"PrivateKey = {self.private_key}", f"ListenPort = {self.listen_port}"]
        for p in self.peers:
            lines += ["", "[Peer]", f"PublicKey = {p.public_key}", f"Endpoint = {p.endpoint}"]
            lines.append(f"AllowedIPs = {', '.join(p.allowed_ips)}")
            lines.append(f"PersistentKeepalive = {p.keepalive}")
        return "\n".join(lines) + "\n"


def parse_dump(text: str) -> WgConfig:
    """``wg show IFNAME dump``: the interface's line, then one line per peer (tab-separated)."""
    lines = [line.split("\t") for line in text.splitlines() if line.strip()]
    if not lines or len(lines[0]) < 3:
        raise Unavailable("wg show dump: no interface line")
    peers = []
    for f in lines[1:]:
        if len(f) < 8:
            continue
        allowed = tuple(sorted(a for a in f[3].split(",") if a and a != "(none)"))
        keepalive = int(f[7]) if f[7].isdigit() else 0
        peers.append(WgPeer(f[0], f[2] if f[2] != "(none)" else "", allowed, keepalive))
    private = lines[0][0] if lines[0][0] != "(none)" else ""
    return WgConfig(private, int(lines[0][2]) if lines[0][2].isdigit() else 0, tuple(peers))


class Backend(Protocol):
    """One host's WireGuard implementation (see the module docstring)."""

    name: str

    def create(self, ifname: str) -> None: ...
    def alive(self, ifname: str) -> bool: ...
    def configure(self, ifname: str, config: WgConfig) -> None: ...
    def delete(self, ifname: str) -> None: ...
    def describe(self, ifname: str) -> dict[str, Any]: ...
    def rx_bytes(self, ifname: str) -> int:
        """Bytes received from all peers so far (an interface being retired is idle when this stops growing)."""
        ...

    def handshakes(self, ifname: str) -> dict[str, float]:
        """Each configured peer's public key -> when its latest handshake completed (Unix seconds; 0: never).
        Raises ``Unavailable`` when the interface cannot be read."""
        ...


def _netns_path(ns: str | None) -> str | None:
    if ns is None:
        return None
    return ns if "/" in ns else f"/run/netns/{ns}"


class UserspaceBackend:
    """``wireguard-go`` in the host namespace, supervised by pid.

    The process runs in the foreground (``-f``), started from the host
    namespace (``nsenter`` when that is not the agent's own); its pid and
    interface are recorded in ``<state_dir>/wireguard-go-<ifname>.json``, so an agent
    that died and came back finds (and keeps) it: the record is trusted only
    while ``/proc/<pid>/cmdline`` is still ``wireguard-go ... <ifname>``.
    Configuration goes through ``wg set`` with only what differs from ``wg show
    dump`` (the private key from a 0600 file in the state dir, never on a
    command line)."""

    name = "wireguard-go"

    def __init__(self, host_ns: str | None, state_dir: str, run: Callable[..., Any] = subprocess.run) -> None:
        self.host_ns, self.state_dir, self._run = host_ns, state_dir, run
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def record(self, ifname: str) -> str:
        return os.path.join(self.state_dir, f"wireguard-go-{ifname}.json")

    def describe(self, ifname: str) -> dict[str, Any]:
        return {"backend": self.name, "pid": self.pid(ifname)}

    def rx_bytes(self, ifname: str) -> int:
        out = self._wg("show", ifname, "transfer")
        return sum(int(line.split()[1]) for line in out.splitlines() if len(line.split()) == 3)

    def handshakes(self, ifname: str) -> dict[str, float]:
        out = self._wg("show", ifname, "latest-handshakes")
        rows = (line.split() for line in out.splitlines())
        return {f[0]: float(f[1]) for f in rows if len(f) == 2 and f[1].isdigit()}

    def _recorded(self, ifname: str) -> tuple[int, str] | None:
        try:
            with open(self.record(ifname)) as f:
                rec = json.load(f)
            return int(rec["pid"]), str(rec["ifname"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @staticmethod
    def is_ours(pid: int, ifname: str) -> bool:
        """Whether ``pid`` is a live ``wireguard-go`` serving ``ifname``."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return False
        except OSError:
            return False
        return any(os.path.basename(a) == b"wireguard-go" for a in argv) and ifname.encode() in argv

    def pid(self, ifname: str) -> int | None:
        rec = self._recorded(ifname)
        return rec[0] if rec and self.is_ours(*rec) else None

    def alive(self, ifname: str) -> bool:
        proc = self._procs.get(ifname)
        if proc is not None and proc.poll() is not None:
            del self._procs[ifname]  # reaped
        rec = self._recorded(ifname)
        return (
            rec is not None
            and rec[1] == ifname
            and self.is_ours(*rec)
            and os.path.exists(os.path.join(SOCKET_DIR, f"{ifname}.sock"))
        )

    @staticmethod
    def _socket_answers(ifname: str) -> bool:
        """Whether a process listens on ``ifname``'s control socket (a file left by a killed
        ``wireguard-go`` refuses connections)."""
        path = os.path.join(SOCKET_DIR, f"{ifname}.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            try:
                s.connect(path)
            except OSError:
                return False
        return True

    def create(self, ifname: str, timeout: float = 10.0) -> None:
        """Start ``wireguard-go`` for ``ifname`` unless it runs; returns once its socket answers.
        A control socket no process answers on (its ``wireguard-go`` was killed) is removed
        first: ``wg`` would talk to it, not to the new process."""
        if self.alive(ifname) and self._socket_answers(ifname):
            return
        exe = shutil.which("wireguard-go")
        if exe is None:
            raise Unavailable("wireguard-go is missing: install the wireguard-go package", ifname=ifname)
        self.delete(ifname)  # a recorded one that lost its interface
        stale = os.path.join(SOCKET_DIR, f"{ifname}.sock")
        if os.path.exists(stale) and not self._socket_answers(ifname):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
        argv = [exe, "-f", ifname]
        path = _netns_path(self.host_ns)
        if path is not None:
            argv = ["nsenter", f"--net={path}", "--", *argv]
        env = {**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"}
        proc = self._procs[ifname] = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        os.makedirs(self.state_dir, exist_ok=True)
        tmp = self.record(ifname) + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"pid": proc.pid, "ifname": ifname}, f)
        os.replace(tmp, self.record(ifname))
        deadline = time.monotonic() + timeout
        while not (self.alive(ifname) and self._socket_answers(ifname)):
            if ifname not in self._procs or time.monotonic() > deadline:
                self.delete(ifname)
                raise Unavailable(f"wireguard-go did not bring up {ifname}", ifname=ifname)
            time.sleep(0.02)

    def _wg(self, *args: str) -> str:
        """Run ``wg ARGS``; its output.  ``Unavailable`` when it fails or does not answer within
        10 s (a ``wireguard-go`` that hangs, a loaded host): the callers -- the supervision, the
        records' watch -- handle libnet errors and try again, where a ``TimeoutExpired`` ended them."""
        what, ifname = " ".join(args[:2]), args[1] if len(args) > 1 else ""
        try:
            out = self._run(["wg", *args], capture_output=True, text=True, timeout=10, check=False)
        except subprocess.TimeoutExpired:
            raise Unavailable(f"wg {what}: no answer within 10 s", ifname=ifname) from None
        if out.returncode != 0:
            raise Unavailable(f"wg {what}: {out.stderr.strip()}", ifname=ifname)
        return str(out.stdout)

    def configure(self, ifname: str, config: WgConfig) -> None:
        """Change only what differs (``wg show dump`` against ``config``): a peer that stays
        as it is is not touched -- setting its allowed addresses again would leave it
        without any for a moment, and a packet then would be dropped."""
        have = parse_dump(self._wg("show", ifname, "dump"))
        args = ["set", ifname]
        if have.private_key != config.private_key:
            path = os.path.join(self.state_dir, f"{ifname}.key")
            fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(config.private_key + "\n")
            os.replace(path + ".tmp", path)
            args += ["private-key", path]
        if have.listen_port != config.listen_port:
            args += ["listen-port", str(config.listen_port)]
        wanted = {p.public_key: p for p in config.peers}
        current = {p.public_key: p for p in have.peers}
        for key in sorted(set(current) - set(wanted)):
            args += ["peer", key, "remove"]
        for key, p in wanted.items():
            if current.get(key) != dataclasses.replace(p, allowed_ips=tuple(sorted(p.allowed_ips))):
                args += ["peer", key, "endpoint", p.endpoint, "persistent-keepalive", str(p.keepalive)]
                args += ["allowed-ips", ",".join(p.allowed_ips)]
        if len(args) > 2:
            try:
                self._wg(*args)
            except Unavailable as exc:
                if "listen-port" in args and "Address already in use" in exc.message:
                    raise Unavailable(
                        f"UDP port {config.listen_port} for WireGuard interface {ifname} is already in use on this "
                        "host (another WireGuard, another libnet instance?): free it or choose another "
                        "--encryption-port (each host uses it and the next port)",
                        ifname=ifname,
                        port=config.listen_port,
                    ) from None
                raise

    def delete(self, ifname: str) -> None:
        """Stop the recorded ``wireguard-go`` (SIGTERM, then SIGKILL); its TUN goes with it."""
        rec = self._recorded(ifname)
        proc = self._procs.pop(ifname, None)
        if rec is not None and self.is_ours(*rec):
            os.kill(rec[0], signal.SIGTERM)
            deadline = time.monotonic() + 3
            while self.is_ours(*rec) and time.monotonic() < deadline:
                if proc is not None and proc.pid == rec[0]:
                    proc.poll()
                time.sleep(0.02)
            if self.is_ours(*rec):
                os.kill(rec[0], signal.SIGKILL)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=3)
        for p in (self.record(ifname), os.path.join(self.state_dir, f"{ifname}.key")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        # a killed wireguard-go (SIGKILL: here after SIGTERM went unanswered, or by anyone) leaves its control
        # socket in the machine-wide directory; the name is this instance's, and no process answers on it
        stale = os.path.join(SOCKET_DIR, f"{ifname}.sock")
        if os.path.exists(stale) and not self._socket_answers(ifname):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)


def choose(host_ns: str | None, state_dir: str) -> tuple[Backend | None, str]:
    """The backend this host uses, and why (None: encryption is unavailable here, and why)."""
    if os.path.isdir(MODULE_DIR):
        from libnet.encryption.kernel_backend import KernelBackend

        return KernelBackend(host_ns), f"the kernel has the wireguard module ({MODULE_DIR})"
    if shutil.which("wireguard-go") and shutil.which("wg"):
        return UserspaceBackend(host_ns, state_dir), f"no wireguard kernel module ({MODULE_DIR} missing); userspace"
    return None, "no wireguard kernel module and no wireguard-go/wg: install wireguard-go and wireguard-tools"
