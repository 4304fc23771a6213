"""``make demo``: a dual-stack bridge network with three containers, in a test host.

Everything happens inside namespaces this run creates (a "host" namespace and
one per container) and is removed on exit, also on Ctrl-C; nothing touches
the machine's own network.  Run as root: ``sudo make demo``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import signal
import sys
import tempfile
import time

from rich.console import Console
from rich.table import Table

from libnet import Config, Controller
from libnet.testing.hosts import Testbed

console = Console(width=None if sys.stdout.isatty() else 120)


def _ip(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).ip)


def _ping(bed: Testbed, netns: str, addr: str) -> tuple[bool, str]:
    r = bed.run(os.path.basename(netns), ["ping", "-c", "1", "-W", "1", addr], timeout=10)
    rtt = re.search(r"time=([\d.]+) ms", r.stdout)
    return r.returncode == 0, f"{rtt.group(1)} ms" if rtt else "no reply"


async def run(bed: Testbed, state: str) -> bool:
    config = Config(
        store=f"sqlite://{state}/store.db",
        state_dir=state,
        host_netns=bed.hosts[0].ns,
        sandbox_prefix=bed.prefix + "sb-",
    )
    ok = True
    async with Controller(config) as ctl:
        with console.status("creating network [bold]demo[/] (dual-stack bridge)"):
            net = await ctl.create_network("demo", ipv4_subnet="198.51.100.0/24", ipv6_subnet="2001:db8:100::/64")
            other = await ctl.create_network(
                "elsewhere", ipv4_subnet="198.51.101.0/24", ipv6_subnet="2001:db8:101::/64"
            )
        console.print(
            f"network [bold]{net.name}[/] {net.ipv4_subnet} + {net.ipv6_subnet}, "
            f"gateway {_ip(net.ipv4_gateway)} / {_ip(net.ipv6_gateway)}"
        )

        rows = []
        for name in ("alpha", "bravo", "charlie"):
            t = time.perf_counter()
            sb = await ctl.create_sandbox(hostname=name)
            ep = await ctl.connect("demo", sb.id, name=name)
            rows.append((name, sb, ep, (time.perf_counter() - t) * 1000))
        loner = await ctl.create_sandbox(hostname="delta")
        ep_d = await ctl.connect("elsewhere", loner.id, name="delta")
        rows.append(("delta", loner, ep_d, 0.0))

        table = Table(title="sandboxes", title_justify="left")
        for col in ("sandbox", "network", "iface", "IPv4", "IPv6", "MAC", "attach"):
            table.add_column(col)
        for name, _sb, ep, ms in rows:
            nw = net.name if ep.network_id == net.id else other.name
            table.add_row(name, nw, ep.ifname, _ip(ep.ipv4), _ip(ep.ipv6), ep.mac, f"{ms:.1f} ms" if ms else "")
        console.print(table)

        checks = Table(title="reachability", title_justify="left")
        for col in ("from", "to", "address", "expected", "result"):
            checks.add_column(col)
        by_name = {name: (sb, ep) for name, sb, ep, _ in rows}
        plan = [
            ("alpha", "bravo", "ipv4", True),
            ("alpha", "charlie", "ipv6", True),
            ("bravo", "alpha", "ipv6", True),
            ("charlie", "bravo", "ipv4", True),
            ("delta", "alpha", "ipv4", False),
            ("delta", "bravo", "ipv6", False),
        ]
        for src, dst, fam, expected in plan:
            addr = _ip(getattr(by_name[dst][1], fam))
            reached, detail = _ping(bed, by_name[src][0].netns, addr)
            good = reached == expected
            ok &= good
            verdict = ("[green]✔[/] " if good else "[red]✘[/] ") + (detail if reached else "blocked")
            checks.add_row(src, dst, addr, "reach" if expected else "isolated", verdict)
        console.print(checks)

        with console.status("removing sandboxes and networks"):
            for _, sb, _, _ in rows:
                await ctl.delete_sandbox(sb.id)
            await ctl.delete_network("demo")
            await ctl.delete_network("elsewhere")
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
            ok = asyncio.run(run(bed, state))
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted: everything this demo created has been removed[/]")
        return 130
    console.print("[green]all checks passed[/], everything removed" if ok else "[red]some checks failed[/]")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
