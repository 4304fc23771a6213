"""Run Debian's podman 4.3 inside a test host with the CNI backend (issue 19).

As ``../shared/reference/runtimes.md`` says: its own containers.conf
(``network_backend="cni"``, its network config dir, the libnet bin dir ahead of
``/usr/lib/cni``, cgroupfs, file events, rlimits this machine allows), its own
storage (vfs) and run dirs, runc's state in its own dir (a ``runc`` wrapper
adding ``--root``, configured as the runtime, so that the ``podman container
cleanup`` conmon runs uses it too), and a private mount namespace with a tmpfs
on ``/run/netns`` held by a holder process in the test host; every podman
command runs through ``nsenter -t HOLDER -n -m``.  The agent runs in the same
mount namespace (:class:`PodmanAgent`), as it shares ``/run/netns`` with the
runtime on a real host.  conmon and container processes are recorded from
their pid files (pid and start time) and killed by those pids at cleanup, also
on failure.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

from libnet.testing.agents import AgentProcess
from libnet.testing.hosts import Host, Testbed

IMAGE = "localhost/libnet-busybox"


def podman_missing() -> str | None:
    for tool, pkg in (("podman", "podman"), ("busybox", "busybox-static")):
        if shutil.which(tool) is None:
            return f"{tool} missing: apt-get install {pkg} (scripts/install-system-deps)"
    return None


class Podman:
    def __init__(self, bed: Testbed, host: Host, cni_bin: str) -> None:
        self.bed, self.host = bed, host
        #: conmon and container init processes seen in their pid files: pid -> start time
        self._pids: dict[int, int] = {}
        self.dir = tempfile.mkdtemp(prefix=f"libnet-podman-{host.name}-")
        self.net_dir = os.path.join(self.dir, "net.d")
        os.makedirs(self.net_dir)
        for d in ("root", "run", "tmp", "volumes", "runc", "bin"):
            os.makedirs(os.path.join(self.dir, d))
        # runc's state under this instance: a wrapper named as the runtime, not ``--runtime-flag root=``,
        # which podman does not pass on to the ``podman container cleanup`` that conmon runs when a
        # container exits -- that one deleted the state in /run/runc and left ours, so the next
        # ``podman start`` failed ("container with given ID already exists")
        self.runc = os.path.join(self.dir, "bin", "runc")
        with open(self.runc, "w") as f:
            f.write(f'#!/bin/sh\nexec {shutil.which("runc") or "/usr/bin/runc"} --root {self.dir}/runc "$@"\n')
        os.chmod(self.runc, 0o755)
        self.conf = os.path.join(self.dir, "containers.conf")
        with open(self.conf, "w") as f:
            f.write(
                "[containers]\n"
                'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
                "[network]\n"
                'network_backend = "cni"\n'
                f'network_config_dir = "{self.net_dir}"\n'
                f'cni_plugin_dirs = ["{cni_bin}", "/usr/lib/cni"]\n'
                'default_subnet = "198.51.100.0/24"\n'
                "[engine]\n"
                'runtime = "runc"\n'
                'cgroup_manager = "cgroupfs"\n'
                'events_logger = "file"\n'
                f'events_logfile_path = "{self.dir}/events.log"\n'
                f'tmp_dir = "{self.dir}/tmp"\n'
                f'volume_path = "{self.dir}/volumes"\n'
                "[engine.runtimes]\n"
                f'runc = ["{self.runc}"]\n'
            )
        self.storage = os.path.join(self.dir, "storage.conf")
        with open(self.storage, "w") as f:
            f.write(f'[storage]\ndriver = "vfs"\ngraphroot = "{self.dir}/root"\nrunroot = "{self.dir}/run"\n')
        self.holder = bed.spawn(
            host.ns,
            [
                "unshare",
                "-m",
                "--propagation",
                "slave",
                "sh",
                "-c",
                "mkdir -p /run/netns && mount -t tmpfs tmpfs /run/netns && exec sleep 3600",
            ],
        )
        deadline = time.monotonic() + 10
        while not self._tmpfs_ready():
            if time.monotonic() > deadline or self.holder.poll() is not None:
                raise RuntimeError("podman's mount namespace holder did not start")
            time.sleep(0.05)
        bed.on_close(self.cleanup)

    def _tmpfs_ready(self) -> bool:
        try:
            with open(f"/proc/{self.holder.pid}/mounts") as f:
                return any(" /run/netns tmpfs " in line for line in f)
        except OSError:
            return False

    def enter(self) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-n", "-m", "--"]

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CONTAINERS_CONF": self.conf,
            "CONTAINERS_STORAGE_CONF": self.storage,
            "TMPDIR": f"{self.dir}/tmp",
        }
        argv = [*self.enter(), "podman", *args]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        finally:
            self._record_pids()
        if check and r.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)}: {r.returncode} {r.stderr[-2000:]}")
        return r

    def load_busybox(self) -> None:
        root = os.path.join(self.dir, "rootfs")
        os.makedirs(os.path.join(root, "bin"))
        os.makedirs(os.path.join(root, "etc"))
        shutil.copy(shutil.which("busybox") or "/bin/busybox", os.path.join(root, "bin", "busybox"))
        for applet in ("sh", "ping", "ping6", "nslookup", "sleep", "ip", "cat", "wget", "nc", "true"):
            os.symlink("busybox", os.path.join(root, "bin", applet))
        with open(os.path.join(root, "etc", "passwd"), "w") as f:
            f.write("root:x:0:0:root:/:/bin/sh\n")
        with open(os.path.join(root, "etc", "group"), "w") as f:
            f.write("root:x:0:\n")
        tar = os.path.join(self.dir, "rootfs.tar")
        subprocess.run(["tar", "-C", root, "-cf", tar, "."], check=True)
        self.run("import", "-c", "ENV PATH=/bin", "-c", 'CMD ["/bin/sh"]', tar, IMAGE)

    def write_conflist(self, name: str, plugins: list[dict]) -> None:
        with open(os.path.join(self.net_dir, f"{name}.conflist"), "w") as f:
            json.dump({"cniVersion": "1.0.0", "name": name, "plugins": plugins}, f)

    def cleanup(self) -> None:
        """Remove every container, kill the conmon and container processes recorded from their
        pid files that are still those processes, unmount the storage, remove the dirs."""
        if self.holder.poll() is None:
            try:
                self.run("rm", "-af", "-t", "0", timeout=60, check=False)
            except Exception as exc:
                print(f"podman rm -af failed: {exc}")
        self._record_pids()
        for pid in self.live_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["umount", "-R", f"{self.dir}/root"], capture_output=True, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _record_pids(self) -> None:
        """Record conmon's pid (``conmon.pid``) and each container's init pid (``pidfile``, runc's
        ``--pid-file``) of every container of this instance, with the process's start time."""
        for path in glob.glob(f"{self.dir}/run/vfs-containers/*/userdata/*pid*"):
            if os.path.basename(path) not in ("conmon.pid", "pidfile"):
                continue
            try:
                with open(path) as f:
                    pid = int(f.read().strip() or 0)
            except (OSError, ValueError):
                continue
            started = _start_time(pid) if pid > 1 else None
            if started is not None:
                self._pids[pid] = started

    def live_pids(self) -> list[int]:
        """Recorded conmon and container processes still alive (same pid and start time)."""
        return sorted(pid for pid, started in self._pids.items() if _start_time(pid) == started)

    def leftovers(self) -> dict[str, list[str]]:
        """What containers of this instance left behind once all are gone: runc state dirs,
        live conmon/container processes (recorded pids), network namespaces in podman's
        ``/run/netns``.  Empty lists when nothing is left."""
        self._record_pids()
        try:
            netns_files = sorted(os.listdir(f"/proc/{self.holder.pid}/root/run/netns"))
        except OSError:
            netns_files = []
        return {
            "runc": sorted(os.listdir(f"{self.dir}/runc")),
            "processes": [str(p) for p in self.live_pids()],
            "netns": netns_files,
        }


def _start_time(pid: int) -> int | None:
    """The start time (clock ticks since boot) of process ``pid``, None if there is none or
    it is a zombie (this machine's PID 1 is slow to reap the conmons that exit)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


class PodmanAgent(AgentProcess):
    """An agent in the podman holder's mount namespace (it sees podman's ``/run/netns``)."""

    def __init__(self, bed: Testbed, host: Host, podman: Podman, *extra: str, **kw) -> None:
        super().__init__(bed, host, *extra, **kw)
        self.podman = podman

    def argv(self, *once: str) -> list[str]:
        return ["nsenter", "-t", str(self.podman.holder.pid), "-m", "--", *super().argv(*once)]
