"""Run Debian's podman 4.3 inside a test host with the CNI backend (issue 19).

As ``../shared/reference/runtimes.md`` says: its own containers.conf
(``network_backend="cni"``, its network config dir, the libnet bin dir ahead of
``/usr/lib/cni``, cgroupfs, file events, rlimits this machine allows), its own
storage (vfs) and run dirs, runc state under the run dir, and a private mount
namespace with a tmpfs on ``/run/netns`` held by a holder process in the test
host; every podman command runs through ``nsenter -t HOLDER -n -m``.  The
agent runs in the same mount namespace (:class:`PodmanAgent`), as it shares
``/run/netns`` with the runtime on a real host.  Everything is removed by pid
with the test bed, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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
        self.dir = tempfile.mkdtemp(prefix=f"libnet-podman-{host.name}-")
        self.net_dir = os.path.join(self.dir, "net.d")
        os.makedirs(self.net_dir)
        for d in ("root", "run", "tmp", "volumes", "runc"):
            os.makedirs(os.path.join(self.dir, d))
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
        argv = [*self.enter(), "podman", "--runtime-flag", f"root={self.dir}/runc", *args]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
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
        """Remove every container (runc and conmon are children of nothing of ours), then the dirs."""
        if self.holder.poll() is None:
            try:
                self.run("rm", "-af", "-t", "0", timeout=60, check=False)
            except Exception as exc:
                print(f"podman rm -af failed: {exc}")
        for pid in self._conmon_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        subprocess.run(["umount", "-R", f"{self.dir}/root"], capture_output=True, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _conmon_pids(self) -> list[int]:
        """conmon and runc processes whose command line names this instance's dirs."""
        out = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if self.dir.encode() in f.read():
                            out.append(int(pid))
                except OSError:
                    pass
        return [p for p in out if p != os.getpid()]


class PodmanAgent(AgentProcess):
    """An agent in the podman holder's mount namespace (it sees podman's ``/run/netns``)."""

    def __init__(self, bed: Testbed, host: Host, podman: Podman, *extra: str, **kw) -> None:
        super().__init__(bed, host, *extra, **kw)
        self.podman = podman

    def argv(self, *once: str) -> list[str]:
        return ["nsenter", "-t", str(self.podman.holder.pid), "-m", "--", *super().argv(*once)]
