"""Run and supervise a ``serf agent`` as a child process.

The agent gets a JSON config file written here: node name, bind and advertise
address (IPv4 or IPv6), RPC on loopback with a random port and a random auth
key, gossip encryption through a keyring file (so rotated keys survive a
restart), tags (VTEP address, libnet version, ...), a snapshot file and
``rejoin_after_leave`` so a restarted agent rejoins on its own, and
``retry_join`` for the addresses to join.  If the agent dies, the supervisor
starts it again (backoff 0.5 s doubling to 10 s); :meth:`SerfAgent.stop` asks
it to leave the cluster gracefully first.

Failure detection is Serf's (memberlist's SWIM with Lifeguard).  With the
``lan`` profile (default) a killed agent is reported failed by the others
after about 5-8 s on this kind of machine with a handful of nodes; the
``local`` profile probes faster (about 3-5 s), ``wan`` slower.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass, field

from libnet.cluster.serf import SerfClient, SerfUnavailable
from libnet.errors import BadRequest, Unavailable

log = logging.getLogger("libnet.cluster.agent")
_PR_SET_PDEATHSIG = 1
PROFILES = ("lan", "wan", "local")


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
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _write_config(self) -> str:
        c = self.config
        os.makedirs(c.state_dir, exist_ok=True)
        keyring = os.path.join(c.state_dir, "keyring.json")
        doc = {
            "node_name": c.node,
            "bind": _hostport(c.bind, c.port),
            "rpc_addr": f"127.0.0.1:{c.rpc_port}",
            "rpc_auth": c.rpc_auth,
            "tags": c.tags,
            "snapshot_path": os.path.join(c.state_dir, "snapshot"),
            "rejoin_after_leave": True,
            "leave_on_terminate": True,
            "profile": c.profile,
            "log_level": c.log_level,
        }
        if c.advertise:
            doc["advertise"] = _hostport(c.advertise, c.port)
        if c.join:
            doc["retry_join"] = [j if "]:" in j or j.count(":") == 1 else _hostport(j, 7946) for j in c.join]
            doc["retry_interval"] = "2s"
        if c.encrypt_key:
            if not os.path.exists(keyring):  # keep rotated keys across restarts
                with open(keyring, "w") as f:
                    json.dump([c.encrypt_key], f)
            doc["keyring_file"] = keyring
        path = os.path.join(c.state_dir, "serf.json")
        with open(path, "w") as f:
            json.dump(doc, f)
        os.chmod(path, 0o600)
        return path

    def _free_rpc_port(self) -> int:
        from libnet.kernel import netns

        sock = netns.open_socket(self.config.netns, socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    async def start(self, timeout: float = 15.0) -> SerfClient:
        """Start the agent, wait until its RPC answers, and supervise it."""
        c = self.config
        binary = shutil.which(c.binary)
        if binary is None:
            raise Unavailable(f"'{c.binary}' not found: install the Debian package 'serf'", binary=c.binary)
        if c.rpc_port is None:
            c.rpc_port = self._free_rpc_port()
        if c.rpc_auth is None:
            c.rpc_auth = secrets.token_hex(16)
        self._config_path = self._write_config()
        self._binary = binary
        self._stopping = False
        await self._spawn()
        self.client = SerfClient("127.0.0.1", c.rpc_port, auth_key=c.rpc_auth, netns=c.netns)
        await self._wait_rpc(timeout)
        self._supervisor = asyncio.create_task(self._supervise())
        return self.client

    async def _spawn(self) -> None:
        # The agent dies with us: an agent that crashed must not leave a Serf
        # agent behind that holds the ports its restart needs.  Set up by
        # util-linux's setpriv/nsenter rather than a preexec_fn: Python code
        # between fork and exec in a process with other threads (the etcd
        # client's gRPC) can crash or hang the child (seen: SIGSEGV).
        argv = [self._binary, "agent", f"-config-file={self._config_path}"]
        preexec = None
        setpriv, nsenter = shutil.which("setpriv"), shutil.which("nsenter")
        if setpriv and (self.config.netns is None or nsenter):
            argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
            if self.config.netns is not None:
                from libnet.kernel import netns

                argv = [nsenter, f"--net={netns.path_of(self.config.netns)}", "--", *argv]
        else:  # no util-linux: the same in the child, before exec
            enter = None
            if self.config.netns is not None:
                from libnet.kernel import netns

                enter = netns.preexec_enter(self.config.netns)

            def preexec() -> None:
                ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
                if enter is not None:
                    enter()

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
        with open(os.path.join(self.config.state_dir, "serf.pid"), "w") as f:
            f.write(str(self.proc.pid))

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

    async def _supervise(self) -> None:
        delay = 0.5
        while not self._stopping:
            assert self.proc is not None
            rc = await self.proc.wait()
            if self._stopping:
                return
            log.warning("serf agent %s exited with %s; restarting in %.1fs", self.config.node, rc, delay)
            await asyncio.sleep(delay)
            if self._stopping:
                return
            try:
                await self._spawn()
                self.restarts += 1
                delay = 0.5
            except OSError as exc:
                log.error("cannot restart serf agent: %s", exc)
                delay = min(delay * 2, 10.0)

    async def stop(self, leave: bool = True, timeout: float = 10.0) -> None:
        """Stop supervising and stop the agent, leaving the cluster gracefully first."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self.client is not None:
            if leave and self.proc is not None and self.proc.returncode is None:
                with contextlib.suppress(Exception):
                    await self.client.leave()  # the agent shuts down after leaving
            await self.client.close()
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()

    def kill(self, restart: bool = True) -> None:
        """SIGKILL the agent (tests of failure handling).

        The supervisor restarts it unless ``restart`` is False, in which case
        supervision ends too (as if the whole host died).
        """
        if not restart:
            self._stopping = True
            if self._supervisor is not None:
                self._supervisor.cancel()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
