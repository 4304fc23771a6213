"""libnet-agent and what it owns: a lost store, two agents on one host, stuck endpoints.

Issue 13, faults 3 and 4 and the CLI's ``endpoint rm``/``inspect``:

- a store that lost its records (deleted, mistyped ``--store``) next to the
  instance's running containers stops the agent with a clear message instead
  of removing them; ``--adopt`` rebuilds the store from the kernel, ``--purge``
  removes exactly the instance's objects and nothing foreign;
- two agents on one host (different state dirs, the same sandbox prefix)
  leave each other's objects alone; two agents on one state dir or one socket
  never both run;
- a left-over unjoined endpoint is shown and removed by the CLI.

Every test runs in its own test hosts (removed with the test bed, whatever
happens) and bounds its waits.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import socket
import subprocess
import time

import pytest

from libnet.kernel import netns
from libnet.kernel.firewall import Firewall
from libnet.kernel.netlink import Netlink
from libnet.ownership import Mark, NamespaceLedger, firewall_table
from libnet.testing.agents import AgentProcess
from libnet.testing.hosts import Testbed, wait_until

pytestmark = pytest.mark.root
V6 = "2001:db8:15::/64"


def ip(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).ip)


def api(agent: AgentProcess, method: str, url: str) -> tuple[int, dict]:
    """One request on the agent's socket."""
    conn = http.client.HTTPConnection("libnet", timeout=60)
    conn.sock = socket.socket(socket.AF_UNIX)
    conn.sock.connect(agent.socket)
    conn.request(method, url, body=b"{}" if method == "POST" else None, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, json.loads(data) if data else {}


def make_agent(bed: Testbed, tmp_path, name: str, host: int = 0, **kw) -> AgentProcess:
    return AgentProcess(bed, bed.hosts[host], state_dir=str(tmp_path / name), **kw)


def instance_of(agent: AgentProcess) -> str:
    with open(os.path.join(agent.dir, "instance-id")) as f:
        return f.read().strip()


def owned(agent: AgentProcess) -> dict[str, set[str]]:
    """What the agent's instance has in the kernel: marked host links, ledger namespaces, rule keys."""
    inst = instance_of(agent)
    with Netlink(agent.host.ns) as nl:
        links = {link.name for link in nl.links() if (m := Mark.parse(link.alias)) is not None and m.instance == inst}
    spaces = {r.name for r in NamespaceLedger(agent.dir, inst).records() if netns.exists(r.name)}
    with Firewall(agent.host.ns, table=firewall_table(inst)) as fw:
        rules = fw.keys()
    return {"links": links, "namespaces": spaces, "rules": rules}


def lose_store(agent: AgentProcess) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(agent.dir, "store.db" + suffix))


def two_pinging(agent: AgentProcess, net: str, subnet: str, subnet6: str) -> dict:
    """A network with two connected sandboxes that ping each other; their details."""
    assert agent.cli("network", "create", net, "--subnet", subnet, "--subnet6", subnet6).returncode == 0
    sbs = []
    for host in ("a", "b"):
        sid = agent.cli("sandbox", "create", "--hostname", f"{net}-{host}").stdout.strip()
        r = agent.cli("connect", net, sid)
        assert r.returncode == 0, r.stderr
        sbs.append(sid)
    eps = {e["sandbox_id"]: e for e in agent.cli_json("endpoint", "ls", "--network", net)}
    netnss = {s["id"]: os.path.basename(s["netns"]) for s in agent.cli_json("sandbox", "ls")}
    info = {
        "net": net,
        "sandboxes": sbs,
        "ns": [netnss[s] for s in sbs],
        "eps": [eps[s] for s in sbs],
    }
    assert pings(agent.bed, info)
    return info


def pings(bed: Testbed, info: dict) -> bool:
    """Both ways, IPv4 and IPv6."""
    (na, nb), (ea, eb) = info["ns"], info["eps"]
    return all(bed.ping(src, ip(ep[fam]), count=3) for src, ep in ((na, eb), (nb, ea)) for fam in ("ipv4", "ipv6"))


def refused(r: subprocess.CompletedProcess, *says: str) -> None:
    assert r.returncode == 1, r.stdout
    for text in says:
        assert text in r.stdout, r.stdout
    assert "Traceback" not in r.stdout, r.stdout


@pytest.fixture
def bed():
    with Testbed(1) as b:
        yield b


