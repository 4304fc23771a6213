"""Test hosts: "hosts" as network namespaces joined through a switch namespace.

Used by the integration tests, the benchmarks and the demo.  Nothing is added
to the root namespace: each host namespace gets ``eth0``, a veth whose peer is
created directly inside the switch namespace and attached to its bridge.  The
underlay uses documentation ranges only: 203.0.113.0/24 and
2001:db8:ffff::/64 (never 192.0.2.0/24 or fd00::/64, which this kind of
machine's own uplink uses).

Every namespace carries the per-run prefix ``lnt-<pid>-<random>-``; processes
started through :meth:`Testbed.spawn` are recorded by pid.  :meth:`close`
(also run on leaving the ``with`` block, whatever happened) kills those
processes and deletes every namespace with the prefix, which removes all
interfaces in them.  :func:`remove_stale` cleans up after runs whose process
died without cleaning up.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from libnet.kernel import netns
from libnet.kernel.neighbours import Neighbour
from libnet.kernel.netlink import Netlink

if TYPE_CHECKING:
    from libnet.config import Config

PREFIX_ROOT = "lnt-"
UNDERLAY_V4 = "203.0.113.{}"
UNDERLAY_V6 = "2001:db8:ffff::{:x}"
MAX_HOSTS = 200


@dataclass
class Host:
    """One test host: a namespace with ``eth0`` on the underlay switch."""

    name: str
    ns: str
    ipv4: str
    ipv6: str
    ifname: str = "eth0"

    def vtep(self, version: int) -> str:
        """The underlay address of this host for IP version 4 or 6."""
        return self.ipv4 if version == 4 else self.ipv6


@dataclass
class Testbed:
    """N hosts on one switch; use as a context manager."""

    __test__ = False  # not a pytest test class

    n_hosts: int = 2
    mtu: int = 1500
    prefix: str = field(default_factory=lambda: f"{PREFIX_ROOT}{os.getpid()}-{secrets.token_hex(2)}-")
    hosts: list[Host] = field(default_factory=list)
    _procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    _cleanups: list[Callable[[], object]] = field(default_factory=list)

    @property
    def switch(self) -> str:
        """Name of the switch namespace."""
        return self.prefix + "sw"

    def __enter__(self) -> Testbed:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self) -> None:
        """Create the switch and the hosts."""
        if not 0 < self.n_hosts <= MAX_HOSTS:
            raise ValueError(f"n_hosts must be 1..{MAX_HOSTS}")
        self.namespace("sw")
        with Netlink(self.switch) as sw:
            sw.add_bridge("sw0", mtu=self.mtu)
            sw.set_up("sw0")
        for i in range(1, self.n_hosts + 1):
            self.add_host(f"h{i}")

    def namespace(self, suffix: str) -> str:
        """Create an extra namespace ``<prefix><suffix>`` with lo up; returns its name."""
        name = self.prefix + suffix
        netns.create(name)
        with Netlink(name) as nl:
            nl.set_up("lo")
        return name

    def add_host(self, name: str) -> Host:
        """Add one host on the switch with the next underlay addresses."""
        i = len(self.hosts) + 1
        host = Host(name, self.prefix + name, UNDERLAY_V4.format(10 + i), UNDERLAY_V6.format(0x10 + i))
        self.namespace(name)
        port = f"p{i}"
        with Netlink(host.ns) as nl:
            nl.add_veth("eth0", port, peer_ns=self.switch, mtu=self.mtu)
            nl.add_address("eth0", host.ipv4 + "/24")
            nl.add_address("eth0", host.ipv6 + "/64", nodad=True)
            nl.set_up("eth0")
        with Netlink(self.switch) as sw:
            sw.set_master(port, "sw0")
            sw.set_up(port)
        self.hosts.append(host)
        return host

    def pin_underlay_neighbours(self) -> None:
        """Give every host permanent ARP/ND entries for every other host's underlay addresses.

        Needed for beds of tens of hosts, not by libnet: all namespaces share
        the kernel's one neighbour table (``gc_thresh3``, 1024 entries by
        default), and a full mesh of 30 hosts gossiping fills it with 870
        underlay entries -- then new entries, the containers' ARP included,
        fail with "neighbor table overflow" for seconds.  Real hosts each
        have their own table.  Permanent entries do not count against the
        limit (and keep the underlay warm).
        """
        macs = {}
        for h in self.hosts:
            with Netlink(h.ns) as nl:
                macs[h.name] = nl.link(h.ifname).mac
        for h in self.hosts:
            entries = [Neighbour(addr, macs[o.name]) for o in self.hosts if o is not h for addr in (o.ipv4, o.ipv6)]
            with Netlink(h.ns) as nl:
                nl.replace_neighbours(h.ifname, entries)

    # --- processes --------------------------------------------------------------

    def spawn(self, ns: str, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:  # bytes or text, by kw
        """Start ``argv`` inside ``ns``; it is killed by :meth:`close`.

        Only the network namespace changes (no ``ip netns exec`` mount
        namespace), so namespaces the process creates are visible to all.
        """
        proc = subprocess.Popen(argv, start_new_session=True, preexec_fn=netns.preexec_enter(ns), **kw)
        self._procs.append(proc)
        return proc

    def on_close(self, fn: Callable[[], object]) -> None:
        """Run ``fn()`` in :meth:`close`, after the recorded processes were killed."""
        self._cleanups.append(fn)

    def run(
        self, ns: str, argv: list[str], timeout: float = 30, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``ns`` to completion (bounded by ``timeout``)."""
        return subprocess.run(
            ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout, check=check
        )

    def ping(self, ns: str, address: str, count: int = 1, wait: float = 2) -> bool:
        """Whether ``address`` answers a ping from ``ns`` (``count`` tries)."""
        for _ in range(count):
            r = self.run(ns, ["ping", "-c", "1", "-W", str(wait), address], timeout=wait + 5)
            if r.returncode == 0:
                return True
        return False

    # --- teardown ---------------------------------------------------------------

    def close(self) -> None:
        """Kill recorded processes and delete every namespace of this run."""
        for proc in self._procs:
            _kill(proc)
        self._procs.clear()
        for fn in self._cleanups:  # what outlives them (the Serf agents agents leave running)
            try:
                fn()
            except Exception as exc:  # clean up the rest regardless
                print(f"test bed cleanup {fn!r} failed: {exc}")
        self._cleanups.clear()
        for name in netns.list_names(self.prefix):
            netns.delete(name)
        self.hosts.clear()


