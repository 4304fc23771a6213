"""Run libnet-agent processes inside test hosts, and drive them with the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from libnet.testing.hosts import Host, Testbed
from libnet.testing.pools import agent_toml

CLI = [sys.executable, "-m", "agent.cli"]


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class AgentProcess:
    """One ``libnet-agent`` in a test host, with its own store, state dir and socket.

    ``store``: the store URL (default ``sqlite://<state dir>/store.db``);
    ``socket``: the API socket (default ``<state dir>/libnet.sock``).

    The agent's default pools are the test ones (:mod:`libnet.testing.pools`,
    a ``--config`` file of this object's): a ``--config`` in ``extra`` replaces
    that file (give the pools there too, :func:`libnet.testing.pools.agent_toml`),
    ``--default-address-pool`` flags replace its ``default_pools``."""

    def __init__(
        self,
        bed: Testbed,
        host: Host,
        *extra: str,
        state_dir: str | None = None,
        store: str | None = None,
        socket: str | None = None,
    ) -> None:
        self.bed, self.host = bed, host
        self.dir = state_dir or tempfile.mkdtemp(prefix=f"libnet-agent-{host.name}-")
        os.makedirs(self.dir, exist_ok=True)
        made_dir = state_dir is None
        self.socket = socket or os.path.join(self.dir, "libnet.sock")
        self.store = store or f"sqlite://{self.dir}/store.db"
        self.extra = list(extra)
        #: the Docker plugin's socket: in the state dir (a dockerd of the test host finds it through a bind mount,
        #: libnet.testing.docker), never the machine's /run/docker/plugins
        self.plugin_socket = os.path.join(self.dir, "plugins", "libnet.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        # outside the state dir: tests remove and replace state dirs
        fd, self.pools_config = tempfile.mkstemp(prefix=f"libnet-pools-{host.name}-", suffix=".toml")
        with os.fdopen(fd, "w") as f:
            f.write(agent_toml())
        bed.on_close(lambda: _remove(self.pools_config))
        self._serf_record: dict[str, Any] | None = None
        # the Serf agent outlives libnet-agent: stopped by its recorded pid with the test bed
        bed.on_close(self.stop_serf)
        bed.on_close(self.stop_wireguard)
        if made_dir:  # then the state dir this object made (a caller's own dir is the caller's)
            bed.on_close(lambda: shutil.rmtree(self.dir, ignore_errors=True))

    def stop_serf(self) -> bool:
        """Stop the Serf agent this agent left running (by its recorded, checked pid), without leaving."""
        from libnet.cluster.agent import read_record, signal_serf, stop_recorded

        self._remember_serf()
        if stop_recorded(os.path.join(self.dir, "serf")):
            return True
        # the state dir may be gone already: the last record seen
        rec = self._serf_record or read_record(os.path.join(self.dir, "serf"))
        if not rec:
            return False
        return signal_serf(rec["pid"], rec.get("config", ""), signal.SIGKILL)

    def wireguard_pids(self) -> dict[str, int]:
        """Interface -> pid of this agent's ``wireguard-go`` processes as recorded, while they are still those."""
        import glob

        from libnet.encryption.backend import UserspaceBackend

        backend = UserspaceBackend(None, os.path.join(self.dir, "wireguard"))
        out = {}
        for path in glob.glob(os.path.join(backend.state_dir, "wireguard-go-*.json")):
            ifname = os.path.basename(path)[len("wireguard-go-") : -len(".json")]
            pid = backend.pid(ifname)
            if pid is not None:
                out[ifname] = pid
        return out

    def wireguard_pid(self) -> int | None:
        """The pid of the one ``wireguard-go`` of this agent (None: none, or several during a key rotation)."""
        pids = list(self.wireguard_pids().values())
        return pids[0] if len(pids) == 1 else None

    def stop_wireguard(self) -> None:
        """Stop the ``wireguard-go`` an agent killed without cleanup left (by its recorded, checked pid)."""
        from libnet.encryption.backend import UserspaceBackend

        backend = UserspaceBackend(None, os.path.join(self.dir, "wireguard"))
        for ifname in self.wireguard_pids():
            backend.delete(ifname)

    def _remember_serf(self) -> None:
        from libnet.cluster.agent import read_record

        rec = read_record(os.path.join(self.dir, "serf"))
        if rec is not None:
            self._serf_record = rec

    def serf_pid(self) -> int | None:
        """The pid of this agent's Serf agent as recorded, if it is still that Serf agent."""
        from libnet.cluster.agent import is_serf, read_record

        rec = read_record(os.path.join(self.dir, "serf"))
        return rec["pid"] if rec and is_serf(rec["pid"], rec.get("config", "")) else None

    def argv(self, *once: str) -> list[str]:
        """The agent's command line, with ``once`` (e.g. ``--adopt``) added for one run."""
        return [
            sys.executable,
            "-m",
            "agent",
            "--socket",
            self.socket,
            "--store",
            self.store,
            "--state-dir",
            self.dir,
            "--node-name",
            self.host.name,
            # namespaces named under the test bed's prefix are removed with it
            "--sandbox-prefix",
            f"{self.bed.prefix}{self.host.name}-sb-",
            "--overlay-prefix",
            f"{self.bed.prefix}{self.host.name}-o",
            "--docker-plugin-socket",
            self.plugin_socket,
            "--config",
            self.pools_config,
            *self.extra,
            *once,
        ]  # removed with the test bed

    def spawn(self, *once: str, **kw: Any) -> subprocess.Popen[bytes]:
        """Start the agent process and return at once (output to ``kw`` or the agent log)."""
        if "stdout" not in kw:
            log = open(os.path.join(self.dir, "agent.log"), "ab")  # noqa: SIM115 - the child keeps it
            kw.update(stdout=log, stderr=log)
            try:
                return self.bed.spawn(self.host.ns, self.argv(*once), **kw)
            finally:
                log.close()
        return self.bed.spawn(self.host.ns, self.argv(*once), **kw)

    def start(self, timeout: float = 30, *, once: tuple[str, ...] = ()) -> AgentProcess:
        """Start the agent and wait until it answers; ``once``: flags for this run only."""
        self.proc = self.spawn(*once)
        deadline = time.monotonic() + timeout
        while not (os.path.exists(self.socket) and self.cli("agent", "status").returncode == 0):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agent did not start: {self.log_tail()}")
            time.sleep(0.1)
        self._remember_serf()
        return self

    def run_to_exit(self, *once: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the agent expecting it to exit by itself (a refused start); its output in ``stdout``.

        An agent still running after ``timeout`` seconds is killed and an error raised."""
        proc = self.spawn(*once, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=10)
            tail = out.decode(errors="replace")[-2000:]
            raise RuntimeError(f"the agent did not exit within {timeout}s: {tail}") from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(errors="replace"), "")

    def log_tail(self) -> str:
        with open(os.path.join(self.dir, "agent.log"), "rb") as f:
            return f.read()[-3000:].decode(errors="replace")

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, "--socket", self.socket, *args], capture_output=True, text=True, timeout=timeout)

    def cli_json(self, *args: str) -> Any:
        r = self.cli(*args, "--json")
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
        return json.loads(r.stdout)

    def kill(self) -> None:
        """SIGKILL, no cleanup at all."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM: a graceful stop."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
