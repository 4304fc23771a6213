"""``make demo``: libnet-agent and the ``libnet`` CLI build a dual-stack network.

In a test host (a network namespace) this starts a libnet-agent, then drives
it only through the ``libnet`` command line, printing each command: a
dual-stack bridge network with three containers (sandboxes), their addresses,
IPv4 and IPv6 pings between them, and a fourth container on a second network
that cannot reach them.  Everything is removed on exit, also on Ctrl-C;
nothing touches the machine's own network.  Run as root: ``sudo make demo``.
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
        self.bed = bed
        self.agent = AgentProcess(bed, bed.hosts[0], "--log-level", "warning", state_dir=state)

    def libnet(self, *args: str, show: bool = True) -> str:
        """Run the CLI like a user would, and show it."""
        if show:
            console.print(f"[bold cyan]$ libnet {' '.join(args)}[/]")
        r = self.agent.cli(*args)
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
        with console.status("starting libnet-agent in the test host"):
            self.agent.start()
        console.print(f"libnet-agent runs in [bold]{self.bed.hosts[0].ns}[/], socket {self.agent.socket}")
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
        return ok


def main() -> int:
    if os.geteuid() != 0:
        console.print("[red]the demo builds network namespaces and needs root:[/] sudo make demo")
        return 2
    # SIGTERM cleans up like Ctrl-C does
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with Testbed(1) as bed, tempfile.TemporaryDirectory(prefix="libnet-demo-") as state:
            console.print(f"test host [bold]{bed.hosts[0].ns}[/] (a network namespace; removed on exit)")
            demo = Demo(bed, state)
            try:
                ok = demo.run()
            finally:
                demo.agent.stop()
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted: everything this demo created has been removed[/]")
        return 130
    console.print("[green]all checks passed[/], everything removed" if ok else "[red]some checks failed[/]")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