def test_lost_store_is_refused_then_adopted(bed: Testbed, tmp_path) -> None:
    """Fault 3: a deleted store (and a mistyped --store) next to running containers
    stops the agent with nothing changed; --adopt brings everything back."""
    agent = make_agent(bed, tmp_path, "a").start()
    web = two_pinging(agent, "web", "198.51.100.0/25", "2001:db8:13::/64")
    quiet = ("quiet", "--subnet", "198.51.100.128/26", "--subnet6", "2001:db8:13:1::/64", "--internal")
    assert agent.cli("network", "create", *quiet).returncode == 0
    nets_before = agent.cli_json("network", "ls")
    sbs_before = {s["id"]: s for s in agent.cli_json("sandbox", "ls")}
    eps_before = {e["id"]: e for e in agent.cli_json("endpoint", "ls")}
    agent.kill()
    kernel = owned(agent)
    assert kernel["links"] and kernel["namespaces"] and kernel["rules"]
    lose_store(agent)

    r = agent.run_to_exit()
    refused(r, f"{agent.dir}/store.db", "--adopt", "--purge", "holds no libnet objects")
    assert owned(agent) == kernel, "a refused start changes nothing"
    assert pings(bed, web), "the containers keep working"

    typo = AgentProcess(bed, agent.host, *agent.extra, state_dir=agent.dir, store=f"sqlite://{agent.dir}/stroe.db")
    refused(typo.run_to_exit(), f"{agent.dir}/stroe.db", "--adopt", "--purge")
    assert owned(agent) == kernel

    agent.start(once=("--adopt",))
    try:
        assert "reconciled at start: 0 removed" in agent.log_tail()
        nets = agent.cli_json("network", "ls")
        keep = ("id", "name", "driver", "ipv4_subnet", "ipv4_gateway", "ipv6_subnet", "ipv6_gateway", "internal")
        assert [{k: n[k] for k in keep} for n in nets] == [{k: n[k] for k in keep} for n in nets_before]
        sbs = {s["id"]: s for s in agent.cli_json("sandbox", "ls")}
        assert {k: (s["netns"], s["endpoints"], s["hostname"]) for k, s in sbs.items()} == {
            k: (s["netns"], s["endpoints"], s["hostname"]) for k, s in sbs_before.items()
        }
        eps = {e["id"]: e for e in agent.cli_json("endpoint", "ls")}
        keep = ("name", "network_id", "ipv4", "ipv6", "mac", "sandbox_id", "ifname", "gateway")
        assert {k: [e[f] for f in keep] for k, e in eps.items()} == {
            k: [e[f] for f in keep] for k, e in eps_before.items()
        }
        status, report = api(agent, "POST", "/v1/reconcile")
        assert status == 200 and report["removed"] == [], report
        assert owned(agent) == kernel

        c = agent.cli("sandbox", "create", "--hostname", "web-c").stdout.strip()
        assert agent.cli("connect", "web", c).returncode == 0
        [new] = [e for e in agent.cli_json("endpoint", "ls") if e["sandbox_id"] == c]
        taken = {ip(e["ipv4"]) for e in eps_before.values()} | {"198.51.100.1"}
        assert ip(new["ipv4"]) not in taken, "a new connect gets a fresh address"
        assert ip(new["ipv6"]) not in {ip(e["ipv6"]) for e in eps_before.values()}
        ns_c = os.path.basename(next(s["netns"] for s in agent.cli_json("sandbox", "ls") if s["id"] == c))
        assert bed.ping(ns_c, ip(web["eps"][0]["ipv4"]), count=3)
        assert pings(bed, web)
    finally:
        agent.stop()
    # the store now carries the state dir's id: a normal restart is a normal start
    agent.start()
    try:
        assert len(agent.cli_json("sandbox", "ls")) == 3 and pings(bed, web)
    finally:
        agent.stop()


def foreign_objects(bed: Testbed, agent: AgentProcess) -> dict[str, str]:
    """Objects named like libnet's (or marked by another instance) that this agent does not own."""
    ns = agent.host.ns
    foreign_ns = f"{bed.prefix}{agent.host.name}-sb-0123456789ab"
    for argv in (
        ["ip", "link", "add", "lnv0123456789ab", "type", "veth", "peer", "name", "lnvfgnpeer"],
        ["ip", "link", "add", "lnb-0123456789a", "type", "bridge"],
        ["ip", "link", "set", "lnb-0123456789a", "alias", "libnet:0123456789ab:net:" + "f" * 64 + ":other"],
        ["nft", "add", "table", "inet", "other"],
        ["nft", "add", "chain", "inet", "other", "chain1", "{ type filter hook forward priority 0; }"],
        ["nft", "add", "rule", "inet", "other", "chain1", "counter"],
    ):
        bed.run(ns, argv, check=True)
    netns.create(foreign_ns)
    return {"veth": "lnv0123456789ab", "bridge": "lnb-0123456789a", "netns": foreign_ns}


