"""``make demo``: libnet-agents and the ``libnet`` CLI build container networks.

Two test hosts (network namespaces on a switch), a libnet-agent on each in
cluster mode (Serf joined, the embedded SQLite store shared as the cluster
store), driven only through the ``libnet`` command line, printing each
command.  Part 1, on one host: a dual-stack bridge network with three
containers (sandboxes), their addresses, IPv4 and IPv6 pings between them,
and a fourth container on a second network that cannot reach them.  Part 2,
across hosts: a dual-stack VXLAN overlay network with a container on each
host, pings both ways, and the time from ``connect`` on one host until the
other host reaches the new container.  Everything is removed on exit, also on
Ctrl-C; nothing touches the machine's own network.  Run as root:
``sudo make demo``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import sys
import tempfile

from rich.console import Console
from rich.table import Table

from libnet.testing.agents import AgentProcess
from libnet.testing.hosts import Testbed

console = Console(width=None if sys.stdout.isatty() else 120)


def _ip(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).ip)


class Demo:
    def __init__(self, bed: Testbed, state: str) -> None:
        from libnet.cluster.serf import new_key

        self.bed = bed
        key = new_key()
        self.agents = [
            AgentProcess(
                bed,
                h,
                "--log-level",
                "warning",
                "--cluster-store",
                f"sqlite://{state}/cluster.db",
                "--advertise",
                h.ipv4,
                "--join",
                bed.hosts[0].ipv4,
                "--cluster-key",
                key,
                state_dir=f"{state}/{h.name}",
            )
            for h in bed.hosts
        ]
        self.agent = self.agents[0]

    def libnet(self, *args: str, show: bool = True, on: int = 0) -> str:
        """Run the CLI like a user would, and show it."""
        if show:
            where = f"[dim]{self.bed.hosts[on].name}[/] " if len(self.agents) > 1 else ""
            console.print(f"{where}[bold cyan]$ libnet {' '.join(args)}[/]")
        r = self.agents[on].cli(*args)
        if r.returncode != 0:
            raise RuntimeError(f"libnet {' '.join(args)} failed: {r.stderr.strip()}")
        if show and r.stdout.strip() and "--json" not in args:
            console.print(r.stdout.rstrip(), highlight=False)
        return r.stdout

    def ping(self, netns: str, addr: str) -> tuple[bool, str]:
        r = self.bed.run(os.path.basename(netns), ["ping", "-c", "1", "-W", "1", addr], timeout=10)
        rtt = re.search(r"time=([\d.]+) ms", r.stdout)
        return r.returncode == 0, f"{rtt.group(1)} ms" if rtt else "no reply"

    def run(self) -> bool:
        with console.status("starting a libnet-agent in each test host (Serf joined)"):
            for a in self.agents:
                a.start()
        for a in self.agents:
            console.print(f"libnet-agent in [bold]{a.host.ns}[/] ({a.host.ipv4}), socket {a.socket}")
        self.libnet("node", "ls")
        console.rule("part 1: a bridge network on one host")
        self.libnet("network", "create", "demo", "--subnet", "198.51.100.0/24", "--subnet6", "2001:db8:100::/64")
        self.libnet("network", "create", "elsewhere", "--subnet", "198.51.101.0/24", "--subnet6", "2001:db8:101::/64")
        names = {}
        for name in ("alpha", "bravo", "charlie", "delta"):
            sid = self.libnet("sandbox", "create", "--hostname", name).strip()
            names[name] = sid
            self.libnet("connect", "elsewhere" if name == "delta" else "demo", sid[:12])
        self.libnet("network", "inspect", "demo")
        eps = {e["sandbox_id"]: e for e in json.loads(self.libnet("endpoint", "ls", "--json", show=False))}
        sbs = {s["id"]: s for s in json.loads(self.libnet("sandbox", "ls", "--json", show=False))}

        checks = Table(title="reachability (ping from inside the sandboxes)", title_justify="left")
        for col in ("from", "to", "address", "expected", "result"):
            checks.add_column(col)
        plan = [
            ("alpha", "bravo", "ipv4", True),
            ("alpha", "charlie", "ipv6", True),
            ("bravo", "alpha", "ipv6", True),
            ("charlie", "bravo", "ipv4", True),
            ("delta", "alpha", "ipv4", False),
            ("delta", "bravo", "ipv6", False),
        ]
        ok = True
        for src, dst, fam, expected in plan:
            addr = _ip(eps[names[dst]][fam])
            reached, detail = self.ping(sbs[names[src]]["netns"], addr)
            good = reached == expected
            ok &= good
            verdict = ("[green]✔[/] " if good else "[red]✘[/] ") + (detail if reached else "blocked")
            checks.add_row(src, dst, addr, "reach" if expected else "isolated", verdict)
        console.print(checks)

        self.libnet("sandbox", "rm", *(sid[:12] for sid in names.values()))
        self.libnet("network", "rm", "demo", "elsewhere")
        console.rule("part 2: an overlay network across two hosts")
        return self.overlay() and ok

    def overlay(self) -> bool:
        import time

        self.libnet(
            "network",
            "create",
            "ov",
            "--driver",
            "overlay",
            "--subnet",
            "198.51.102.0/24",
            "--subnet6",
            "2001:db8:102::/64",
        )
        placed = []
        for on in (0, 1):
            sid = self.libnet("sandbox", "create", "--hostname", f"web{on + 1}", on=on).strip()
            t = time.monotonic()
            self.libnet("connect", "ov", sid[:12], on=on)
            sb = next(
                s for s in json.loads(self.libnet("sandbox", "ls", "--json", show=False, on=on)) if s["id"] == sid
            )
            ep = next(
                e
                for e in json.loads(self.libnet("endpoint", "ls", "--network", "ov", "--json", show=False, on=on))
                if e["sandbox_id"] == sid
            )
            placed.append((sb, ep, t))
        # from connect on host 2 until host 1's container reaches the new one
        (sb1, _, _), (_, ep2, t2) = placed
        reached = False
        while time.monotonic() - t2 < 15 and not reached:
            reached, _ = self.ping(sb1["netns"], _ip(ep2["ipv4"]))
        converge = time.monotonic() - t2
        checks = Table(title="across hosts (VXLAN)", title_justify="left")
        for col in ("from", "to", "address", "result"):
            checks.add_column(col)
        ok = reached
        for (a, _, _), (_, b, _), name_a, name_b in (
            (placed[0], placed[1], "web1@h1", "web2@h2"),
            (placed[1], placed[0], "web2@h2", "web1@h1"),
        ):
            for fam in ("ipv4", "ipv6"):
                good, detail = self.ping(a["netns"], _ip(b[fam]))
                ok &= good
                checks.add_row(name_a, name_b, _ip(b[fam]), ("[green]✔[/] " if good else "[red]✘[/] ") + detail)
        console.print(checks)
        console.print(f"connect on h2 -> reachable from h1: [bold]{converge * 1000:.0f} ms[/]")
        self.libnet("sandbox", "rm", placed[0][0]["id"][:12])
        self.libnet("sandbox", "rm", placed[1][0]["id"][:12], on=1)
        self.libnet("network", "rm", "ov")
        return ok


def main() -> int:
    if os.geteuid() != 0:
        console.print("[red]the demo builds network namespaces and needs root:[/] sudo make demo")
        return 2
    # SIGTERM cleans up like Ctrl-C does
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with Testbed(2) as bed, tempfile.TemporaryDirectory(prefix="libnet-demo-") as state:
            console.print(
                f"test hosts [bold]{', '.join(h.ns for h in bed.hosts)}[/] "
                "(network namespaces on one switch; removed on exit)"
            )
            demo = Demo(bed, state)
            try:
                ok = demo.run()
            finally:
                for a in demo.agents:
                    a.stop()
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted: everything this demo created has been removed[/]")
        return 130
    console.print("[green]all checks passed[/], everything removed" if ok else "[red]some checks failed[/]")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
