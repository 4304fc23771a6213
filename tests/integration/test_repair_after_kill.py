"""Through a real agent: kill -9 at random moments of connects and disconnects of sandboxes on
several networks; after each restart every sandbox has exactly one default route per family,
via the endpoint the store says carries them, its hosts file says what the store says, and a
second reconcile repairs nothing (commit 06bda63: Joins.repair)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import stat
import subprocess
import threading
import time

import pytest

from agent.cli import AgentError, Client, Unreachable
from libnet.cluster.serf import new_key
from libnet.testing.agents import AgentProcess
from libnet.testing.hosts import Testbed

pytestmark = pytest.mark.root

NETWORKS = {
    "front": "198.51.100.0/26",
    "side": "198.51.100.64/26",
    "back": "198.51.100.128/26",
}


@pytest.fixture
def bed():
    with Testbed(1) as b:
        yield b


def _quietly(api: Client, method: str, url: str, body: dict | None) -> None:
    with contextlib.suppress(AgentError, Unreachable):  # killed under it
        api.request(method, url, body)


def _defaults(bed: Testbed, ns: str) -> list[str]:
    out = []
    for family in ("-4", "-6"):
        r = bed.run(ns, ["ip", family, "route", "show", "default"])
        out += [line.strip() for line in r.stdout.splitlines() if line.strip()]
    return out


def _hosts_entries(path: str) -> set[tuple[str, str]]:
    with open(path) as f:
        lines = [line.split() for line in f if line.strip() and not line.startswith("#")]
    return {(words[0], " ".join(words[1:])) for words in lines if not words[0].startswith(("127.", "::1", "fe", "ff"))}


def _check(bed: Testbed, agent: AgentProcess, api: Client, where: str) -> None:
    nets = {n["id"]: n for n in api.request("GET", "/v1/networks")}
    eps = {e["id"]: e for e in api.request("GET", "/v1/endpoints")}
    for sb in api.request("GET", "/v1/sandboxes"):
        mine = [eps[e] for e in sb["endpoints"]]
        carriers = [e for e in mine if e["gateway"]]
        assert len(carriers) <= 1, f"{where}: {carriers}"
        routes = _defaults(bed, os.path.basename(sb["netns"]))
        if mine:
            assert len(carriers) == 1, f"{where}: sandbox {sb['id'][:12]} endpoints {mine}: none carries the routes"
            nw, ifname = nets[carriers[0]["network_id"]], carriers[0]["ifname"]
            gws = [nw[k].split("/")[0] for k in ("ipv4_gateway", "ipv6_gateway") if nw[k]]
            got = [line.split()[:5] for line in routes]
            assert got == [["default", "via", gw, "dev", ifname] for gw in gws], f"{where}: {routes} {carriers}"
        else:
            assert routes == [], f"{where}: {routes}"
        want = {
            (str(ipaddress.ip_interface(e[k]).ip), " ".join(dict.fromkeys([sb["hostname"], e["name"], *e["aliases"]])))
            for e in mine
            for k in ("ipv4", "ipv6")
            if e[k]
        }
        hosts = os.path.join(agent.dir, "sandboxes", sb["id"], "hosts")
        assert _hosts_entries(hosts) == want, f"{where}: {hosts}"


def test_kills_during_connects_and_disconnects_are_repaired(bed: Testbed, tmp_path) -> None:
    seed = int(os.environ.get("LIBNET_TEST_SEED", random.randrange(1 << 30)))
    print(f"seed {seed}")
    rng = random.Random(seed)
    rounds = int(os.environ.get("LIBNET_TEST_ROUNDS", "12"))
    agent = AgentProcess(bed, bed.hosts[0], state_dir=str(tmp_path / "h1")).start()
    api = Client(agent.socket, timeout=30)
    try:
        for name, subnet in NETWORKS.items():
            api.request("POST", "/v1/networks", {"name": name, "ipv4_subnet": subnet})
        sandboxes = [api.request("POST", "/v1/sandboxes", {"hostname": f"b{i}"})["id"] for i in range(2)]
        for sid in sandboxes:
            for name in ("front", "side"):
                api.request("POST", f"/v1/networks/{name}/connect", {"sandbox": sid})
        _check(bed, agent, api, "before")
        deadline = time.monotonic() + 240
        for i in range(rounds):
            assert time.monotonic() < deadline, f"seed {seed}: out of time at round {i}"
            sid = rng.choice(sandboxes)
            sb = api.request("GET", f"/v1/sandboxes/{sid}")
            on = {e["network_id"] for e in api.request("GET", "/v1/endpoints") if e["id"] in sb["endpoints"]}
            nets = {n["name"]: n["id"] for n in api.request("GET", "/v1/networks")}
            name = rng.choice(list(NETWORKS))
            op = "disconnect" if nets[name] in on else "connect"
            worker = threading.Thread(
                target=_quietly, args=(api, "POST", f"/v1/networks/{name}/{op}", {"sandbox": sid}), daemon=True
            )
            worker.start()
            time.sleep(rng.uniform(0, 0.06))
            agent.kill()
            worker.join(30)
            agent.start(timeout=60)
            where = f"seed {seed} round {i} ({op} {name} {sid[:12]})"
            report = api.request("POST", "/v1/reconcile")
            assert not report["repaired"] and not report["missing"], f"{where}: second reconcile: {report}"
            _check(bed, agent, api, where)
        with open(os.path.join(agent.dir, "agent.log")) as f:
            log = f.read()
        assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
        print("repairs at start:", [line for line in log.splitlines() if "reconcile: sandbox" in line])
    finally:
        agent.stop()


def test_reconcile_keeps_a_default_route_libnet_did_not_make(bed: Testbed, tmp_path) -> None:
    """The default route of the sandbox is someone else's when the endpoint carrying libnet's
    leaves: the leave's hand-over is refused, and each reconcile says so, never replacing or
    deleting it; once it is removed, the next reconcile hands the routes over."""
    agent = AgentProcess(bed, bed.hosts[0], state_dir=str(tmp_path / "h1")).start()
    api = Client(agent.socket, timeout=30)
    try:
        for name in ("front", "side"):
            api.request("POST", "/v1/networks", {"name": name, "ipv4_subnet": NETWORKS[name]})
        sid = api.request("POST", "/v1/sandboxes", {"hostname": "b"})["id"]
        ns = os.path.basename(api.request("GET", f"/v1/sandboxes/{sid}")["netns"])
        api.request("POST", "/v1/networks/front/connect", {"sandbox": sid})
        side = api.request("POST", "/v1/networks/side/connect", {"sandbox": sid})
        bed.run(ns, ["ip", "-4", "route", "del", "default"])
        bed.run(ns, ["ip", "-4", "route", "add", "default", "via", "198.51.100.70", "dev", side["ifname"]])
        foreign = _defaults(bed, ns)[0]
        api.request("POST", "/v1/networks/front/disconnect", {"sandbox": sid})
        assert _defaults(bed, ns) == [foreign]
        # breaker: each refused hand-over added the IPv6 default route and took it away again
        monitor = subprocess.Popen(["ip", "-n", ns, "monitor", "route"], stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(0.3)
            for _ in range(3):
                report = api.request("POST", "/v1/reconcile")
                assert any("does not take over the default routes" in line for line in report["missing"]), report
                assert _defaults(bed, ns) == [foreign]
            time.sleep(0.3)
        finally:
            monitor.terminate()
            events = monitor.communicate(timeout=10)[0]
        assert "default" not in events, events
        assert not api.request("GET", f"/v1/endpoints/{side['id']}")["gateway"]
        bed.run(ns, ["ip", "-4", "route", "del", "default"])
        report = api.request("POST", "/v1/reconcile")
        assert any("default routes handed over" in line for line in report["repaired"]), report
        assert [r.split()[:3] for r in _defaults(bed, ns)] == [
            ["default", "via", "198.51.100.65"],
            ["default", "via", "2001:db8:def:1::1"],
        ] or len(_defaults(bed, ns)) == 2, _defaults(bed, ns)
        assert api.request("GET", f"/v1/endpoints/{side['id']}")["gateway"]
        assert not api.request("POST", "/v1/reconcile")["repaired"]
    finally:
        agent.stop()


def test_two_agents_on_one_store_repair_only_their_own_sandboxes(tmp_path) -> None:
    """Two agents (two hosts) share one store: a sandbox of one left without its default routes and
    with stale files is repaired by its own agent's reconcile, never by the other's."""
    store = f"sqlite://{tmp_path}/shared.db"
    with Testbed(2) as bed:
        a = AgentProcess(bed, bed.hosts[0], state_dir=str(tmp_path / "h1"), store=store).start()
        b = AgentProcess(bed, bed.hosts[1], state_dir=str(tmp_path / "h2"), store=store).start()
        api_a, api_b = Client(a.socket, timeout=30), Client(b.socket, timeout=30)
        try:
            subnets = {"front": "198.51.100.0/26", "side": "198.51.100.64/26"}
            subnets_b = {"bfront": "198.51.100.128/26", "bside": "198.51.100.192/26"}
            for api, nets in ((api_a, subnets), (api_b, subnets_b)):
                for name, subnet in nets.items():
                    api.request("POST", "/v1/networks", {"name": name, "ipv4_subnet": subnet})
            sa = api_a.request("POST", "/v1/sandboxes", {"hostname": "a"})["id"]
            sb = api_b.request("POST", "/v1/sandboxes", {"hostname": "b"})["id"]
            for api, sid, names in ((api_a, sa, ("front", "side")), (api_b, sb, ("bfront", "bside"))):
                for name in names:
                    api.request("POST", f"/v1/networks/{name}/connect", {"sandbox": sid})
            ns_a = os.path.basename(api_a.request("GET", f"/v1/sandboxes/{sa}")["netns"])
            ns_b = os.path.basename(api_b.request("GET", f"/v1/sandboxes/{sb}")["netns"])
            # a's sandbox as a kill -9 after its leave's store step left it: no default route, no carrier
            bed.run(ns_a, ["ip", "-4", "route", "del", "default"])
            bed.run(ns_a, ["ip", "-4", "route", "add", "default", "via", "198.51.100.70", "dev", "eth1"])
            api_a.request("POST", "/v1/networks/front/disconnect", {"sandbox": sa})
            bed.run(ns_a, ["ip", "-4", "route", "del", "default"])
            assert _defaults(bed, ns_a) == []
            hosts_a = tmp_path / "h1" / "sandboxes" / sa / "hosts"
            hosts_b = tmp_path / "h2" / "sandboxes" / sb / "hosts"
            hosts_a.write_text("# stale\n")
            stat_b = hosts_b.stat()
            routes_b = _defaults(bed, ns_b)
            for _ in range(2):  # b reports a's bridges and veths missing (its driver's view): no sandbox's
                report = api_b.request("POST", "/v1/reconcile")
                assert not report["repaired"] and not any("sandbox" in m for m in report["missing"]), report
            assert _defaults(bed, ns_a) == [] and hosts_a.read_text() == "# stale\n"
            assert not (tmp_path / "h2" / "sandboxes" / sa).exists()
            report = api_a.request("POST", "/v1/reconcile")
            assert len(report["repaired"]) == 2, report
            assert len(_defaults(bed, ns_a)) == 2 and "198.51.100.66\ta\n" in hosts_a.read_text()
            report = api_b.request("POST", "/v1/reconcile")
            assert not report["repaired"] and not any("sandbox" in m for m in report["missing"]), report
            assert _defaults(bed, ns_b) == routes_b and hosts_b.stat().st_ino == stat_b.st_ino
        finally:
            a.stop()
            b.stop()


OVERLAYS = {"ov": "198.51.100.0/26", "ov2": "198.51.100.64/26"}


def _check_gateway_legs(api: Client, where: str) -> None:
    """A sandbox on a non-internal overlay has exactly one leg on the gateway bridge, any other none;
    no leg is left unjoined."""
    nets = {n["id"]: n for n in api.request("GET", "/v1/networks")}
    eps = {e["id"]: e for e in api.request("GET", "/v1/endpoints")}
    legs = [e for e in eps.values() if nets[e["network_id"]]["name"] == "libnet-gwbridge"]
    assert all(e["sandbox_id"] for e in legs), f"{where}: unjoined gateway bridge legs {legs}"
    for sb in api.request("GET", "/v1/sandboxes"):
        mine = [eps[e] for e in sb["endpoints"]]
        on_overlay = any(nets[e["network_id"]]["driver"] == "overlay" for e in mine)
        held = [e for e in mine if e in legs]
        assert len(held) == (1 if on_overlay else 0), f"{where}: sandbox {sb['id'][:12]}: {mine}"


def test_kills_during_overlay_connects_and_disconnects_keep_the_gateway_bridge_in_step(bed: Testbed, tmp_path) -> None:
    """kill -9 at random moments of connects and disconnects of overlay networks (whose way out is the
    gateway bridge): after each restart a sandbox on an overlay has its gateway bridge leg carrying its
    default routes, one on none has no leg, and a second reconcile repairs nothing."""
    seed = int(os.environ.get("LIBNET_TEST_SEED", random.randrange(1 << 30)))
    print(f"seed {seed}")
    rng = random.Random(seed)
    rounds = int(os.environ.get("LIBNET_TEST_ROUNDS", "12"))
    cluster = ("--cluster-store", f"sqlite://{tmp_path}/cluster.db", "--advertise", bed.hosts[0].ipv4)
    agent = AgentProcess(bed, bed.hosts[0], *cluster, "--cluster-key", new_key(), state_dir=str(tmp_path / "h1"))
    agent.start()
    api = Client(agent.socket, timeout=30)
    try:
        for name, subnet in OVERLAYS.items():
            api.request("POST", "/v1/networks", {"name": name, "driver": "overlay", "ipv4_subnet": subnet})
        api.request("POST", "/v1/networks", {"name": "front", "ipv4_subnet": NETWORKS["back"]})
        sandboxes = [api.request("POST", "/v1/sandboxes", {"hostname": f"o{i}"})["id"] for i in range(2)]
        took = {}  # how long each operation takes here: the kills land mostly in its later part (the gateway step)
        for path in ("ov/connect", "ov2/connect", "ov2/disconnect"):
            start = time.monotonic()
            api.request("POST", f"/v1/networks/{path}", {"sandbox": sandboxes[0]})
            took[path.split("/")[1]] = time.monotonic() - start
        api.request("POST", "/v1/networks/front/connect", {"sandbox": sandboxes[1]})
        print("took", took)
        _check(bed, agent, api, "before")
        _check_gateway_legs(api, "before")
        deadline = time.monotonic() + 300
        for i in range(rounds):
            assert time.monotonic() < deadline, f"seed {seed}: out of time at round {i}"
            sid = rng.choice(sandboxes)
            sb = api.request("GET", f"/v1/sandboxes/{sid}")
            on = {e["network_id"] for e in api.request("GET", "/v1/endpoints") if e["id"] in sb["endpoints"]}
            nets = {n["name"]: n["id"] for n in api.request("GET", "/v1/networks")}
            name = rng.choice([*OVERLAYS, "front"])
            op = "disconnect" if nets[name] in on else "connect"
            worker = threading.Thread(
                target=_quietly, args=(api, "POST", f"/v1/networks/{name}/{op}", {"sandbox": sid}), daemon=True
            )
            worker.start()
            time.sleep(rng.uniform(0.3, 1.2) * took[op])
            agent.kill()
            worker.join(30)
            agent.start(timeout=60)
            where = f"seed {seed} round {i} ({op} {name} {sid[:12]})"
            report = api.request("POST", "/v1/reconcile")
            assert not report["repaired"] and not report["missing"], f"{where}: second reconcile: {report}"
            _check(bed, agent, api, where)
            _check_gateway_legs(api, where)
        with open(os.path.join(agent.dir, "agent.log")) as f:
            log = f.read()
        assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
        print("repairs at start:", [line for line in log.splitlines() if "reconcile: sandbox" in line])
    finally:
        agent.stop()


def test_a_restart_writes_the_files_of_a_sandbox_left_without_them(bed: Testbed, tmp_path) -> None:
    """A sandbox record without its directory (what a kill -9 between create's store step and its
    files leaves: that window is too short to hit with a real kill, so the kill comes after and the
    directory is removed while the agent is down) gets its files at the restart; a FIFO in the place
    of another sandbox's directory is reported, neither opened nor removed."""
    agent = AgentProcess(bed, bed.hosts[0], state_dir=str(tmp_path / "h1")).start()
    api = Client(agent.socket, timeout=30)
    try:
        api.request("POST", "/v1/networks", {"name": "front", "ipv4_subnet": NETWORKS["front"]})
        lost, blocked = (api.request("POST", "/v1/sandboxes", {"hostname": h})["id"] for h in ("lost", "blocked"))
        api.request("POST", "/v1/networks/front/connect", {"sandbox": lost})
        want = {n: (tmp_path / "h1" / "sandboxes" / lost / n).read_text() for n in ("resolv.conf", "hosts")}
        agent.kill()
        for sid in (lost, blocked):
            for name in os.listdir(tmp_path / "h1" / "sandboxes" / sid):
                os.unlink(tmp_path / "h1" / "sandboxes" / sid / name)
            os.rmdir(tmp_path / "h1" / "sandboxes" / sid)
        fifo = tmp_path / "h1" / "sandboxes" / blocked
        os.mkfifo(fifo)
        agent.start(timeout=60)
        got = {n: (tmp_path / "h1" / "sandboxes" / lost / n).read_text() for n in want}
        assert got == want
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
        with open(os.path.join(agent.dir, "agent.log")) as f:
            log = f.read()
        assert f"reconcile: sandbox {lost[:12]}: resolv.conf/hosts written (its directory was missing)" in log, log
        assert f"reconcile: sandbox {blocked[:12]}: resolv.conf/hosts not written" in log, log
        report = api.request("POST", "/v1/reconcile")
        assert not report["repaired"] and report["missing"] == [
            line for line in report["missing"] if blocked[:12] in line and str(fifo) in line
        ], report
        os.unlink(fifo)
        report = api.request("POST", "/v1/reconcile")
        assert report["repaired"] == [f"sandbox {blocked[:12]}: resolv.conf/hosts written (its directory was missing)"]
    finally:
        agent.stop()