def foreign_intact(bed: Testbed, agent: AgentProcess, foreign: dict[str, str]) -> bool:
    with Netlink(agent.host.ns) as nl:
        links = {link.name for link in nl.links()}
    tables = bed.run(agent.host.ns, ["nft", "list", "table", "inet", "other"])
    return (
        {foreign["veth"], "lnvfgnpeer", foreign["bridge"]} <= links
        and netns.exists(foreign["netns"])
        and tables.returncode == 0
        and "counter" in tables.stdout
    )


def test_a_lost_wal_after_a_kill_never_removes_running_containers(bed: Testbed, tmp_path) -> None:
    """Fault 3, the -wal variant: SIGKILL, then the store's -wal file is lost.
    Whatever the store then holds (nothing, or an older state), the restart
    either refuses or finds everything: it never removes the containers' parts."""
    agent = make_agent(bed, tmp_path, "w").start()
    web = two_pinging(agent, "web", "198.51.100.0/25", "2001:db8:16::/64")
    agent.kill()
    kernel = owned(agent)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(agent.dir, "store.db-wal"))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(agent.dir, "store.db-shm"))
    r = agent.run_to_exit(timeout=20) if not _starts(agent) else None
    if r is not None:  # refused: the store lost what the kernel still has
        refused(r, "--adopt", "--purge")
    else:  # the data had reached the database file: a normal start
        try:
            assert "reconciled at start: 0 removed" in agent.log_tail()
        finally:
            agent.stop()
    assert owned(agent) == kernel
    assert pings(bed, web)


def _starts(agent: AgentProcess) -> bool:
    """Whether the agent starts on what is there (False: it exited)."""
    try:
        agent.start(timeout=30)
    except RuntimeError:
        return False
    return True


def test_purge_removes_exactly_the_instance_objects(bed: Testbed, tmp_path) -> None:
    """--purge after a lost store: every object of the instance goes, nothing foreign."""
    agent = make_agent(bed, tmp_path, "a").start()
    two_pinging(agent, "web", "198.51.100.0/25", "2001:db8:14::/64")
    quiet = ("quiet", "--subnet", "198.51.100.128/26", "--subnet6", "2001:db8:14:1::/64", "--internal")
    assert agent.cli("network", "create", *quiet).returncode == 0
    agent.kill()
    kernel = owned(agent)
    foreign = foreign_objects(bed, agent)
    lose_store(agent)
    refused(agent.run_to_exit(), "--purge")

    agent.start(once=("--purge",))
    try:
        assert "purge: removed" in agent.log_tail()
        after = owned(agent)
        assert after == {"links": set(), "namespaces": set(), "rules": set()}, after
        assert not any(netns.exists(n) for n in kernel["namespaces"])
        with Netlink(agent.host.ns) as nl:
            assert not kernel["links"] & {link.name for link in nl.links()}
        assert foreign_intact(bed, agent, foreign)
        assert agent.cli_json("network", "ls") == [] and agent.cli_json("sandbox", "ls") == []
        status, report = api(agent, "POST", "/v1/reconcile")
        assert status == 200 and report["removed"] == []
        # the agent works as new
        assert agent.cli("network", "create", "web", "--subnet", "198.51.100.0/24", "--subnet6", V6).returncode == 0
    finally:
        agent.stop()
    agent.start()  # an ordinary restart: still nothing foreign removed
    try:
        assert foreign_intact(bed, agent, foreign)
    finally:
        agent.stop()


