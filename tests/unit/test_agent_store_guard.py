"""The agent's start guards without root: host checks, locks, the store guard,
adopt's planning and writing, and ``libnet endpoint rm``/``inspect``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

from agent import locks, preflight, storeguard
from agent.api import AgentState, make_app
from agent.cli import cli
from agent.config import load
from agent.metrics import Metrics
from ipam.ipam import StoreIpam
from libnet import Config, Controller, model
from libnet.adopt import (
    KernelBridge,
    KernelInterface,
    KernelState,
    default_bridge_name,
    parse_port_rule,
    plan,
    read_hostname,
    write,
)
from libnet.driverapi import NetworkInfo
from libnet.drivers.bridge import bridge_name
from libnet.errors import BadRequest, KernelError, NameInUse
from libnet.inventory import Inventory, OwnedLink
from libnet.kernel.firewall import port_rules
from libnet.ownership import Mark, NamespaceRecord
from libnet.repository import Repository
from libnet.store import open_store
from libnet.store.memory import MemoryStore
from libnet.testing.fakes import FakeDriver, FakeNamespaces

INST = "0a1b2c3d4e5f"
NID = "1" * 64
EID_A, EID_B = "a" * 64, "b" * 64

# --- preflight --------------------------------------------------------------------


def test_not_root_is_one_line_with_the_fix(tmp_path) -> None:
    with pytest.raises(preflight.HostNotReady) as exc:
        preflight.check_root(euid=1000)
    assert "must run as root" in exc.value.message and "sudo" in exc.value.message
    assert "\n" not in exc.value.message
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t0000000000000000\n")
    with pytest.raises(preflight.HostNotReady, match="CAP_NET_ADMIN and CAP_SYS_ADMIN"):
        preflight.check_root(euid=0, status_path=str(status))
    status.write_text(f"CapEff:\t{(1 << 12 | 1 << 21):016x}\n")
    preflight.check_root(euid=0, status_path=str(status))


def test_nftables_binding_and_kernel_checks() -> None:
    def no_module(name: str) -> object:
        raise ImportError(name)

    with pytest.raises(preflight.HostNotReady, match="pip-nftables"):
        preflight.check_nftables_binding(no_module)

    def no_library() -> None:
        raise OSError("libnftables.so.1: cannot open shared object file")

    with pytest.raises(preflight.HostNotReady, match="libnftables"):
        preflight.check_nftables_binding(lambda name: types.SimpleNamespace(Nftables=no_library))
    preflight.check_nftables_binding(lambda name: types.SimpleNamespace(Nftables=lambda: None))

    def no_kernel() -> None:
        raise KernelError("list tables: nftables: Error: Protocol not supported", errno=93)

    with pytest.raises(preflight.HostNotReady, match="modprobe nf_tables"):
        preflight.check_nf_tables_kernel(no_kernel)
    preflight.check_nf_tables_kernel(lambda: None)


def test_netns_dir_check(tmp_path) -> None:
    preflight.check_netns_dir(str(tmp_path / "netns"))  # absent, creatable
    (tmp_path / "netns").mkdir()
    preflight.check_netns_dir(str(tmp_path / "netns"))
    (tmp_path / "file").write_text("")
    with pytest.raises(preflight.HostNotReady, match=r"not a directory.*mkdir -p"):
        preflight.check_netns_dir(str(tmp_path / "file"))
    with pytest.raises(preflight.HostNotReady, match="does not exist"):
        preflight.check_netns_dir(str(tmp_path / "no" / "netns"))


def test_ipv6_check_suggests_no_ipv6(tmp_path) -> None:
    for which in ("all", "default"):
        (tmp_path / which).mkdir()
        (tmp_path / which / "disable_ipv6").write_text("0\n")
    preflight.check_ipv6(True, str(tmp_path))
    (tmp_path / "default" / "disable_ipv6").write_text("1\n")
    with pytest.raises(preflight.HostNotReady, match="--no-ipv6") as exc:
        preflight.check_ipv6(True, str(tmp_path))
    assert "net.ipv6.conf.default.disable_ipv6" in exc.value.message
    preflight.check_ipv6(False, str(tmp_path))  # IPv4 only: fine
    with pytest.raises(preflight.HostNotReady, match=r"ipv6\.disable=1"):
        preflight.check_ipv6(True, str(tmp_path / "nothing"))


# --- locks -------------------------------------------------------------------------


def test_state_lock_names_the_holder(tmp_path) -> None:
    with locks.state_lock(str(tmp_path)):
        with pytest.raises(locks.AgentLocked) as exc:
            locks.state_lock(str(tmp_path)).acquire()
        assert f"pid {os.getpid()}" in exc.value.message and str(tmp_path) in exc.value.message
    locks.state_lock(str(tmp_path)).acquire().release()  # free again


def test_lock_held_by_another_process(tmp_path) -> None:
    code = (
        "import sys, time; from agent import locks; "
        f"l = locks.socket_lock({str(tmp_path / 's.sock')!r}).acquire(); print('held', flush=True); time.sleep(30)"
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(locks.__file__)))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=repo)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(locks.AgentLocked, match=f"pid {child.pid}.*socket"):
            locks.socket_lock(str(tmp_path / "s.sock")).acquire()
    finally:
        child.kill()
        child.wait(timeout=10)
    locks.socket_lock(str(tmp_path / "s.sock")).acquire().release()  # the dead holder's lock is free


# --- configuration ---------------------------------------------------------------


def test_adopt_and_purge_are_command_line_flags_only(tmp_path) -> None:
    assert load(["--adopt"], {}).adopt and load(["--purge"], {}).purge
    assert not load([], {"LIBNET_PURGE": "1"}).purge, "never from the environment"
    with pytest.raises(BadRequest, match="exclude each other"):
        load(["--adopt", "--purge"], {})
    conf = tmp_path / "a.toml"
    conf.write_text("purge = true\n")
    with pytest.raises(BadRequest, match="command line"):
        load(["--config", str(conf)], {})


# --- the store guard -------------------------------------------------------------


def _inventory(empty: bool = False) -> Inventory:
    if empty:
        return Inventory(INST)
    return Inventory(
        INST,
        links=[OwnedLink("lnb-11111111111", "bridge", Mark(INST, "net", NID, "web"))],
        namespaces=[NamespaceRecord("lns-0a1b2c-aaaa", INST, "sandbox", "aaaa")],
        table=f"libnet-{INST}",
        rules=4,
    )


def _contents(objects: bool, store_id: str | None = "s1") -> storeguard.StoreContents:
    return storeguard.StoreContents({"networks": ["web"] if objects else []}, [], store_id)


def test_guard_decisions() -> None:
    def decide(contents, expected="s1", owned=None, **kw):
        return storeguard.decide("sqlite:///x/store.db", "/st", INST, contents, expected, owned or _inventory(), **kw)

    assert not decide(_contents(True)).refuse  # the expected store, with objects
    assert not decide(_contents(False)).refuse  # empty, but the expected store (a create cut short)
    v = decide(_contents(False, None))  # empty store without an id, owned objects
    assert v.refuse and "sqlite:///x/store.db" in v.message and "holds no libnet objects" in v.message
    assert "--adopt" in v.message and "--purge" in v.message and "lnb-11111111111" in v.message
    assert "4 nftables rules" in v.message and "1 namespace (lns-0a1b2c-aaaa)" in v.message
    v = decide(_contents(True, store_id=None))  # objects, but not the expected store
    assert v.refuse and "is not the store this state dir" in v.message and "/st/store-id" in v.message
    assert decide(_contents(True, store_id="other")).refuse
    assert not decide(_contents(False), owned=_inventory(empty=True)).refuse  # nothing at stake
    assert not decide(_contents(False, None), expected=None, owned=_inventory(empty=True)).refuse  # a first start
    assert decide(_contents(False, None), expected=None).refuse  # no id anywhere, but owned objects
    assert not decide(_contents(False, None), adopt=True).refuse
    assert not decide(_contents(False, None), purge=True).refuse
    v = decide(_contents(True), purge=True)
    assert v.refuse and "--purge refused" in v.message and "1 networks" in v.message
    damaged = storeguard.StoreContents({"networks": []}, ["libnet/v1/networks/abc"], "s1")
    v = decide(damaged, owned=_inventory(empty=True))
    assert v.refuse and "libnet/v1/networks/abc" in v.message and "\n" not in v.message


async def test_guard_records_the_store_id_and_names_a_damaged_record(tmp_path, monkeypatch) -> None:
    owned = {"inv": _inventory(empty=True)}
    monkeypatch.setattr(storeguard.inventory, "scan", lambda *a: owned["inv"])
    store = MemoryStore()
    await storeguard.check(store, "memory://", str(tmp_path), INST, "n1")  # first start
    sid, _, owner = (await store.get(storeguard.STORE_ID_KEY)).value.decode().partition("\n")
    assert storeguard.read_id_file(str(tmp_path)) == sid and owner == INST

    owned["inv"] = _inventory()
    with pytest.raises(storeguard.StoreRefused, match="holds no libnet objects"):
        await storeguard.check(MemoryStore(), "memory://", str(tmp_path), INST, "n1")  # a lost store
    assert storeguard.read_id_file(str(tmp_path)) == sid, "a refusal changes nothing"

    nw = model.Network(NID, "web", "bridge", "local")
    await store.put(f"libnet/v1/networks/{NID}", model.encode("network", nw.to_data()))
    await storeguard.check(store, "memory://", str(tmp_path), INST, "n1")  # the right store: fine
    await store.put("libnet/v1/sandboxes/broken", b"{not json")
    with pytest.raises(storeguard.StoreRefused, match="damaged record at key libnet/v1/sandboxes/broken"):
        await storeguard.check(store, "memory://", str(tmp_path), INST, "n1")
    await store.delete("libnet/v1/sandboxes/broken")
    bad = {**nw.to_data(), "ipv4_subnet": "not-a-subnet"}
    await store.put(f"libnet/v1/networks/{NID}", model.encode("network", bad))
    with pytest.raises(storeguard.StoreRefused, match=f"damaged record at key libnet/v1/networks/{NID}"):
        await storeguard.check(store, "memory://", str(tmp_path), INST, "n1")
    await store.put(f"libnet/v1/networks/{NID}", model.encode("network", {"id": NID}))  # fields missing
    with pytest.raises(storeguard.StoreRefused, match=f"damaged record at key libnet/v1/networks/{NID}"):
        await storeguard.check(store, "memory://", str(tmp_path), INST, "n1")
    await store.put(f"libnet/v1/networks/{NID}", model.encode("network", nw.to_data()))
    # another instance's store (a second agent pointed at it, or a lost instance-id): refused, named
    other = tmp_path / "other"
    with pytest.raises(storeguard.StoreRefused, match=f"belongs to libnet instance {INST}"):
        await storeguard.check(store, "memory://", str(other), "ffffffffffff", "n1")
    await store.put("libnet/v1/ipam/local/pools", b'{"schema": 1, "kind": "network", "data": {}}')
    with pytest.raises(storeguard.StoreRefused, match="damaged record at key libnet/v1/ipam/local/pools"):
        await storeguard.check(store, "memory://", str(tmp_path), INST, "n1")


async def test_guard_on_an_unreadable_store(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(storeguard.inventory, "scan", lambda *a: _inventory())
    path = tmp_path / "store.db"
    path.write_bytes(b"this is not a database" * 100)
    store = open_store(f"sqlite://{path}")
    try:
        with pytest.raises(storeguard.StoreRefused) as exc:
            await storeguard.check(store, f"sqlite://{path}", str(tmp_path), INST, "n1")
    finally:
        await store.close()
    assert f"cannot read the store sqlite://{path}" in exc.value.message and "--adopt" in exc.value.message
    assert not os.path.exists(tmp_path / storeguard.STORE_ID_FILE)


# --- adopt -------------------------------------------------------------------------


def _kernel_state() -> KernelState:
    web = KernelBridge(
        default_bridge_name(NID), Mark(INST, "net", NID, "web"), ["198.51.100.1/24", "2001:db8:1::1/64"], 1400
    )
    custom_id = "2" * 64
    custom = KernelBridge("mybr", Mark(INST, "net", custom_id, "quiet"), ["198.51.101.1/24"], 1500)
    sandboxes = [NamespaceRecord("lns-x-a", INST, "sandbox", "sba"), NamespaceRecord("lns-x-b", INST, "sandbox", "sbb")]
    interfaces = [
        KernelInterface("sba", "eth0", Mark(INST, "ep", EID_A, "a"), "02:42:c6:33:64:02",
                        ["198.51.100.2/24", "2001:db8:1::2/64"], True, NID),
        KernelInterface("sba", "eth1", Mark(INST, "ep", "c" * 64, "a"), "02:42:c6:33:65:02",
                        ["198.51.101.2/24"], False, custom_id),
        KernelInterface("sbb", "eth0", Mark(INST, "ep", EID_B, "b"), "02:42:c6:33:64:03",
                        ["198.51.100.3/24", "2001:db8:1::3/64"], True, NID),
        KernelInterface("sbb", "eth1", Mark(INST, "ep", "d" * 64, "b"), "02:42:0a:00:00:03",
                        ["10.0.0.3/24"], False, None),
    ]  # fmt: skip
    return KernelState(
        [web, custom],
        sandboxes,
        [NamespaceRecord("lno-x-256", INST, "overlay", "9" * 64)],
        interfaces,
        internal={custom_id},
        plugged={"lnvaaaaaaaaaaaa": Mark(INST, "ep", EID_A, "a"), "lnveeeeeeeeeeee": Mark(INST, "ep", "e" * 64, "x")},
        ports={EID_A: [{"host_port": 8080, "container_port": 80, "protocol": "tcp", "host_ip": None}]},
    )


def test_default_bridge_name_is_the_drivers() -> None:
    info = NetworkInfo(NID, "web", None, None, None, None, False, {})
    assert default_bridge_name(NID) == bridge_name(info)


def test_plan_from_the_kernel() -> None:
    p = plan(_kernel_state(), INST, "node1", hostnames={"sba": "app"}, now=5.0)
    nets = {n.name: n for n in p.networks}
    web, quiet = nets["web"], nets["quiet"]
    assert (web.id, web.ipv4_subnet, web.ipv4_gateway, web.ipv6_subnet, web.ipv6_gateway) == (
        NID,
        "198.51.100.0/24",
        "198.51.100.1/24",
        "2001:db8:1::/64",
        "2001:db8:1::1/64",
    )
    assert web.options == {"bridge_name": None, "mtu": 1400, "icc": True} and not web.internal
    assert quiet.options["bridge_name"] == "mybr" and quiet.internal and quiet.ipv6_subnet is None
    eps = {e.id: e for e in p.endpoints}
    a = eps[EID_A]
    assert (a.name, a.network_id, a.ipv4, a.ipv6, a.mac, a.sandbox_id, a.ifname, a.gateway, a.node) == (
        "a",
        NID,
        "198.51.100.2/24",
        "2001:db8:1::2/64",
        "02:42:c6:33:64:02",
        "sba",
        "eth0",
        True,
        "node1",
    )
    assert a.ports == [{"host_port": 8080, "container_port": 80, "protocol": "tcp", "host_ip": None}]
    assert "d" * 64 not in eps  # not on an adopted bridge
    sbs = {s.id: s for s in p.sandboxes}
    assert sbs["sba"].endpoints == [EID_A, "c" * 64] and sbs["sba"].hostname == "app"
    assert sbs["sba"].netns == "/run/netns/lns-x-a" and sbs["sba"].owned
    assert sbs["sbb"].endpoints == [EID_B] and sbs["sbb"].hostname is None
    assert any("overlay network 999999999999" in s for s in p.skipped)
    assert any("endpoint b (dddddddddddd)" in s for s in p.skipped)
    [external] = [s for s in p.skipped if "lnveeeeeeeeeeee" in s]
    assert "endpoint x (eeeeeeeeeeee)" in external and "not a namespace this instance created" in external


def test_parse_port_rule_reads_what_port_rules_writes() -> None:
    rules = port_rules(8080, "198.51.100.2", 80, "tcp", "br", "203.0.113.1")
    [pre] = [expr for chain, expr in rules if chain == "prerouting"]
    assert parse_port_rule(pre) == {
        "host_port": 8080,
        "container_port": 80,
        "protocol": "tcp",
        "host_ip": "203.0.113.1",
    }
    assert parse_port_rule([{"accept": None}]) is None


def test_hostname_from_the_hosts_file(tmp_path) -> None:
    d = tmp_path / "sandboxes" / "sba"
    d.mkdir(parents=True)
    (d / "hosts").write_text("127.0.0.1\tlocalhost\n198.51.100.2\tapp a\n")
    assert read_hostname(str(tmp_path), "sba", ["198.51.100.2/24"]) == "app"
    (d / "hosts").write_text("198.51.100.2\tep-sba\n")
    assert read_hostname(str(tmp_path), "sba", ["198.51.100.2/24"]) is None
    assert read_hostname(str(tmp_path), "nope", []) is None


async def test_adopted_records_serve_the_controller(tmp_path) -> None:
    """Written through repository and IPAM: a reconcile removes nothing, a new
    connect gets a fresh address, and adopting again adds nothing."""
    store = MemoryStore()
    repo, ipam = Repository(store, store), StoreIpam(store, store)
    report = await write(plan(_kernel_state(), INST, "node1"), repo, ipam, INST)
    assert sorted(report.networks) == ["quiet", "web"] and len(report.endpoints) == 3
    assert len(report.sandboxes) == 2
    again = await write(plan(_kernel_state(), INST, "node1"), repo, ipam, INST)
    assert again.networks == again.endpoints == again.sandboxes == [] and len(again.kept) == 7

    ns = FakeNamespaces()
    ns.paths |= {"/run/netns/lns-x-a", "/run/netns/lns-x-b"}
    ns.owners.update({"/run/netns/lns-x-a": "sba", "/run/netns/lns-x-b": "sbb"})
    driver = FakeDriver("bridge")
    driver.networks |= {NID, "2" * 64}
    ctl = Controller(
        Config(state_dir=str(tmp_path), instance_id=INST, node_name="node1"),
        store=store,
        ipam=ipam,
        drivers={"bridge": driver},
        namespaces=ns,
    )
    await ctl.start()
    try:
        r = await ctl.reconcile()
        assert r.removed == [] and r.repaired == [], r
        sb = await ctl.create_sandbox("sbc")
        ep = await ctl.connect("web", sb.id)
        assert ep.ipv4 not in ("198.51.100.1/24", "198.51.100.2/24", "198.51.100.3/24")
        assert ep.ipv6 not in ("2001:db8:1::1/64", "2001:db8:1::2/64", "2001:db8:1::3/64")
        other = await ctl.create_sandbox("sbd")
        with pytest.raises(NameInUse, match="already in use"):
            await ctl.connect("web", other.id, name="a")
    finally:
        await ctl.close()


# --- endpoint rm / inspect: API and CLI ------------------------------------------


async def _controller(tmp_path) -> Controller:
    store = MemoryStore()
    ctl = Controller(
        Config(state_dir=str(tmp_path)),
        store=store,
        ipam=StoreIpam(store),
        drivers={"bridge": FakeDriver("bridge")},
        namespaces=FakeNamespaces(),
    )
    return await ctl.start()


async def test_endpoint_delete_force_and_names(tmp_path) -> None:
    ctl = await _controller(tmp_path)
    async with TestClient(TestServer(make_app(AgentState(ctl, "n", Metrics())))) as client:
        await ctl.create_network("web", ipv4_subnet="198.51.100.0/24", ipv6=False)
        await ctl.create_network("db", ipv4_subnet="198.51.101.0/24", ipv6=False)
        sb = await ctl.create_sandbox("s1")
        joined = await ctl.connect("web", sb.id, name="app")
        await ctl.create_endpoint("db", "app")
        r = await client.get("/v1/endpoints/app")
        assert r.status == 409 and "2 endpoints are named 'app'" in (await r.json())["error"]["message"]
        r = await client.get("/v1/endpoints/app?network=web")
        assert r.status == 200 and (await r.json())["id"] == joined.id
        r = await client.delete(f"/v1/endpoints/{joined.id}")
        assert r.status == 409, "joined: leave first, unless forced"
        assert (await client.delete(f"/v1/endpoints/{joined.id}?force=maybe")).status == 400
        assert (await client.delete(f"/v1/endpoints/{joined.id}?forse=1")).status == 400
        assert (await client.delete(f"/v1/endpoints/{joined.id}?force=1")).status == 204
        assert (await ctl.sandbox(sb.id)).endpoints == []
        assert (await client.delete("/v1/endpoints/app")).status == 204  # now unique by name
        assert await ctl.endpoints() == []
        assert (await client.delete("/v1/endpoints/app")).status == 404
    await ctl.close()


def test_cli_endpoint_inspect_and_rm(served) -> None:
    path, ctl, call = served
    call(ctl.create_network("web", ipv4_subnet="198.51.100.0/24", ipv6=False))
    stuck = call(ctl.create_endpoint("web", "stuck"))
    runner = CliRunner()
    r = runner.invoke(cli, ["--socket", path, "endpoint", "inspect", "stuck"])
    assert r.exit_code == 0 and stuck.id in r.output and "not joined" in r.output and "198.51.100.2/24" in r.output
    r = runner.invoke(cli, ["--socket", path, "endpoint", "inspect", stuck.id[:8], "--json"])
    assert r.exit_code == 0 and json.loads(r.output)[0]["id"] == stuck.id
    sb = call(ctl.create_sandbox("s1"))
    joined = call(ctl.connect("web", sb.id, name="app"))
    r = runner.invoke(cli, ["--socket", path, "endpoint", "rm", "stuck", "app", "nope"])
    assert r.exit_code == 1, r.output
    assert "stuck\napp\n" in r.output and "endpoint nope: no such endpoint" in r.output and "1 of 3" in r.output
    assert call(ctl.endpoints()) == [] and call(ctl.sandbox(sb.id)).endpoints == []
    assert joined.id not in {e.id for e in call(ctl.endpoints())}
    r = runner.invoke(cli, ["--socket", path + ".gone", "endpoint", "rm", "x"])
    assert r.exit_code == 3 and "cannot reach the libnet agent" in r.output


def test_cli_network_rm_tries_every_name(served) -> None:
    """``network rm a b c`` removes what it can and reports each failure (issue 14, fault 8)."""
    path, ctl, call = served
    for name, subnet in (("a", "198.51.100.0/26"), ("b", "198.51.100.64/26"), ("c", "198.51.100.128/26")):
        call(ctl.create_network(name, ipv4_subnet=subnet, ipv6=False))
    sb = call(ctl.create_sandbox("s1"))
    call(ctl.connect("b", sb.id))
    runner = CliRunner()
    r = runner.invoke(cli, ["--socket", path, "network", "rm", "a", "b", "nope", "c"])
    assert r.exit_code == 1, r.output
    assert "a\n" in r.output and "c\n" in r.output and "network b: network b still has endpoints" in r.output
    assert "network nope: no such network" in r.output and "2 of 4 network(s) not removed: b, nope" in r.output
    assert [n.name for n in call(ctl.networks())] == ["b"]
    r = runner.invoke(cli, ["--socket", path, "network", "rm"])
    assert r.exit_code == 2  # usage error
