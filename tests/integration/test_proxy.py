"""Network proxies end to end (issue 21): controllers in test hosts, real kernel NAT.

Backends run one small server each (TCP and UDP, IPv4 and IPv6) that answers
every line or datagram with its own name; the frontend's client reports who
answered.  Names are looked up with ``dig`` against the embedded DNS.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import pytest

from libnet import Controller
from libnet.drivers.bridge_model import host_ifname
from libnet.info import ep_info
from libnet.kernel.firewall import Firewall
from libnet.ownership import firewall_table
from libnet.testing.hosts import Testbed, host_config

pytestmark = pytest.mark.root
PORT = 5432

SERVER = textwrap.dedent(
    """
    import selectors, socket, sys
    name, port = sys.argv[1], int(sys.argv[2])
    sel = selectors.DefaultSelector()
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(socket.AF_INET6, kind)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", port))
        if kind == socket.SOCK_STREAM:
            s.listen(128)
        sel.register(s, selectors.EVENT_READ, kind)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select(60):
            s = key.fileobj
            if key.data == socket.SOCK_STREAM:
                conn, _ = s.accept()
                sel.register(conn, selectors.EVENT_READ, "conn")
            elif key.data == socket.SOCK_DGRAM:
                data, peer = s.recvfrom(100)
                s.sendto(f"{name} {peer[0]}".encode(), peer)
            else:
                data = s.recv(100)
                if not data:
                    sel.unregister(s); s.close(); continue
                s.sendall(f"{name} {s.getpeername()[0]}\\n".encode())
    """
)
# argv: address port proto count -> one line per try: the answering backend's name and the
# source address it saw, or the error ("refused", "timeout")
CLIENT = textwrap.dedent(
    """
    import socket, sys
    addr, port, proto, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    for _ in range(count):
        try:
            if proto == "tcp":
                with socket.create_connection((addr, port), timeout=1) as c:
                    c.sendall(b"hi\\n"); print(c.recv(100).decode().strip())
            else:
                with socket.socket(fam, socket.SOCK_DGRAM) as c:
                    c.settimeout(1); c.connect((addr, port)); c.send(b"hi")
                    print(c.recv(100).decode().strip())
        except ConnectionRefusedError:
            print("refused")
        except (TimeoutError, socket.timeout, OSError) as exc:
            print("timeout" if "timed out" in str(exc) else f"error {exc}")
        sys.stdout.flush()
    """
)
# one long-lived TCP connection: a line on stdin makes it ask again
HOLDER = textwrap.dedent(
    """
    import socket, sys
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    for _ in sys.stdin:
        c.sendall(b"hi\\n"); print(c.recv(100).decode().strip(), flush=True)
    """
)

# one UDP socket kept: a line on stdin sends a datagram over it; prints who answered, or "timeout"
UDP_HOLDER = textwrap.dedent(
    """
    import socket, sys
    fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    c = socket.socket(fam, socket.SOCK_DGRAM)
    c.settimeout(1)
    c.connect((sys.argv[1], int(sys.argv[2])))
    for _ in sys.stdin:
        try:
            c.send(b"hi"); print(c.recv(100).decode().split()[0], flush=True)
        except OSError:
            print("timeout", flush=True)
    """
)


def ip(cidr: str | None) -> str:
    assert cidr
    return str(ipaddress.ip_interface(cidr).ip)


def ns(sb) -> str:
    """The namespace name of a sandbox (a Sandbox or its JSON)."""
    return os.path.basename(sb["netns"] if isinstance(sb, dict) else sb.netns)


def serve(bed: Testbed, sb, name: str) -> None:
    proc = bed.spawn(ns(sb), [sys.executable, "-c", SERVER, name, str(PORT)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"


async def ask(bed: Testbed, sb, addr: str, proto: str = "tcp", count: int = 1, port: int = PORT) -> list[str]:
    argv = [sys.executable, "-c", CLIENT, addr, str(port), proto, str(count)]
    out = await asyncio.to_thread(bed.run, ns(sb), argv, 10 + 2 * count)
    return [line.split()[0] for line in out.stdout.splitlines()]


def hold(bed: Testbed, sb, addr: str, script: str = HOLDER) -> Callable[[], str]:
    """One long-lived TCP connection (``script``: or :data:`UDP_HOLDER`'s socket) from
    ``sb`` to ``addr``; the returned function asks over it and returns the answering
    backend's name."""
    proc = bed.spawn(
        ns(sb),
        [sys.executable, "-c", script, addr, str(PORT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    def again() -> str:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        return proc.stdout.readline().split()[0]

    return again


async def dig(bed: Testbed, sb, *args: str) -> list[str]:
    argv = ["dig", "@127.0.0.11", "+time=2", "+tries=1", "+short", *args]
    return (await asyncio.to_thread(bed.run, ns(sb), argv, 10)).stdout.split()


@contextlib.asynccontextmanager
async def controller(bed: Testbed, host, tmp_path):
    c = await Controller(host_config(bed, host, str(tmp_path))).start()
    try:
        yield c
    finally:
        await c.close()


async def backends(c: Controller, bed: Testbed, network: str, names: list[str]) -> list:
    out = []
    for name in names:
        sb = await c.create_sandbox(hostname=name)
        out.append(await c.connect(network, sb.id, name=name, aliases=["db"]))
        serve(bed, await c.sandbox(sb.id), name)
    return out


@pytest.fixture
def bed():
    with Testbed(1) as b:
        yield b


async def test_bridge_to_bridge(bed: Testbed, tmp_path) -> None:
    h = bed.hosts[0]
    async with controller(bed, h, tmp_path) as c:
        await c.create_network("front", ipv4_subnet="198.51.100.0/26", ipv6_subnet="2001:db8:21:a::/64")
        await c.create_network("back", ipv4_subnet="198.51.100.64/26", ipv6_subnet="2001:db8:21:b::/64")
        eps = await backends(c, bed, "back", ["b1", "b2", "b3"])
        fsb = await c.create_sandbox(hostname="fe")
        await c.connect("front", fsb.id, name="fe")
        px = await c.create_proxy("dbproxy", "front", "back", ["db:5432/tcp", "db:5432/udp"])
        info = await c.inspect_proxy("dbproxy")
        front4, front6 = ip(info["front"]["ipv4"]), ip(info["front"]["ipv6"])
        back4 = ip(info["back"]["ipv4"])

        # discovery: on the front network the alias is the proxy; SRV names its port
        assert await dig(bed, fsb, "db", "A") == [front4]
        assert await dig(bed, fsb, "db", "AAAA") == [front6]
        srv = await dig(bed, fsb, "_db._tcp.db", "SRV")
        assert srv[2] == str(PORT) and srv[3].startswith("dbproxy"), srv
        # ... on the backends' network nothing changes: the proxy's back leg has no name there
        b1 = await c.sandbox(eps[0].sandbox_id)
        for name in ("dbproxy", "dbproxy.back"):
            assert await dig(bed, b1, name, "A") == [], name
        assert await dig(bed, b1, "-x", back4) == []
        assert sorted(await dig(bed, b1, "db", "A")) == sorted(ip(e.ipv4) for e in eps)

        # v4 and v6, TCP and UDP, spread over the three backends; they see the proxy's back address
        for addr in (front4, front6):
            for proto in ("tcp", "udp"):
                seen = collections.Counter(await ask(bed, fsb, addr, proto, count=6))
                assert set(seen) == {"b1", "b2", "b3"}, (addr, proto, seen)
        argv = [sys.executable, "-c", CLIENT, front4, str(PORT), "tcp", "1"]
        assert bed.run(ns(fsb), argv).stdout.split()[1].removeprefix("::ffff:") == back4

        # nothing else crosses: another port is refused, a backend's own address is unreachable
        assert await ask(bed, fsb, front4, "tcp", port=PORT + 1) == ["refused"]
        assert await ask(bed, fsb, ip(eps[0].ipv4)) == ["timeout"]
        # ... and nothing from the backends' side towards the clients' (a server runs on the frontend too)
        serve(bed, fsb, "fe")
        assert await ask(bed, b1, back4) == ["refused"]
        fe_ep = next(e for e in await c.endpoints("front") if e.sandbox_id == fsb.id)
        assert await ask(bed, b1, ip(fe_ep.ipv4)) == ["timeout"]

        # a backend leaving is out at once: no new connection reaches it
        t0 = time.monotonic()
        await c.disconnect("back", eps[2].sandbox_id)
        assert time.monotonic() - t0 < 1.0
        assert set(await ask(bed, fsb, front4, "tcp", count=6)) == {"b1", "b2"}

        # an established connection survives a restart of the controller, and so do the rules
        again = hold(bed, fsb, front4)
        first = again()
        rules_before = Firewall(ns(await c.sandbox(px.id)), firewall_table(c.instance)).table_rules()
    async with controller(bed, h, tmp_path) as c:
        report = await c.reconcile()
        assert not [m for m in report.missing if "proxy" in m]
        sb = await c.sandbox(px.id)
        assert Firewall(ns(sb), firewall_table(c.instance)).table_rules() == rules_before
        assert again() == first  # the same connection, to the same backend

        # no backend left: refused at once, not black-holed
        for ep in eps[:2]:
            await c.disconnect("back", ep.sandbox_id)
        assert await ask(bed, fsb, front4, "tcp") == ["refused"]
        assert await ask(bed, fsb, front6, "udp") == ["refused"]

        await c.delete_proxy("dbproxy")
        assert await dig(bed, fsb, "db", "A") == []
        assert not os.path.exists(sb.netns)
        await c.delete_network("back")


@contextlib.asynccontextmanager
async def controllers(bed: Testbed, tmp_path):
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(controller(bed, h, tmp_path)) for h in bed.hosts]


async def wait_backends(c: Controller, proxy: str, want: int, timeout: float = 10) -> float:
    """Seconds until the proxy has ``want`` backend addresses for ``db``."""
    t0 = time.monotonic()
    while len((await c.inspect_proxy(proxy))["backends"]["db"]) != want:
        assert time.monotonic() - t0 < timeout, await c.inspect_proxy(proxy)
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


@pytest.mark.parametrize("overlap", [False, True], ids=["distinct", "overlapping"])
async def test_overlay_backends_on_other_hosts(tmp_path, overlap: bool) -> None:
    """The proxy on h1, the frontend on h2, backends on h2 and h3: both networks are
    overlays; with ``overlapping`` they have the same subnets."""
    with Testbed(3) as bed:
        async with controllers(bed, tmp_path) as (c1, c2, c3):
            back_v4, back_v6 = (
                ("198.51.100.0/25", "2001:db8:21:a::/64") if overlap else ("198.51.100.128/25", "2001:db8:21:b::/64")
            )
            await c1.create_network(
                "ofront", "overlay", ipv4_subnet="198.51.100.0/25", ipv6_subnet="2001:db8:21:a::/64"
            )
            await c1.create_network("oback", "overlay", ipv4_subnet=back_v4, ipv6_subnet=back_v6)
            b2 = (await backends(c2, bed, "oback", ["b2"]))[0]
            b3 = (await backends(c3, bed, "oback", ["b3"]))[0]
            fsb = await c2.create_sandbox(hostname="fe")
            await c2.connect("ofront", fsb.id, name="fe")
            await c1.create_proxy("dbproxy", "ofront", "oback", ["db:5432/tcp", "db:5432/udp"])
            await wait_backends(c1, "dbproxy", 4)
            info = await c1.inspect_proxy("dbproxy")
            front4, front6 = ip(info["front"]["ipv4"]), ip(info["front"]["ipv6"])
            t0 = time.monotonic()
            while await dig(bed, fsb, "db", "A") != [front4]:  # the proxy's record reaches h2 by gossip
                assert time.monotonic() - t0 < 10
                await asyncio.sleep(0.1)
            for addr in (front4, front6):
                for proto in ("tcp", "udp"):
                    assert set(await ask(bed, fsb, addr, proto, count=4)) == {"b2", "b3"}, (addr, proto)
            # a remote host's backend does not find the proxy's back leg by name
            b3_sb = await c3.sandbox(b3.sandbox_id)
            assert await dig(bed, b3_sb, "dbproxy", "A") == [] and await dig(bed, b3_sb, "b2", "A") == [ip(b2.ipv4)]
            if overlap:  # the frontend's network holds addresses equal to backends': still only through the proxy
                assert await ask(bed, fsb, front4, "tcp", port=PORT + 1) == ["refused"]
            await c3.disconnect("oback", b3.sandbox_id)
            assert await wait_backends(c1, "dbproxy", 2) < 1.0
            assert set(await ask(bed, fsb, front4, "tcp", count=4)) == {"b2"}
            del b2


def test_cli_and_agent_restart(tmp_path) -> None:
    """``libnet proxy`` against a libnet-agent; a SIGKILLed and restarted agent keeps
    the proxy's established connections and its rules."""
    from libnet.testing.agents import AgentProcess

    with Testbed(1) as bed:
        agent = AgentProcess(bed, bed.hosts[0], state_dir=str(tmp_path / "h1")).start()
        for name, v4, v6 in (
            ("front", "198.51.100.0/26", "2001:db8:21:a::/64"),
            ("back", "198.51.100.64/26", "2001:db8:21:b::/64"),
        ):
            assert agent.cli("network", "create", name, "--subnet", v4, "--subnet6", v6).returncode == 0
        sandboxes = {}
        for name, net in (("b1", "back"), ("b2", "back"), ("fe", "front")):
            sid = agent.cli("sandbox", "create", "--hostname", name).stdout.strip()
            assert agent.cli("connect", net, sid, "--alias", "db").returncode == 0
            sandboxes[name] = next(s for s in agent.cli_json("sandbox", "ls") if s["id"] == sid)
        for name in ("b1", "b2"):
            serve(bed, sandboxes[name], name)
        bad = agent.cli("proxy", "create", "p", "--from", "front", "--to", "back", "--service", "db:99999")
        assert bad.returncode == 1 and "invalid service" in bad.stderr
        assert agent.cli_json("proxy", "ls") == []
        r = agent.cli("proxy", "create", "dbp", "--from", "front", "--to", "back", "--service", "db:5432/tcp")
        assert r.returncode == 0, r.stderr
        assert "dbp" in agent.cli("proxy", "ls").stdout
        (info,) = agent.cli_json("proxy", "inspect", "dbp")
        eps = [e for e in agent.cli_json("endpoint", "ls", "--network", "back") if e["name"] in ("b1", "b2")]
        assert sorted(info["backends"]["db"]) == sorted(ip(e[k]) for e in eps for k in ("ipv4", "ipv6"))
        front4 = ip(info["front"]["ipv4"])
        fe = sandboxes["fe"]
        again = hold(bed, fe, front4)
        first = again()
        table = firewall_table((tmp_path / "h1" / "instance-id").read_text().strip())
        proxy_ns = os.path.basename(next(s for s in agent.cli_json("sandbox", "ls") if s["id"] == info["id"])["netns"])
        before = Firewall(proxy_ns, table).table_rules()
        agent.kill()
        agent.start()
        assert Firewall(proxy_ns, table).table_rules() == before
        assert again() == first  # the same connection, to the same backend

        # the store lost: --adopt brings the proxy back from the kernel, whole (record, legs, names)
        agent.kill()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(agent.dir, "store.db" + suffix))
        agent.start(once=("--adopt",))
        (adopted,) = agent.cli_json("proxy", "inspect", "dbp")
        keep = ("id", "name", "source", "target", "services", "front_endpoint", "back_endpoint")
        assert {k: adopted[k] for k in keep} == {k: info[k] for k in keep}
        assert sorted(adopted["backends"]["db"]) == sorted(info["backends"]["db"])
        assert Firewall(proxy_ns, table).table_rules() == before
        assert again() == first
        assert bed.run(ns(fe), ["dig", "@127.0.0.11", "+short", "db"]).stdout.split() == [front4]
        assert bed.run(ns(sandboxes["b1"]), ["dig", "@127.0.0.11", "+short", "dbp"]).stdout.split() == []
        for argv in (  # the proxy's own: refused, naming the proxy, and nothing changes
            ("sandbox", "rm", info["id"]),
            ("endpoint", "rm", info["back"]["endpoint"]),
            ("endpoint", "rm", "--network", "front", "dbp"),
            ("disconnect", "back", info["id"]),
            ("network", "rm", "back"),
        ):
            r = agent.cli(*argv)
            assert r.returncode == 1 and "proxy dbp" in r.stderr, (argv, r.stderr)
        from agent.client import AgentError, Client

        with pytest.raises(AgentError, match="leg of proxy dbp"):  # the API's force=1 too, before any unplugging
            Client(agent.socket, timeout=10).request("DELETE", f"/v1/endpoints/{info['front']['endpoint']}?force=1")
        assert again() == first
        rm = agent.cli("proxy", "rm", "dbp", "nope")  # tries them all, says which failed
        assert rm.returncode == 1 and rm.stdout.split() == ["dbp"] and "1 of 2 proxy(s) not removed" in rm.stderr
        assert agent.cli_json("proxy", "ls") == []
        assert not os.path.exists(f"/run/netns/{proxy_ns}")
        agent.stop()


def test_cluster_of_agents(tmp_path) -> None:
    """Three agents (Serf, one cluster store): a global proxy made on h1 is listed on
    every host, removed only on h1; backends on h2 and h3 come and go by gossip."""
    from agent.cli import Client
    from libnet.testing.cluster import place, start_agents

    with Testbed(3) as bed:
        a1, a2, a3 = start_agents(bed, str(tmp_path), f"sqlite://{tmp_path}/cluster.db")
        for name, v4, v6 in (
            ("ofront", "198.51.100.0/25", "2001:db8:21:a::/64"),
            ("oback", "198.51.100.128/25", "2001:db8:21:b::/64"),
        ):
            r = a1.cli("network", "create", name, "--driver", "overlay", "--subnet", v4, "--subnet6", v6)
            assert r.returncode == 0, r.stderr
        b2_ns, _ = place(a2, "oback", "--name", "b2", "--alias", "db")
        b3_ns, b3 = place(a3, "oback", "--name", "b3", "--alias", "db")
        for name, where in (("b2", b2_ns), ("b3", b3_ns)):
            serve(bed, {"netns": where}, name)
        fe_ns, _ = place(a2, "ofront", "--name", "fe")
        r = a1.cli("proxy", "create", "dbp", "--from", "ofront", "--to", "oback", "--service", "db:5432")
        assert r.returncode == 0, r.stderr
        api = Client(a1.socket, timeout=10)

        def backends() -> list[str]:
            return api.request("GET", "/v1/proxies/dbp")["backends"]["db"]

        t0 = time.monotonic()
        while len(backends()) != 4:
            assert time.monotonic() - t0 < 15, backends()
            time.sleep(0.05)
        assert [p["name"] for p in a3.cli_json("proxy", "ls")] == ["dbp"]  # global: every host lists it
        refused = a2.cli("proxy", "rm", "dbp")
        assert refused.returncode == 1 and "runs on host h1" in refused.stderr
        front4 = ip(api.request("GET", "/v1/proxies/dbp")["front"]["ipv4"])
        fe = {"netns": fe_ns}
        t0 = time.monotonic()
        while bed.run(fe_ns, ["dig", "@127.0.0.11", "+short", "db"]).stdout.split() != [front4]:
            assert time.monotonic() - t0 < 15
            time.sleep(0.2)
        assert set(asyncio.run(ask(bed, fe, front4, count=6))) == {"b2", "b3"}
        sid = next(s["id"] for s in a3.cli_json("sandbox", "ls") if b3["sandbox_id"] == s["id"])
        assert a3.cli("disconnect", "oback", sid).returncode == 0
        t0 = time.monotonic()
        while len(backends()) != 2:
            time.sleep(0.02)
            assert time.monotonic() - t0 < 5
        assert time.monotonic() - t0 < 1.0, "the remote backend's leave took over a second to reach the proxy"
        assert set(asyncio.run(ask(bed, fe, front4, count=4))) == {"b2"}
        assert a1.cli("proxy", "rm", "dbp").returncode == 0
        for a in (a1, a2, a3):
            a.stop()


async def test_both_directions_and_several_proxies(bed: Testbed, tmp_path) -> None:
    """As a user would: a proxy each way between two networks, a second proxy on the same
    networks for another service, and a UDP service nobody serves (refused: ICMP)."""
    async with controller(bed, bed.hosts[0], tmp_path) as c:
        await c.create_network("front", ipv4_subnet="198.51.100.0/26", ipv6_subnet="2001:db8:21:a::/64")
        await c.create_network("back", ipv4_subnet="198.51.100.64/26", ipv6_subnet="2001:db8:21:b::/64")
        (b1,) = await backends(c, bed, "back", ["b1"])
        fsb = await c.create_sandbox(hostname="fe")
        await c.connect("front", fsb.id, name="fe", aliases=["web"])
        serve(bed, await c.sandbox(fsb.id), "fe")
        await c.create_proxy("todb", "front", "back", ["db:5432/tcp"])
        await c.create_proxy("toweb", "back", "front", ["web:5432/tcp"])
        await c.create_proxy("more", "front", "back", ["b1:5432/tcp", "nobody:5432/udp"])
        bsb = await c.sandbox(b1.sandbox_id)
        (db,), (web,), (direct,) = [await dig(bed, s, n, "A") for s, n in ((fsb, "db"), (bsb, "web"), (fsb, "b1"))]
        assert await ask(bed, fsb, db) == ["b1"]  # front -> back
        assert await ask(bed, bsb, web) == ["fe"]  # back -> front, through the other proxy
        assert await ask(bed, fsb, direct) == ["b1"]  # the second proxy's service, by the backend's own name
        (nobody,) = await dig(bed, fsb, "nobody", "A")
        assert await ask(bed, fsb, nobody, "udp") == ["refused"]  # no backend: ICMP, not a timeout
        # each proxy forwards only its own services: todb's address has no web, toweb's no db
        assert await ask(bed, bsb, db) == ["timeout"]  # a front address is not reachable from back at all
        assert await ask(bed, fsb, web) == ["timeout"]
        for name in ("more", "toweb", "todb"):
            await c.delete_proxy(name)
        assert [e.name for e in await c.endpoints("back")] == ["b1"]


async def test_a_udp_client_leaves_a_leaving_backend(bed: Testbed, tmp_path) -> None:
    """Breaker (issue 21): a UDP client keeps its socket (a resolver, a game, a metrics
    agent); its backend leaves.  Its conntrack entry still pointed at the address gone, so
    every later datagram was black-holed until the entry timed out (30-120 s).  Now the
    next datagram goes to a current backend."""
    async with controller(bed, bed.hosts[0], tmp_path) as c:
        await c.create_network("front", ipv4_subnet="198.51.100.0/26", ipv6_subnet="2001:db8:21:a::/64")
        await c.create_network("back", ipv4_subnet="198.51.100.64/26", ipv6_subnet="2001:db8:21:b::/64")
        eps = await backends(c, bed, "back", ["b1", "b2"])
        fsb = await c.create_sandbox(hostname="fe")
        await c.connect("front", fsb.id, name="fe")
        await c.create_proxy("dnsp", "front", "back", ["db:5432/udp"])
        info = await c.inspect_proxy("dnsp")
        for addr in (ip(info["front"]["ipv4"]), ip(info["front"]["ipv6"])):
            again = hold(bed, fsb, addr, UDP_HOLDER)
            first = again()
            gone = next(e for e in eps if e.name == first)
            await c.disconnect("back", gone.sandbox_id)
            after = [again(), again()]
            assert after == [next(e.name for e in eps if e.name != first)] * 2, (addr, first, after)
            eps = [e for e in eps if e.id != gone.id]
            (b,) = await backends(c, bed, "back", [first])  # back for the other family's round
            eps.append(b)
        await c.delete_proxy("dnsp")


async def test_a_backend_with_the_proxys_own_front_address(bed: Testbed, tmp_path) -> None:
    """Breaker (issue 21): the two networks have equal subnets, so a backend may have the
    very address of the proxy's front leg.  A DNAT to it (same address, same port) changes
    no tuple, so the kernel set no DNAT status, and the rules keyed on it delivered the
    connection to the proxy itself: refused, for every family and protocol.  Likewise a
    client with the proxy's back address: the kernel dropped its packets (and ARP) as
    coming from one of its own addresses."""
    async with controller(bed, bed.hosts[0], tmp_path) as c:
        for name, driver in (("front", "bridge"), ("back", "overlay")):
            await c.create_network(name, driver, ipv4_subnet="198.51.100.0/26", ipv6_subnet="2001:db8:21:a::/64")
        fsb = await c.create_sandbox(hostname="fe")
        await c.connect("front", fsb.id, name="fe")  # the first address of front
        eps = await backends(c, bed, "back", ["b1", "b2"])
        await c.create_proxy("dbp", "front", "back", ["db:5432/tcp", "db:5432/udp"])
        info = await c.inspect_proxy("dbp")
        assert info["front"]["ipv4"] == eps[1].ipv4 and info["front"]["ipv6"] == eps[1].ipv6, (info, eps)
        # ... and a client whose address is the proxy's back one (the source the backends see)
        twin = await c.create_sandbox(hostname="twin")
        await c.connect("front", twin.id, name="twin", ipv4=ip(info["back"]["ipv4"]), ipv6=ip(info["back"]["ipv6"]))
        for client in (fsb, twin):
            for addr in (ip(info["front"]["ipv4"]), ip(info["front"]["ipv6"])):
                for proto in ("tcp", "udp"):
                    got = sorted(await ask(bed, client, addr, proto, count=4))
                    assert got == ["b1", "b1", "b2", "b2"], (client.id, addr, proto)
        await c.delete_proxy("dbp")


def host_notrack(bed: Testbed, c: Controller) -> str:
    """The host's bridge-family table of the proxies' notrack rules (empty: none)."""
    argv = ["nft", "list", "table", "bridge", firewall_table(c.instance)]
    return bed.run(bed.hosts[0].ns, argv).stdout


async def test_ipv4_only_backends_and_host_notrack(bed: Testbed, tmp_path) -> None:
    """A proxy to an IPv4-only network from a dual-stack one: the alias has no AAAA (its
    address would refuse everything); proxied frames skip the host's conntrack, which
    still tracks the rest."""
    async with controller(bed, bed.hosts[0], tmp_path) as c:
        await c.create_network("front", ipv4_subnet="198.51.100.0/26", ipv6_subnet="2001:db8:21:a::/64")
        await c.create_network("back", ipv4_subnet="198.51.100.64/26", ipv6=False)
        await backends(c, bed, "back", ["b1"])
        fsb = await c.create_sandbox(hostname="fe")
        await c.connect("front", fsb.id, name="fe")
        px = await c.create_proxy("dbp", "front", "back", ["db:5432/tcp"])
        info = await c.inspect_proxy("dbp")
        assert info["front"]["ipv6"] is None
        assert await dig(bed, fsb, "db", "AAAA") == []
        assert await dig(bed, fsb, "db", "A") == [ip(info["front"]["ipv4"])]
        assert await ask(bed, fsb, ip(info["front"]["ipv4"]), "tcp", count=2) == ["b1", "b1"]
        legs = [await c.endpoint(e) for e in (px.front_endpoint, px.back_endpoint)]
        table = host_notrack(bed, c)
        assert all(leg.mac in table and f'"{host_ifname(ep_info(leg))}"' in table for leg in legs), table
        assert "notrack" in table
        await c.delete_proxy("dbp")
        assert host_notrack(bed, c) == ""
