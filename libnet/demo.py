"""``make demo``: libnet-agents and the ``libnet`` CLI build container networks.

Two test hosts (network namespaces on a switch), a libnet-agent on each in
cluster mode (Serf joined, the embedded SQLite store shared as the cluster
store), driven only through the ``libnet`` command line, printing each
command.  Part 1, on one host: a dual-stack bridge network with three
containers (sandboxes), their addresses, IPv4 and IPv6 pings between them,
and a fourth container on a second network that cannot reach them.  Part 2,
service discovery through the embedded DNS: containers ping each other by
name and by a shared alias, A, AAAA, SRV and PTR lookups with ``dig``, a
container on another network that does not see those names, and a container
on an ``--internal`` network only that cannot resolve outside names (its
question never reaches the upstream: a stand-in for the Internet's DNS,
answering ``*.example.com``, runs in the second test host and logs what it is
asked).  Part 3, across hosts: a dual-stack VXLAN overlay network with a
container on each host, pings both ways, and the time from ``connect`` on one
host until the other host reaches the new container; it ends with ``libnet
topology``: hosts, networks, sandboxes and endpoints with their addresses,
VTEPs and peer state.  Part 4: an encrypted overlay (``-o encrypted``) with a
container on each host pinging the other with a payload marker while scapy
captures on the switch: WireGuard packets cross it, no VXLAN, no marker, no
container address.  Everything is removed
on exit, also on Ctrl-C; nothing touches the machine's own network.  Run as
root: ``sudo make demo``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import socket
import sys
import tempfile
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from libnet.testing.agents import AgentProcess
from libnet.testing.hosts import Testbed

console = Console(width=None if sys.stdout.isatty() else 120)


#: what the stand-in upstream answers for every name under example.com
PUBLIC = "198.51.100.250"
#: the hosts' WireGuard tunnel addresses (part 4); routed in the host namespaces only, unused there
ENCRYPTION_RANGE = "198.51.100.112/28"
#: the payload of part 4's pings, looked for on the wire
MARKER = b"libnet-secret!"


def _ip(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).ip)


def fake_upstream(address: str, port: int = 53) -> None:
    """A stand-in for the Internet's DNS (run in a test host): A records for
    ``*.example.com``, NXDOMAIN for everything else; each question is logged
    to stdout.  Runs until killed (the test bed kills it by its pid)."""
    from dnslib import QTYPE, RCODE, RR, A, DNSRecord

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, port))
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            query = DNSRecord.parse(data)
        except Exception:  # a stand-in: ignore what it cannot read
            continue
        name = str(query.q.qname).rstrip(".").lower()
        reply = query.reply()
        if name == "example.com" or name.endswith(".example.com"):
            if query.q.qtype == QTYPE.A:
                reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(PUBLIC), ttl=60))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        print(f"{name} {QTYPE.get(query.q.qtype)} from {peer[0]}", flush=True)
        sock.sendto(reply.pack(), peer)


def dig(bed: Testbed, netns: str, *args: str) -> tuple[str, list[str]]:
    """``dig @127.0.0.11`` inside a container: (status, answer records' data)."""
    r = bed.run(os.path.basename(netns), ["dig", "@127.0.0.11", "+time=2", "+tries=1", *args], timeout=10)
    m = re.search(r"status: (\w+)", r.stdout)
    rows = []
    part = r.stdout.split(";; ANSWER SECTION:\n", 1)
    if len(part) == 2:
        rows = [" ".join(line.split()[4:]) for line in part[1].split("\n\n", 1)[0].splitlines()]
    return (m.group(1) if m else "no answer"), rows


class Demo:
    def __init__(self, bed: Testbed, state: str) -> None:
        from libnet.cluster.serf import new_key

        self.bed, self.state = bed, state
        key = new_key()
        upstream = bed.hosts[1]
        self.upstream_log = f"{state}/upstream.log"
        with open(self.upstream_log, "wb") as log:
            bed.spawn(
                upstream.ns,
                [sys.executable, "-c", f"from libnet.demo import fake_upstream; fake_upstream({upstream.ipv4!r})"],
                stdout=log,
                stderr=log,
            )
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
                "--dns-upstreams",
                upstream.ipv4,
                "--encryption-range",
                ENCRYPTION_RANGE,
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
            console.print(r.stdout.rstrip(), highlight=False, markup=False)
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
        self.libnet("network", "create", "demo", "--subnet", "198.51.100.0/26", "--subnet6", "2001:db8:100::/64")
        self.libnet("network", "create", "elsewhere", "--subnet", "198.51.100.64/26", "--subnet6", "2001:db8:101::/64")
        names = {}
        for name in ("alpha", "bravo", "charlie", "delta"):
            sid = self.libnet("sandbox", "create", "--hostname", name).strip()
            names[name] = sid
            web = ("--alias", "web", "--service", "http:80/tcp") if name in ("bravo", "charlie") else ()
            self.libnet("connect", "elsewhere" if name == "delta" else "demo", sid[:12], *web)
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

        console.rule("part 2: service discovery (the embedded DNS at 127.0.0.11 in every container)")
        ok &= self.discovery(names)
        self.libnet("sandbox", "rm", *(sid[:12] for sid in names.values()))
        self.libnet("network", "rm", "demo", "elsewhere", "sealed")
        console.rule("part 3: an overlay network across two hosts")
        ok &= self.overlay()
        console.rule("part 4: an encrypted overlay (-o encrypted): only WireGuard on the wire")
        return self.encrypted() and ok

    def wait_upstream(self) -> bool:
        """Until the stand-in upstream answers (bounded)."""
        up = self.bed.hosts[1]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = self.bed.run(up.ns, ["dig", f"@{up.ipv4}", "+time=1", "+tries=1", "ready.example.com"], timeout=5)
            if PUBLIC in r.stdout:
                return True
            time.sleep(0.1)
        return False

    def ping_name(self, sid: str, netns: str, name: str) -> tuple[bool, str]:
        """ping NAME inside the container, resolved by its own resolv.conf (127.0.0.11):
        the file is bind-mounted over /etc/resolv.conf in a private mount namespace."""
        resolv = f"{self.state}/{self.bed.hosts[0].name}/sandboxes/{sid}/resolv.conf"
        script = 'mount --bind "$0" /etc/resolv.conf && exec ping -c 1 -W 1 "$1"'
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, resolv, name]
        r = self.bed.run(os.path.basename(netns), argv, timeout=10)
        m = re.search(r"PING \S+ \(([^)]+)\)", r.stdout)
        rtt = re.search(r"time=([\d.]+) ms", r.stdout)
        return r.returncode == 0, f"{m.group(1) if m else '?'}, {rtt.group(1)} ms" if rtt else "no reply"

    def discovery(self, names: dict[str, str]) -> bool:
        """Names, aliases, AAAA, SRV, PTR; isolation by network; no way out of an internal network."""
        self.libnet("network", "create", "sealed", "--internal", "--subnet", "198.51.100.128/26", "--no-ipv6")
        names["echo"] = self.libnet("sandbox", "create", "--hostname", "echo").strip()
        self.libnet("connect", "sealed", names["echo"][:12])
        self.libnet("connect", "sealed", names["bravo"][:12])
        sbs = {s["id"]: s for s in json.loads(self.libnet("sandbox", "ls", "--json", show=False))}
        eps: dict[tuple[str, str], dict[str, Any]] = {
            (e["sandbox_id"], net): e
            for net in ("demo", "sealed")
            for e in json.loads(self.libnet("endpoint", "ls", "--network", net, "--json", show=False))
        }

        def ep(who: str, net: str = "demo") -> dict[str, Any]:
            return eps[(names[who], net)]

        ns = {who: sbs[sid]["netns"] for who, sid in names.items()}
        bravo4, charlie4 = _ip(ep("bravo")["ipv4"]), _ip(ep("charlie")["ipv4"])
        secret = "secret-in-the-name.example.com"
        plan = [  # from, dig arguments, expected status, expected answers, what it shows
            ("alpha", ("bravo",), "NOERROR", {bravo4}, "a name"),
            ("alpha", ("charlie.demo", "AAAA"), "NOERROR", {_ip(ep("charlie")["ipv6"])}, "name.network, AAAA"),
            ("alpha", ("web",), "NOERROR", {bravo4, charlie4}, "an alias of two (round robin)"),
            ("alpha", ("_http._tcp.web", "SRV"), "NOERROR", {"0 0 80 bravo.demo.", "0 0 80 charlie.demo."}, "SRV"),
            ("alpha", ("-x", bravo4), "NOERROR", {"bravo.demo."}, "PTR"),
            ("delta", ("bravo",), "NXDOMAIN", set(), "not on its network"),
            ("alpha", ("www.example.com",), "NOERROR", {PUBLIC}, "forwarded upstream"),
            ("echo", ("bravo",), "NOERROR", {_ip(ep("bravo", "sealed")["ipv4"])}, "internal: its own network"),
            ("echo", (secret,), "REFUSED", set(), "internal only: no way out"),
        ]
        if not self.wait_upstream():
            console.print("[red]the stand-in upstream did not start[/]")
            return False
        table = Table(title="names (dig @127.0.0.11 inside the containers)", title_justify="left")
        for col in ("from", "question", "shows", "answer", "result"):
            table.add_column(col)
        ok = True
        for who, args, want_status, want, shows in plan:
            status, rows = dig(self.bed, ns[who], *args)
            good = status == want_status and set(rows) == want
            ok &= good
            answer = ", ".join(sorted(rows)) or status
            verdict = "[green]✔[/]" if good else f"[red]✘[/] expected {want_status} {sorted(want)}"
            if good and not want:
                verdict += " blocked" if status == "REFUSED" else " not found"
            table.add_row(who, " ".join(args), shows, answer, verdict)
        console.print(table)

        pings = Table(title="by name (ping NAME, resolved through the container's resolv.conf)", title_justify="left")
        for col in ("from", "to", "result"):
            pings.add_column(col)
        for target in ("bravo", "charlie.demo", "web"):
            reached, detail = self.ping_name(names["alpha"], ns["alpha"], target)
            ok &= reached
            pings.add_row("alpha", target, ("[green]✔[/] " if reached else "[red]✘[/] ") + detail)
        console.print(pings)

        with open(self.upstream_log) as f:
            asked = [line.split()[0] for line in f if line.strip() and "ready.example.com" not in line]
        leaked = [name for name in asked if "secret" in name]
        ok &= not leaked and "www.example.com" in asked
        console.print(
            f"the upstream (in {self.bed.hosts[1].name}) was asked: [bold]{', '.join(dict.fromkeys(asked))}[/]; "
            + ("[green]echo's question never left the host ✔[/]" if not leaked else f"[red]leaked: {leaked} ✘[/]")
        )
        return ok

    def place(self, network: str, on: int, hostname: str) -> tuple[dict[str, Any], dict[str, Any], float]:
        """A new container on ``network`` on host ``on``: (its sandbox, its endpoint, when connect began)."""
        sid = self.libnet("sandbox", "create", "--hostname", hostname, on=on).strip()
        t = time.monotonic()
        self.libnet("connect", network, sid[:12], on=on)
        sb = next(s for s in json.loads(self.libnet("sandbox", "ls", "--json", show=False, on=on)) if s["id"] == sid)
        ep = next(
            e
            for e in json.loads(self.libnet("endpoint", "ls", "--network", network, "--json", show=False, on=on))
            if e["sandbox_id"] == sid
        )
        return sb, ep, t

    def encrypted(self) -> bool:
        """Part 4: an encrypted overlay; a capture on the switch during marked pings shows WireGuard only."""
        from libnet.testing.capture import Capture, udp_count, vxlan_vnis

        self.libnet("network", "create", "sec", "--driver", "overlay", "-o", "encrypted",
                    "--subnet", "198.51.100.0/26", "--subnet6", "2001:db8:103::/64")  # fmt: skip
        (sb1, ep1, _), (sb2, ep2, _) = [self.place("sec", on, f"vault{on + 1}") for on in (0, 1)]
        tunnel = json.loads(self.libnet("agent", "status", "--json", show=False))["encryption"]
        console.print(f"h1's tunnel: [bold]{tunnel['interface']}[/] {tunnel['tunnel_address']} ({tunnel['backend']})")
        capture = Capture(self.bed, timeout=30)
        ok = True
        checks = Table(title="across hosts, encrypted (ping -p <marker>)", title_justify="left")
        for col in ("from", "to", "address", "result"):
            checks.add_column(col)
        for fam in ("ipv4", "ipv6"):
            addr = _ip(ep2[fam])
            r = self.bed.run(os.path.basename(sb1["netns"]), ["ping", "-n", "-c", "3", "-i", "0.2", "-s", "600",
                             "-p", MARKER.hex(), addr], timeout=20)  # fmt: skip
            good = " 3 received" in r.stdout
            ok &= good
            checks.add_row("vault1@h1", "vault2@h2", addr, "[green]✔[/] 3/3" if good else "[red]✘[/] lost")
        packets = capture.stop(self.bed)
        console.print(checks)
        inner = [ipaddress.ip_address(_ip(ep[fam])).packed for ep in (ep1, ep2) for fam in ("ipv4", "ipv6")]
        seen = Table(title="what crossed the underlay switch meanwhile (scapy capture)", title_justify="left")
        for col in ("what", "frames", "result"):
            seen.add_column(col)
        wireguard = udp_count(packets, 51820)
        vxlan = len([p for p in packets if vxlan_vnis([p])])
        marked = sum(1 for f in capture.frames if MARKER in f)
        clear = sum(1 for f in capture.frames if any(a in f for a in inner))
        for what, count, want in (
            ("WireGuard (UDP 51820)", wireguard, wireguard > 0),
            ("VXLAN (UDP 4789)", vxlan, vxlan == 0),
            ("the payload marker", marked, marked == 0),
            ("a container address", clear, clear == 0),
        ):
            ok &= want
            seen.add_row(what, str(count), "[green]✔[/]" if want else "[red]✘[/]")
        console.print(seen)
        self.libnet("sandbox", "rm", sb1["id"][:12])
        self.libnet("sandbox", "rm", sb2["id"][:12], on=1)
        self.libnet("network", "rm", "sec")
        return ok

    def overlay(self) -> bool:
        self.libnet(
            "network",
            "create",
            "ov",
            "--driver",
            "overlay",
            "--subnet",
            "198.51.100.0/25",  # the hosts' gateway bridges take a /28 of 198.51.100.128/25
            "--subnet6",
            "2001:db8:102::/64",
        )
        placed = [self.place("ov", on, f"web{on + 1}") for on in (0, 1)]
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
        console.rule("the network as h1 sees it")
        topo = self.libnet("topology")
        ok &= "programmed via VTEP" in topo  # h2's container is in h1's overlay peer table
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
                    a.stop_wireguard()  # outlives a stop by design; now, while its pid record (state dir) exists
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted: everything this demo created has been removed[/]")
        return 130
    console.print("[green]all checks passed[/], everything removed" if ok else "[red]some checks failed[/]")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