def test_two_agents_on_one_host_leave_each_other_alone(bed: Testbed, tmp_path) -> None:
    """Fault 4: two agents (own state dirs and stores, the same sandbox prefix) in one
    host namespace: neither's start or reconcile removes the other's objects."""
    a = make_agent(bed, tmp_path, "a").start()
    b = None
    try:
        net_a = two_pinging(a, "neta", "198.51.100.0/25", "2001:db8:a::/64")
        b = make_agent(bed, tmp_path, "b").start()
        assert instance_of(a) != instance_of(b)
        net_b = two_pinging(b, "netb", "198.51.100.128/25", "2001:db8:b::/64")
        kernel_a, kernel_b = owned(a), owned(b)
        assert kernel_a["links"] and kernel_a["rules"] and kernel_b["links"] and kernel_b["rules"]
        for agent in (a, b):
            status, report = api(agent, "POST", "/v1/reconcile")
            assert status == 200 and report["removed"] == [], report
        for agent in (a, b):  # restarts reconcile at start
            agent.stop()
            agent.start()
            assert "reconciled at start: 0 removed" in agent.log_tail()
        assert owned(a) == kernel_a and owned(b) == kernel_b
        assert pings(bed, net_a) and pings(bed, net_b)
    finally:
        a.stop()
        if b is not None:
            b.stop()


def test_one_agent_per_state_dir_and_per_socket(bed: Testbed, tmp_path) -> None:
    """Fault 4: of two agents started at once on one state dir exactly one runs; an agent
    with another state dir but the same socket is refused and the live socket stays."""
    first = make_agent(bed, tmp_path, "same")
    second = make_agent(bed, tmp_path, "same")
    logs = [open(tmp_path / f"run{i}.log", "wb") for i in range(2)]  # noqa: SIM115 - closed below
    try:
        procs = [p.spawn(stdout=f, stderr=f) for p, f in zip((first, second), logs, strict=True)]
        assert wait_until(lambda: any(p.poll() is not None for p in procs), timeout=60)
        time.sleep(1)  # the other must still run
        done = [p for p in procs if p.poll() is not None]
        assert len(done) == 1, [p.poll() for p in procs]
        loser = done[0]
        winner = procs[1 - procs.index(loser)]
        out = (tmp_path / f"run{procs.index(loser)}.log").read_text()
        assert loser.returncode == 1, out
        assert f"pid {winner.pid}" in out and str(tmp_path / "same") in out, out
        assert "Traceback" not in out
        assert wait_until(lambda: first.cli("agent", "status").returncode == 0, timeout=30), "the winner serves"

        other = make_agent(bed, tmp_path, "other", socket=first.socket)
        r = other.run_to_exit()
        refused(r, first.socket, f"pid {winner.pid}")
        assert first.cli("agent", "status").returncode == 0, "the live agent's socket is untouched"
        winner.terminate()
        winner.wait(timeout=30)
    finally:
        for f in logs:
            f.close()


def test_endpoint_rm_and_inspect(bed: Testbed, tmp_path) -> None:
    """A left-over unjoined endpoint blocks its name and its network; the CLI shows and removes it."""
    agent = make_agent(bed, tmp_path, "a").start()
    try:
        assert agent.cli("network", "create", "web", "--subnet", "198.51.100.0/24", "--subnet6", V6).returncode == 0
        sid = agent.cli("sandbox", "create", "--hostname", "app").stdout.strip()
        conn = http.client.HTTPConnection("libnet", timeout=60)
        conn.sock = socket.socket(socket.AF_UNIX)
        conn.sock.connect(agent.socket)
        conn.request("POST", "/v1/endpoints", body=json.dumps({"network": "web", "name": "stuck"}))
        stuck = json.loads(conn.getresponse().read())
        conn.close()
        blocked = agent.cli("connect", "web", sid, "--name", "stuck")
        assert blocked.returncode == 1 and "already in use" in blocked.stderr
        assert agent.cli("network", "rm", "web").returncode == 1

        shown = agent.cli("endpoint", "inspect", "stuck")
        assert shown.returncode == 0 and stuck["id"] in shown.stdout and "not joined" in shown.stdout
        [detail] = agent.cli_json("endpoint", "inspect", stuck["id"][:12])
        assert detail["ipv4"] == stuck["ipv4"] and detail["sandbox_id"] is None
        r = agent.cli("endpoint", "rm", "stuck")
        assert r.returncode == 0, r.stderr
        assert stuck["id"] not in {e["id"] for e in agent.cli_json("endpoint", "ls")}

        # a joined endpoint leaves its sandbox first
        assert agent.cli("connect", "web", sid, "--name", "stuck").returncode == 0
        [joined] = agent.cli_json("endpoint", "ls")
        ns = os.path.basename(agent.cli_json("sandbox", "ls")[0]["netns"])
        assert ip(joined["ipv4"]) in bed.run(ns, ["ip", "-o", "addr"]).stdout
        r = agent.cli("endpoint", "rm", joined["id"])
        assert r.returncode == 0, r.stderr
        gone = lambda: ip(joined["ipv4"]) not in bed.run(ns, ["ip", "-o", "addr"]).stdout  # noqa: E731
        assert wait_until(gone, timeout=15), "the interface left the sandbox"
        assert agent.cli_json("sandbox", "ls")[0]["endpoints"] == []
        missing = agent.cli("endpoint", "rm", "nope")
        assert missing.returncode == 1 and "no such endpoint" in missing.stderr
        assert agent.cli("network", "rm", "web").returncode == 0
    finally:
        agent.stop()
    assert agent.cli("endpoint", "rm", "x").returncode == 3


