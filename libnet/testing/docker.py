"""A real Docker Engine (dockerd 20.10, Debian ``docker.io``) inside a test host.

Installs nothing, at import or ever (``scripts/install-system-deps`` does);
:func:`missing` names what is absent.  :class:`DockerEngine` starts dockerd as
``shared/reference/runtimes.md`` describes, inside the test host's network
namespace and a private mount namespace of its own::

    (net: host ns) unshare -m --propagation slave sh -c '
        mount -t tmpfs tmpfs /run              # shim sockets, /run/docker: private
        mount --bind WORK/etc /etc/docker      # plugins/libnet.spec -> the agent's socket
        exec dockerd --data-root ... --exec-root ... --pidfile ... -H unix://WORK/docker.sock
                     --storage-driver=vfs --iptables=false --ip6tables=false --bridge=none
                     --exec-opt native.cgroupdriver=cgroupfs --cgroup-parent=/<bed prefix><host>-docker
                     --config-file WORK/daemon.json'

So nothing of dockerd's lands in the machine's ``/run`` or ``/etc/docker``; the
plugin is found through ``/etc/docker/plugins/libnet.spec`` (a URL to the
agent's plugin socket, :attr:`AgentProcess.plugin_socket`), which only this
dockerd sees.  ``default-address-pools`` stay in documentation ranges.

:meth:`DockerEngine.close` (also registered with the test bed, so it runs on
failure) removes the containers, stops dockerd by its pidfile's pid, kills by
pid what is left (processes naming the engine's work dir -- containerd, shims
-- and those in its cgroups), removes the cgroups and the work dir.  Every
wait is bounded.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

from libnet.testing.hosts import Host, Testbed

IMAGE = "libnet-busybox"
DOCKER_PACKAGES = {"dockerd": "docker.io", "docker": "docker.io", "containerd": "docker.io (containerd)"}
BUSYBOX = "/bin/busybox"
#: pools Docker takes for the networks it makes itself (docker_gwbridge): documentation ranges only
DOCKER_POOLS = [{"base": "198.51.100.224/27", "size": 28}]
CGROOT = "/sys/fs/cgroup"
_rootfs: dict[int, str] = {}  # per process: the busybox rootfs tarball, built once per run


def missing() -> str | None:
    """What is missing to run a real Docker Engine here, as a sentence; None if nothing."""
    gone = sorted({pkg for binary, pkg in DOCKER_PACKAGES.items() if shutil.which(binary) is None})
    if not _static_busybox():
        gone.append("busybox-static")
    if gone:
        return f"needs {', '.join(gone)}: run scripts/install-system-deps"
    return None


def _busybox_path() -> str | None:
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(path):
            return path
    return None


def _static_busybox() -> bool:
    path = _busybox_path()
    if path is None:
        return False
    with open(path, "rb") as f:
        head = f.read(4096)
    return b"ld-linux" not in head and b"/lib64/ld" not in head


def busybox_rootfs() -> str:
    """A tarball of a busybox rootfs (``/bin/busybox``, one link per applet,
    ``/etc/passwd``, ``/etc/group``), built once per run (process)."""
    cached = _rootfs.get(os.getpid())
    if cached and os.path.exists(cached):
        return cached
    src = _busybox_path()
    if src is None or not _static_busybox():
        raise RuntimeError("a static busybox is needed for the test image: install busybox-static")
    _remove_stale_rootfs()
    work = tempfile.mkdtemp(prefix=f"libnet-busybox-{os.getpid()}-")
    atexit.register(shutil.rmtree, work, True)  # once per run: removed when the run ends
    root = os.path.join(work, "rootfs")
    os.makedirs(os.path.join(root, "bin"))
    os.makedirs(os.path.join(root, "etc"))
    for d in ("tmp", "proc", "sys", "dev"):
        os.makedirs(os.path.join(root, d))
    shutil.copy2(src, os.path.join(root, "bin", "busybox"))
    applets = subprocess.run([src, "--list"], capture_output=True, text=True, timeout=10, check=True).stdout.split()
    for applet in applets:
        link = os.path.join(root, "bin", applet)
        if applet != "busybox" and not os.path.exists(link):
            os.symlink("busybox", link)
    with open(os.path.join(root, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    with open(os.path.join(root, "etc", "group"), "w") as f:
        f.write("root:x:0:\nnogroup:x:65534:\n")
    tarball = os.path.join(work, "rootfs.tar")
    subprocess.run(["tar", "-C", root, "-cf", tarball, "."], check=True, timeout=60)
    shutil.rmtree(root)
    _rootfs[os.getpid()] = tarball
    return tarball


def _remove_stale_rootfs() -> None:
    """Rootfs dirs of runs whose process is gone (one that died before its exit handlers ran)."""
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        parts = name.split("-")
        ours = name.startswith("libnet-busybox-") and len(parts) >= 4 and parts[2].isdigit()
        if ours and not _alive(int(parts[2])):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)


class DockerEngine:
    """One dockerd in test host ``host`` that finds libnet's plugin at ``plugin_socket``."""

    def __init__(self, bed: Testbed, host: Host, plugin_socket: str | None = None) -> None:
        self.bed, self.host = bed, host
        self.plugin_socket = plugin_socket
        self.work = tempfile.mkdtemp(prefix=f"lnd-{host.name}-")  # short: unix socket paths under it
        self.sock = os.path.join(self.work, "docker.sock")
        self.pidfile = os.path.join(self.work, "docker.pid")
        self.cgroup = f"{bed.prefix}{host.name}-docker"
        self.proc: subprocess.Popen | None = None
        self._closed = False
        #: more to show next to a failed docker command (a test sets it: e.g. the plugin agent's log tail)
        self.diagnose: Callable[[], str] | None = None
        bed.on_close(self.close)

    # --- life cycle ---------------------------------------------------------------

    def _script(self) -> str:
        etc = os.path.join(self.work, "etc")
        os.makedirs(os.path.join(etc, "plugins"), exist_ok=True)
        if self.plugin_socket:
            with open(os.path.join(etc, "plugins", "libnet.spec"), "w") as f:
                f.write(f"unix://{self.plugin_socket}\n")
        config = {
            "default-address-pools": DOCKER_POOLS,
            "deprecated-key-path": os.path.join(self.work, "key.json"),
        }
        with open(os.path.join(self.work, "daemon.json"), "w") as f:
            json.dump(config, f)
        argv = [
            "dockerd",
            f"--data-root={self.work}/data",
            f"--exec-root={self.work}/exec",
            f"--pidfile={self.pidfile}",
            f"-H=unix://{self.sock}",
            "--storage-driver=vfs",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            "--bridge=none",
            "--exec-opt=native.cgroupdriver=cgroupfs",
            f"--cgroup-parent=/{self.cgroup}",
            f"--config-file={self.work}/daemon.json",
        ]
        return (
            "set -e; mount -t tmpfs -o mode=0755 tmpfs /run; "
            f"mkdir -p /etc/docker && mount --bind {etc} /etc/docker; exec " + " ".join(argv)
        )

    def start(self, timeout: float = 60) -> DockerEngine:
        """Start dockerd and wait until it answers; the test image is loaded once per engine."""
        reason = missing()
        if reason:
            raise RuntimeError(reason)
        if not os.path.isdir("/etc/docker"):
            raise RuntimeError("/etc/docker is missing (the docker.io package makes it)")
        log = open(os.path.join(self.work, "dockerd.log"), "ab")  # noqa: SIM115 - the child keeps it
        try:
            self.proc = self.bed.spawn(
                self.host.ns,
                ["unshare", "-m", "--propagation", "slave", "sh", "-c", self._script()],
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start: {self.log_tail()}")
            time.sleep(0.2)
        if self.docker("image", "inspect", IMAGE, check=False).returncode != 0:
            self.docker("import", "-c", "ENV PATH=/bin", "-c", 'CMD ["/bin/sh"]', busybox_rootfs(), IMAGE, timeout=120)
        return self

    def _answers(self) -> bool:
        """Whether the API answers (it holds requests while dockerd restores containers after a crash)."""
        try:
            return self.docker("version", timeout=10, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def pid(self) -> int | None:
        """dockerd's pid, from its pidfile."""
        try:
            with open(self.pidfile) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 20) -> None:
        """Stop dockerd by its recorded pid (containers keep running only as far as dockerd lets them)."""
        pid = self.pid() or (self.proc.pid if self.proc is not None else None)
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        self.proc = None
        # a dockerd that was killed leaves containerd's pidfile; a dead (or zombie) pid there makes the next
        # dockerd wait for that containerd for good
        pidfile = os.path.join(self.work, "exec", "containerd", "containerd.pid")
        try:
            with open(pidfile) as f:
                cpid = int(f.read().strip() or 0)
        except (OSError, ValueError):
            return
        if cpid and _alive(cpid):
            return
        with contextlib.suppress(OSError):
            os.unlink(pidfile)

    def restart(self, timeout: float = 60) -> DockerEngine:
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        """Remove everything: containers, dockerd, leftovers by pid, cgroups, the work dir."""
        if self._closed:
            return
        self._closed = True
        if self.proc is not None and self.proc.poll() is None:
            ids = self.docker("ps", "-aq", check=False, timeout=20).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False, timeout=60)
        self.stop()
        for pid in self._leftovers():
            _kill_pid(pid)
        self._remove_cgroups()
        shutil.rmtree(self.work, ignore_errors=True)

    def _leftovers(self) -> list[int]:
        """Pids of processes of this engine still alive: those naming its work dir, those in its cgroups."""
        pids = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if self.work.encode() in f.read():
                        pids.add(int(entry))
            except OSError:
                continue
        for path in self._cgroup_dirs():
            for name in ("cgroup.procs", "tasks"):
                try:
                    with open(os.path.join(path, name)) as f:
                        pids.update(int(p) for p in f.read().split())
                except OSError:
                    continue
        pids.discard(os.getpid())
        return sorted(pids)

    def _cgroup_dirs(self) -> list[str]:
        """This engine's cgroup directories, deepest first."""
        out = []
        roots = [os.path.join(CGROOT, c) for c in os.listdir(CGROOT)] if os.path.isdir(CGROOT) else []
        for root in [CGROOT, *roots]:
            top = os.path.join(root, self.cgroup)
            if os.path.isdir(top):
                for dirpath, _dirs, _files in os.walk(top, topdown=False):
                    out.append(dirpath)
        return out

    def _remove_cgroups(self) -> None:
        for _ in range(50):  # bounded: processes take a moment to leave
            left = [p for p in self._cgroup_dirs() if not _rmdir(p)]
            if not left:
                return
            time.sleep(0.1)

    # --- the CLI --------------------------------------------------------------------

    def docker(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``docker ARGS`` against this engine (the CLI is a client: it runs where we are)."""
        r = subprocess.run(
            ["/usr/bin/docker", "-H", f"unix://{self.sock}", *args], capture_output=True, text=True, timeout=timeout
        )
        if check and r.returncode != 0:
            raise RuntimeError(
                f"docker {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}\n{self.diagnostics()}"
            )
        return r

    def diagnostics(self) -> str:
        """What to read next to a failed command (a rare failure in CI leaves nothing else): dockerd's
        log tail, the links of the test host, and :attr:`diagnose`'s text."""
        parts = [f"dockerd's log:\n{self.log_tail(15)}"]
        try:
            links = subprocess.run(
                ["ip", "-n", self.host.ns, "-d", "-o", "link"], capture_output=True, text=True, timeout=10
            )
            parts.append(f"links of {self.host.name} (ip -d -o link):\n{links.stdout[-6000:]}{links.stderr}")
            if self.diagnose is not None:
                parts.append(self.diagnose())
        except Exception as exc:  # a diagnosis must not hide the failure it is about
            parts.append(f"(no more: {exc!r})")
        return "".join(f"--- {p.rstrip()}\n" for p in parts)

    def inspect(self, *args: str) -> Any:
        return json.loads(self.docker("inspect", *args).stdout)

    def exec(self, container: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return self.docker("exec", container, *cmd, timeout=timeout, check=False)

    def log_tail(self, n: int = 30) -> str:
        try:
            with open(os.path.join(self.work, "dockerd.log"), errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no log)"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    for _ in range(50):
        if not _alive(pid):
            return
        time.sleep(0.05)


def _rmdir(path: str) -> bool:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True
