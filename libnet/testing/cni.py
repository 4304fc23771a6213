"""Drive CNI plugins exactly as a runtime does: exec the binary named by ``type``
(found in ``CNI_PATH``) inside a test host's network namespace, with the
``CNI_*`` environment and the config on stdin; chains run ADD in list order
(each later plugin gets ``prevResult``) and DEL in reverse, as libcni does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from libnet.cni.install import install
from libnet.kernel import netns

if TYPE_CHECKING:
    from libnet.testing.hosts import Host, Testbed

REFERENCE_DIR = "/usr/lib/cni"


def reference_missing(*plugins: str) -> str | None:
    """Why the reference plugins cannot be used (None if they can)."""
    missing = [p for p in plugins if not os.access(os.path.join(REFERENCE_DIR, p), os.X_OK)]
    if missing:
        return f"reference CNI plugins {', '.join(missing)} missing: apt-get install containernetworking-plugins"
    return None


def reference_bridge_conf(
    name: str, bridge: str, subnet: str, subnet6: str, data_dir: str, *, default_routes: bool = False
) -> dict[str, Any]:
    """A dual-stack config of the reference ``bridge`` with ``host-local`` IPAM: the gateway on the
    bridge, no IP masquerade (libnet masquerades per network, not per container); ``default_routes``:
    v4 and v6 default routes via the gateway, as libnet's results carry."""
    ipam: dict[str, Any] = {"type": "host-local", "ranges": [[{"subnet": subnet}], [{"subnet": subnet6}]]}
    if default_routes:
        ipam["routes"] = [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    ipam["dataDir"] = data_dir
    conf = {"cniVersion": "1.0.0", "name": name, "type": "bridge", "bridge": bridge, "isGateway": True}
    return {**conf, "ipMasq": False, "ipam": ipam}


@dataclass
class Outcome:
    """One plugin run: exit code, decoded stdout (None if empty), stderr, wall time."""

    rc: int
    out: Any
    err: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.rc == 0


@dataclass
class CniRuntime:
    """A runtime's view: a bin dir holding ``libnet``/``libnet-ipam`` ahead of the
    reference plugins, and the test host namespace plugins run in."""

    host_ns: str
    bin_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="libnet-cni-bin-"))
    python: str | None = None  # the interpreter of the plugins (``libnet cni install --python``)

    def __post_init__(self) -> None:
        install(self.bin_dir, self.python)

    @classmethod
    def for_host(cls, bed: Testbed, host: Host) -> CniRuntime:
        """A runtime's view of ``host`` whose bin dir is removed with the test bed."""
        rt = cls(host.ns)
        bed.on_close(lambda: shutil.rmtree(rt.bin_dir, ignore_errors=True))
        return rt

    @property
    def cni_path(self) -> str:
        return f"{self.bin_dir}:{REFERENCE_DIR}"

    def find(self, plugin: str) -> str:
        for d in self.cni_path.split(":"):
            p = os.path.join(d, plugin)
            if os.access(p, os.X_OK):
                return p
        raise FileNotFoundError(f"CNI plugin {plugin!r} not in {self.cni_path}")

    def exec(
        self,
        plugin: str,
        command: str,
        conf: dict[str, Any] | bytes | None,
        *,
        container_id: str = "",
        netns_path: str = "",
        ifname: str = "eth0",
        args: str = "",
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> Outcome:
        """Exec ``plugin`` once (``env`` replaces the CNI_* environment when given)."""
        environ = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        if env is None:
            env = {
                "CNI_COMMAND": command,
                "CNI_CONTAINERID": container_id,
                "CNI_NETNS": netns_path,
                "CNI_IFNAME": ifname,
                "CNI_ARGS": args,
                "CNI_PATH": self.cni_path,
            }
        environ.update(env)
        stdin = conf if isinstance(conf, bytes) else json.dumps(conf or {}).encode()
        t = time.perf_counter()
        r = subprocess.run(
            [self.find(plugin)],
            input=stdin,
            env=environ,
            capture_output=True,
            timeout=timeout,
            preexec_fn=netns.preexec_enter(self.host_ns),
        )
        seconds = time.perf_counter() - t
        text = r.stdout.decode(errors="replace").strip()
        try:
            out = json.loads(text) if text else None
        except ValueError:
            out = text
        return Outcome(r.returncode, out, r.stderr.decode(errors="replace"), seconds)

    # --- conflists, as libcni runs them -------------------------------------------------

    def _confs(self, conflist: dict[str, Any], runtime_config: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for p in conflist["plugins"]:
            conf = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **p}
            caps = {k: v for k, v in runtime_config.items() if (p.get("capabilities") or {}).get(k)}
            if caps:
                conf["runtimeConfig"] = caps
            out.append(conf)
        return out

    def add_list(
        self,
        conflist: dict[str, Any],
        container_id: str,
        netns_path: str,
        ifname: str = "eth0",
        *,
        args: str = "",
        runtime_config: dict[str, Any] | None = None,
    ) -> Outcome:
        """ADD through the chain; the last plugin's outcome (or the first failure)."""
        prev = None
        last = Outcome(0, None, "", 0.0)
        total = 0.0
        for conf in self._confs(conflist, runtime_config or {}):
            if prev is not None:
                conf["prevResult"] = prev
            last = self.exec(
                conf["type"], "ADD", conf, container_id=container_id, netns_path=netns_path, ifname=ifname, args=args
            )
            total += last.seconds
            if not last.ok:
                return last
            prev = last.out
        return Outcome(last.rc, last.out, last.err, total)

    def check_list(
        self,
        conflist: dict[str, Any],
        container_id: str,
        netns_path: str,
        prev: dict[str, Any],
        ifname: str = "eth0",
        *,
        args: str = "",
        runtime_config: dict[str, Any] | None = None,
    ) -> Outcome:
        last = Outcome(0, None, "", 0.0)
        for conf in self._confs(conflist, runtime_config or {}):
            conf["prevResult"] = prev
            last = self.exec(
                conf["type"], "CHECK", conf, container_id=container_id, netns_path=netns_path, ifname=ifname, args=args
            )
            if not last.ok:
                return last
        return last

    def del_list(
        self,
        conflist: dict[str, Any],
        container_id: str,
        netns_path: str,
        ifname: str = "eth0",
        *,
        prev: dict[str, Any] | None = None,
        args: str = "",
        runtime_config: dict[str, Any] | None = None,
    ) -> Outcome:
        """DEL in reverse order (all plugins run; the first failure is returned)."""
        first_fail = None
        total = 0.0
        for conf in reversed(self._confs(conflist, runtime_config or {})):
            if prev is not None:
                conf["prevResult"] = prev
            o = self.exec(
                conf["type"], "DEL", conf, container_id=container_id, netns_path=netns_path, ifname=ifname, args=args
            )
            total += o.seconds
            if not o.ok and first_fail is None:
                first_fail = o
        return first_fail or Outcome(0, None, "", total)