def test_host_without_ipv6_is_refused_before_anything_changes(bed: Testbed, tmp_path) -> None:
    """Deliver 6: a host check fails with one line and the fix, and nothing is created."""
    agent = make_agent(bed, tmp_path, "a")
    bed.run(agent.host.ns, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"], check=True)
    r = agent.run_to_exit()
    refused(r, "IPv6 is disabled", "--no-ipv6")
    assert len(r.stdout.strip().splitlines()) == 1, r.stdout
    assert os.listdir(agent.dir) == [], "no lock, instance id or store was made"
    agent.extra.append("--no-ipv6")
    agent.start()
    try:
        assert agent.cli("network", "create", "web", "--subnet", "198.51.100.0/24").returncode == 0
    finally:
        agent.stop()


def _delete_keys(agent: AgentProcess, *prefixes: str) -> list[str]:
    import asyncio

    from libnet.store import open_store

    async def run() -> list[str]:
        store = open_store(f"sqlite://{agent.dir}/store.db")
        gone = []
        try:
            for prefix in prefixes:
                for pair in await store.list(prefix):
                    await store.delete(pair.key)
                    gone.append(pair.key)
        finally:
            await store.close()
        return gone

    return asyncio.run(run())


@pytest.mark.parametrize("lost", ["networks", "sandboxes", "endpoints"])
def test_a_store_that_lost_some_records_never_cuts_off_containers(bed: Testbed, tmp_path, lost: str) -> None:
    """A store older than the kernel (a lost -wal after a checkpoint, a restored
    backup, a deleted key): reconcile keeps every kernel object a container
    still uses and reports it, instead of removing it as a leak."""
    agent = make_agent(bed, tmp_path, f"p-{lost}").start()
    web = two_pinging(agent, "web", "198.51.100.0/25", "2001:db8:17::/64")
    agent.stop()
    kernel = owned(agent)
    assert _delete_keys(agent, f"libnet/v1/{lost}/")
    with open(os.path.join(agent.dir, "agent.log"), "a") as f:
        f.write("--- restart ---\n")
    agent.start()
    try:
        tail = agent.log_tail().rsplit("--- restart ---", 1)[-1]
        assert "reconciled at start: 0 removed" in tail, tail
        status, report = api(agent, "POST", "/v1/reconcile")
        assert status == 200 and report["removed"] == [], report
        assert any("kept" in line for line in report["missing"]), report
        assert owned(agent) == kernel
        assert pings(bed, web)
    finally:
        agent.stop()


def test_a_store_belongs_to_one_instance(bed: Testbed, tmp_path) -> None:
    """A second agent (another state dir) pointed at a running agent's store is
    refused, and so is an agent whose state dir lost its instance id: neither
    may act on (and later reconcile away) the other's containers."""
    agent = make_agent(bed, tmp_path, "own").start()
    web = two_pinging(agent, "web", "198.51.100.0/25", "2001:db8:18::/64")
    try:
        kernel = owned(agent)
        second = make_agent(bed, tmp_path, "second", store=f"sqlite://{agent.dir}/store.db")
        r = second.run_to_exit()
        refused(r, f"belongs to libnet instance {instance_of(agent)}")
        assert owned(agent) == kernel and pings(bed, web)
    finally:
        agent.stop()
    old = instance_of(agent)
    os.unlink(os.path.join(agent.dir, "instance-id"))
    r = agent.run_to_exit()
    refused(r, f"echo {old} > {agent.dir}/instance-id")
    with open(os.path.join(agent.dir, "instance-id"), "w") as f:
        f.write(old + "\n")
    agent.start()
    try:
        assert owned(agent) == kernel and pings(bed, web)
    finally:
        agent.stop()