def _kill(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: its children too
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


_PREFIX_RE = re.compile(rf"^{PREFIX_ROOT}(\d+)-[0-9a-f]+-")


def remove_stale() -> list[str]:
    """Delete test namespaces whose creating process is gone; returns them."""
    removed = []
    for name in netns.list_names(PREFIX_ROOT):
        m = _PREFIX_RE.match(name)
        if m and not _alive(int(m.group(1))):
            netns.delete(name)
            removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def host_config(bed: Testbed, host: Host, state: str, v6_vtep: bool = False) -> Config:
    """A controller configuration for ``host`` of ``bed``: its own store, the
    cluster store shared by all hosts of the bed (one SQLite file), its VTEP,
    namespace prefixes under the bed's (so the bed removes them), and default
    pools in the documentation ranges (:mod:`libnet.testing.pools`)."""
    from libnet.config import Config
    from libnet.testing.pools import ipam_config

    return Config(
        store=f"sqlite://{state}/{host.name}.db",
        cluster_store=f"sqlite://{state}/cluster.db",
        state_dir=f"{state}/{host.name}",
        host_netns=host.ns,
        node_name=host.name,
        vtep=host.ipv6 if v6_vtep else host.ipv4,
        sandbox_prefix=f"{bed.prefix}{host.name}-sb-",
        overlay_prefix=f"{bed.prefix}{host.name}-o",
        ipam=ipam_config(),
    )
