"""Run libnet-agent processes inside test hosts, and drive them with the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from libnet.testing.hosts import Host, Testbed

CLI = [sys.executable, "-m", "agent.cli"]


class AgentProcess:
    """One ``libnet-agent`` in a test host, with its own store, state dir and socket."""

    def __init__(self, bed: Testbed, host: Host, *extra: str, state_dir: str | None = None) -> None:
        self.bed, self.host = bed, host
        self.dir = state_dir or tempfile.mkdtemp(prefix=f"libnet-agent-{host.name}-")
        os.makedirs(self.dir, exist_ok=True)
        self.socket = os.path.join(self.dir, "libnet.sock")
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> AgentProcess:
        argv = [
            sys.executable,
            "-m",
            "agent",
            "--socket",
            self.socket,
            "--store",
            f"sqlite://{self.dir}/store.db",
            "--state-dir",
            self.dir,
            "--node-name",
            self.host.name,
            # namespaces named under the test bed's prefix are removed with it
            "--sandbox-prefix",
            f"{self.bed.prefix}{self.host.name}-sb-",
            "--overlay-prefix",
            f"{self.bed.prefix}{self.host.name}-o",
            *self.extra,
        ]  # removed with the test bed
        log = open(os.path.join(self.dir, "agent.log"), "ab")  # noqa: SIM115 - the child keeps it
        self.proc = self.bed.spawn(self.host.ns, argv, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while not (os.path.exists(self.socket) and self.cli("agent", "status").returncode == 0):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agent did not start: {self.log_tail()}")
            time.sleep(0.1)
        return self

    def log_tail(self) -> str:
        with open(os.path.join(self.dir, "agent.log"), "rb") as f:
            return f.read()[-3000:].decode(errors="replace")

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
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
