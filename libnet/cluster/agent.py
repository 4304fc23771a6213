"""Run and supervise a ``serf agent`` that outlives its supervisor.

The agent gets a JSON config file written here: node name, bind and advertise
address (IPv4 or IPv6), RPC on loopback with a random port and a random auth
key, gossip encryption through a keyring file (so rotated keys survive a
restart), tags (VTEP address, libnet version, ...), a snapshot file and
``rejoin_after_leave`` so a restarted agent rejoins on its own, and
``retry_join`` for the addresses to join.  If the agent dies, the supervisor
starts it again (backoff 0.5 s doubling to 10 s).

Host liveness is not supervisor liveness (DESIGN.md, "Liveness"): the Serf
agent runs in its own session, is not killed when libnet-agent dies, and
neither SIGTERM nor SIGINT makes it leave the cluster (``leave_on_terminate``
off, ``skip_leave_on_interrupt`` on).  Its pid, RPC address and auth key and
a fingerprint of its configuration are recorded in ``serf-agent.json`` in its
state dir (and the pid in ``serf.pid``).  :meth:`SerfAgent.start` re-attaches
to the recorded agent when it is alive -- the pid's ``/proc/PID/cmdline`` is
still ``serf agent -config-file=<ours>``, so a reused pid is never taken for
it -- and its configuration matches (tags alone are changed in place over
RPC); otherwise it is stopped (by that pid, without leaving) and started
anew with the same node name, which rejoins from its snapshot.
:meth:`SerfAgent.detach` lets go of a running agent (a graceful stop of
libnet-agent); :meth:`SerfAgent.stop` leaves the cluster (unless told not to)
and stops it (``libnet-agent --leave``, ``libnet node drain``).

Failure detection is Serf's (memberlist's SWIM with Lifeguard).  With the
``lan`` profile (default) a killed agent is reported failed by the others
after about 5-8 s on this kind of machine with a handful of nodes; the
``local`` profile probes faster (about 3-5 s), ``wan`` slower.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from libnet.cluster.serf import SerfClient, SerfUnavailable
from libnet.errors import BadRequest, InvalidOption, LibnetError, Unavailable

log = logging.getLogger("libnet.cluster.agent")
PROFILES = ("lan", "wan", "local")
RECORD = "serf-agent.json"
PIDFILE = "serf.pid"


def cmdline(pid: int) -> list[str]:
    """The argv of a live process (empty if it is gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def is_serf(pid: int, config_path: str) -> bool:
    """Whether ``pid`` is a ``serf agent`` running with ``config_path`` (not a reused pid)."""
    argv = cmdline(pid)
    return (
        len(argv) >= 3
        and os.path.basename(argv[0]).startswith("serf")
        and "agent" in argv[1:3]
        and f"-config-file={config_path}" in argv
    )


def signal_serf(pid: int, config_path: str, sig: int) -> bool:
    """Send ``sig`` to the recorded Serf agent if ``pid`` is still it; False if it is gone."""
    if not is_serf(pid, config_path):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def find_serf(config_path: str) -> int | None:
    """The pid of a ``serf agent`` running with ``config_path`` (ours), found in /proc:
    for when the record is lost or names another process."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and is_serf(int(entry), config_path):
            return int(entry)
    return None


def _address_changed(old_config: str, new_doc: dict[str, object]) -> bool:
    """Whether the Serf agent started from ``old_config`` gossips from another address
    than ``new_doc`` says (bind or advertise changed)."""
    try:
        with open(old_config) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return True
    return any(old.get(k) != new_doc.get(k) for k in ("bind", "advertise"))


def read_record(state_dir: str) -> dict[str, Any] | None:
    """The recorded Serf agent of a state dir (pid, rpc_port, rpc_auth, config, fingerprint), or None."""
    try:
        with open(os.path.join(state_dir, RECORD)) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("pid"), int) else None


def stop_recorded(state_dir: str, timeout: float = 5.0) -> bool:
    """Stop the Serf agent recorded in ``state_dir`` (by its pid, checked), without leaving.

    For cleanup by tools and tests; returns whether one was running."""
    rec = read_record(state_dir)
    if rec is None:
        return False
    pid, path = rec["pid"], rec.get("config", "")
    if not signal_serf(pid, path, signal.SIGTERM):
        return False
    deadline = time.monotonic() + timeout
    while is_serf(pid, path) and time.monotonic() < deadline:
        time.sleep(0.05)
    signal_serf(pid, path, signal.SIGKILL)
    return True


def _hostport(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


@dataclass
class SerfAgentConfig:
    """How to run one Serf agent."""

    node: str
    bind: str  # the gossip address, IPv4 or IPv6
    state_dir: str  # config, keyring, snapshot and log live here
    port: int = 7946
    advertise: str | None = None
    encrypt_key: str | None = None  # base64 of 16, 24 or 32 bytes; None: no encryption
    tags: dict[str, str] = field(default_factory=dict)
    join: list[str] = field(default_factory=list)  # "ip" or "ip:port"
    profile: str = "lan"
    rpc_port: int | None = None  # None: a free port
    rpc_auth: str | None = None  # None: a random key
    netns: str | None = None  # run inside this namespace (test hosts)
    binary: str = "serf"
    log_level: str = "info"

    def validate(self) -> None:
        if self.profile not in PROFILES:
            raise BadRequest(f"serf profile must be one of {PROFILES}", profile=self.profile)
        if self.encrypt_key is not None:
            try:
                raw = base64.b64decode(self.encrypt_key, validate=True)
            except ValueError:
                raise BadRequest("the cluster key must be base64") from None
            if len(raw) not in (16, 24, 32):
                raise BadRequest("the cluster key must be 16, 24 or 32 bytes (base64-encoded)")


class SerfAgent:
    """A supervised ``serf agent``; :attr:`client` talks to it."""

    def __init__(self, config: SerfAgentConfig) -> None:
        config.validate()
        self.config = config
        self.client: SerfClient | None = None
        self.proc: asyncio.subprocess.Process | None = None  # set when this process spawned it
        self._pid: int | None = None
        self.restarts = 0
        #: how :meth:`start` got its agent: "started", "attached" or "restarted" (config changed / unreachable)
        self.how = ""
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._config_path = os.path.join(config.state_dir, "serf.json")

    @property
    def pid(self) -> int | None:
        return self._pid

    def alive(self) -> bool:
        """Whether the supervised Serf agent is running (checked by pid and command line)."""
        return self._pid is not None and is_serf(self._pid, self._config_path)

    def _doc(self) -> dict[str, object]:
        c = self.config
        doc: dict[str, object] = {
            "node_name": c.node,
            "bind": _hostport(c.bind, c.port),
            "rpc_addr": f"127.0.0.1:{c.rpc_port}",
            "rpc_auth": c.rpc_auth,
            "tags": c.tags,
            "snapshot_path": os.path.join(c.state_dir, "snapshot"),
            "rejoin_after_leave": True,
            # stopping the process is not leaving the cluster: only an explicit leave (RPC) is
            "leave_on_terminate": False,
            "skip_leave_on_interrupt": True,
            "profile": c.profile,
            "log_level": c.log_level,
        }
        if c.advertise:
            doc["advertise"] = _hostport(c.advertise, c.port)
        if c.join:
            doc["retry_join"] = [j if "]:" in j or j.count(":") == 1 else _hostport(j, 7946) for j in c.join]
            doc["retry_interval"] = "2s"
        if c.encrypt_key:
            doc["keyring_file"] = os.path.join(c.state_dir, "keyring.json")
        return doc

    def fingerprint(self) -> str:
        """What a running agent must have been started with to be re-attached: everything
        but the RPC port and key (reused from the record) and the tags (changed over RPC)."""
        doc = {k: v for k, v in self._doc().items() if k not in ("rpc_addr", "rpc_auth", "tags")}
        doc["netns"] = self.config.netns or ""
        doc["binary"] = self.config.binary
        doc["encrypt_key"] = self.config.encrypt_key or ""
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def _write_config(self) -> str:
        c = self.config
        os.makedirs(c.state_dir, exist_ok=True)
        doc = self._doc()
        if c.encrypt_key:
            keyring = str(doc["keyring_file"])  # set by _doc() whenever encrypt_key is
            if not os.path.exists(keyring):  # keep rotated keys across restarts
                with open(keyring, "w") as f:
                    json.dump([c.encrypt_key], f)
        _write_private(self._config_path, json.dumps(doc))
        return self._config_path

    def _write_record(self) -> None:
        assert self._pid is not None
        c = self.config
        rec = {
            "pid": self._pid,
            "rpc_port": c.rpc_port,
            "rpc_auth": c.rpc_auth,
            "config": self._config_path,
            "fingerprint": self.fingerprint(),
            "tags": c.tags,
            "started": time.time(),
        }
        _write_private(os.path.join(c.state_dir, RECORD), json.dumps(rec))
        _write_private(os.path.join(c.state_dir, PIDFILE), str(self._pid))

    def _forget_record(self) -> None:
        for name in (RECORD, PIDFILE):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.config.state_dir, name))

    def _free_rpc_port(self) -> int:
        from libnet.kernel import netns

        sock = netns.open_socket(self.config.netns, socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
            return port

    async def start(self, timeout: float = 15.0, adopt: bool = True) -> SerfClient:
        """Re-attach to the recorded Serf agent (``adopt``, when alive and configured
        alike) or start one; wait until its RPC answers, and supervise it."""
        c = self.config
        binary = shutil.which(c.binary)
        if binary is None:
            raise Unavailable(f"'{c.binary}' not found: install the Debian package 'serf'", binary=c.binary)
        self._binary = binary
        self._stopping = False
        os.makedirs(c.state_dir, exist_ok=True)
        self._check_keyring()
        rec = read_record(c.state_dir)
        running = rec is not None and rec.get("config") == self._config_path and is_serf(rec["pid"], self._config_path)
        if not running and (stray := find_serf(self._config_path)) is not None:
            # ours, but the record is lost or names another process: never two agents, never an orphan
            log.warning("serf agent pid %d runs with this state dir's config but is not recorded: restarting it", stray)
            await _terminate(stray, self._config_path, 10.0)
        same = running and rec is not None and rec.get("fingerprint") == self.fingerprint()
        if adopt and same and rec is not None and await self._attach(rec, timeout):
            self.how = "attached"
            self._supervisor = asyncio.create_task(self._supervise())
            return self._client()
        if running and rec is not None:
            log.info("serf agent %s (pid %d) runs with another configuration: restarting it", c.node, rec["pid"])
            if _address_changed(self._config_path, self._doc()):
                # a new address under the same name is a conflict for the others until the old
                # member has *left* (memberlist lets a left name be reclaimed at once)
                await self._leave_recorded(rec)
            await _terminate(rec["pid"], self._config_path, 10.0)
            if c.rpc_port is None and c.rpc_auth is None:  # the same RPC address: clients keep working
                c.rpc_port, c.rpc_auth = rec.get("rpc_port"), rec.get("rpc_auth")
            self.how = "restarted"
        else:
            self.how = "started"
        if c.rpc_port is None:
            c.rpc_port = self._free_rpc_port()
        if c.rpc_auth is None:
            c.rpc_auth = secrets.token_hex(16)
        self._write_config()
        await self._spawn()
        self.client = SerfClient("127.0.0.1", c.rpc_port, auth_key=c.rpc_auth, netns=c.netns)
        await self._wait_rpc(timeout)
        self._supervisor = asyncio.create_task(self._supervise())
        return self.client

    def _client(self) -> SerfClient:
        assert self.client is not None
        return self.client

    def _check_keyring(self) -> None:
        """A changed ``encrypt_key`` cannot simply be used: Serf keeps the keys in use in its
        keyring, and a host with a key the others lack is cut off.  Refuse, saying how to rotate."""
        c = self.config
        keyring = os.path.join(c.state_dir, "keyring.json")
        if not c.encrypt_key or not os.path.exists(keyring):
            return
        try:
            with open(keyring) as f:
                keys = json.load(f)
        except (OSError, ValueError):
            return
        if isinstance(keys, list) and c.encrypt_key not in keys:
            raise InvalidOption(
                f"the cluster key changed, but this host's Serf keyring ({keyring}) does not hold the new key: "
                "rotate it on the running cluster (serf keys -install NEW, -use NEW, -remove OLD on any "
                "member), or start with the key in use",
                keyring=keyring,
            )

    async def _leave_recorded(self, rec: dict[str, Any]) -> None:
        """Make the recorded agent leave the cluster gracefully (bounded; a failure is logged)."""
        port = rec.get("rpc_port")
        if not isinstance(port, int):
            log.warning("serf agent %s has no recorded RPC port: it cannot be asked to leave", self.config.node)
            return
        old = SerfClient("127.0.0.1", port, auth_key=rec.get("rpc_auth"), netns=self.config.netns)
        try:
            await asyncio.wait_for(old.leave(), 15)
            log.info("serf agent %s left the cluster before its address changes", self.config.node)
        except (LibnetError, OSError, TimeoutError) as exc:
            log.warning("serf agent %s did not leave before its address changes: %s", self.config.node, exc)
        finally:
            await old.close()

    async def _attach(self, rec: dict[str, Any], timeout: float) -> bool:
        """Connect to a running agent with the recorded RPC address; tags brought up to date."""
        c = self.config
        port = rec.get("rpc_port")
        if not isinstance(port, int):  # no RPC address recorded: nothing to attach to
            return False
        c.rpc_port, c.rpc_auth = port, rec.get("rpc_auth")
        self._pid = rec["pid"]
        self.client = SerfClient("127.0.0.1", port, auth_key=c.rpc_auth, netns=c.netns)
        try:
            await self._wait_rpc(min(timeout, 5.0))
        except Unavailable as exc:
            log.warning("serf agent pid %d does not answer on its RPC address (%s): restarting it", self._pid, exc)
            await self.client.close()
            self.client, self._pid = None, None
            c.rpc_port = c.rpc_auth = None
            return False
        if rec.get("tags") != c.tags:
            stale = [k for k in rec.get("tags") or {} if k not in c.tags]
            await self.client.tags(dict(c.tags), stale)
        self._write_config()  # the file on disk says what the agent runs with (tags included)
        self._write_record()
        log.info("re-attached to the running serf agent %s (pid %d)", c.node, self._pid)
        return True

    async def _spawn(self) -> None:
        # The agent runs in its own session and outlives us (see the module
        # docstring).  The namespace is entered by util-linux's nsenter rather
        # than a preexec_fn where possible: Python code between fork and exec
        # in a process with other threads (the etcd client's gRPC) can crash
        # or hang the child (seen: SIGSEGV).
        argv = [self._binary, "agent", f"-config-file={self._config_path}"]
        preexec = None
        if self.config.netns is not None:
            from libnet.kernel import netns

            nsenter = shutil.which("nsenter")
            if nsenter:
                argv = [nsenter, f"--net={netns.path_of(self.config.netns)}", "--", *argv]
            else:
                preexec = netns.preexec_enter(self.config.netns)
        logfile = open(os.path.join(self.config.state_dir, "serf.log"), "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=logfile,
                preexec_fn=preexec,
                start_new_session=True,
            )
        finally:
            logfile.close()
        self._pid = self.proc.pid
        self._write_record()

    async def _wait_rpc(self, timeout: float) -> None:
        assert self.client is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.proc is not None and self.proc.returncode is not None:
                raise Unavailable(f"serf agent exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                await self.client.connect()
                return
            except (TimeoutError, SerfUnavailable, OSError):
                if loop.time() > deadline:
                    raise Unavailable(f"serf agent RPC did not answer in {timeout:g}s: {self.log_tail()}") from None
                await asyncio.sleep(0.05)

    def log_tail(self) -> str:
        try:
            with open(os.path.join(self.config.state_dir, "serf.log"), "rb") as f:
                return f.read()[-1500:].decode(errors="replace")
        except OSError:
            return ""

    async def _gone(self) -> int | None:
        """Wait until the supervised agent is gone; its exit code when it was our child."""
        if self.proc is not None and self.proc.pid == self._pid:
            return await self.proc.wait()
        while self.alive():  # re-attached: not our child, watched by pid
            await asyncio.sleep(0.5)
        return None

    def _stopped(self) -> bool:
        """Whether stop() began (a call, not the attribute: it changes while _supervise awaits)."""
        return self._stopping

    async def _supervise(self) -> None:
        delay = 0.5
        while not self._stopped():
            rc = await self._gone()
            if self._stopped():
                return
            log.warning("serf agent %s exited with %s; restarting in %.1fs", self.config.node, rc, delay)
            await asyncio.sleep(delay)
            if self._stopped():
                return
            try:
                self._write_config()
                await self._spawn()
                self.restarts += 1
                delay = 0.5
            except OSError as exc:
                log.error("cannot restart serf agent: %s", exc)
                delay = min(delay * 2, 10.0)

    async def _end_supervision(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None

    async def detach(self) -> None:
        """Stop supervising and let go of the agent, which keeps running (and stays
        in the cluster) for the next start to re-attach."""
        await self._end_supervision()
        if self.client is not None:
            await self.client.close()

    async def stop(self, leave: bool = True, timeout: float = 10.0) -> None:
        """Stop supervising and stop the agent, leaving the cluster gracefully first
        (unless ``leave`` is false: then the others see it fail)."""
        await self._end_supervision()
        if self.client is not None:
            if leave and self.alive():
                with contextlib.suppress(Exception):
                    await self.client.leave()  # the agent shuts down after leaving
            await self.client.close()
        if self._pid is not None:
            await _terminate(self._pid, self._config_path, timeout, self.proc)
        self._forget_record()

    def kill(self, restart: bool = True) -> None:
        """SIGKILL the agent (tests of failure handling).

        The supervisor restarts it unless ``restart`` is False, in which case
        supervision ends too (as if the whole host died).
        """
        if not restart:
            self._stopping = True
            if self._supervisor is not None:
                self._supervisor.cancel()
        if self._pid is not None:
            signal_serf(self._pid, self._config_path, signal.SIGKILL)


def _write_private(path: str, text: str) -> None:
    """Write a file of mode 0600 atomically (it may hold the RPC key)."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


async def _terminate(
    pid: int, config_path: str, timeout: float, proc: asyncio.subprocess.Process | None = None
) -> None:
    """SIGTERM the Serf agent ``pid`` (checked by command line), SIGKILL after ``timeout``."""
    if not signal_serf(pid, config_path, signal.SIGTERM):
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    if proc is not None and proc.pid == pid:
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            signal_serf(pid, config_path, signal.SIGKILL)
            await proc.wait()
        return
    while is_serf(pid, config_path):
        if loop.time() > deadline:
            signal_serf(pid, config_path, signal.SIGKILL)
            deadline = loop.time() + 5
        await asyncio.sleep(0.05)
