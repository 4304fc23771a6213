"""Encrypted overlays without root: records, keys, backends with fakes, the tunnel's order and peers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import os
import shutil
import stat
import subprocess
from typing import Any

import pytest

from libnet.encryption import backend as wgbackend
from libnet.encryption import fence, keys
from libnet.encryption.backend import WgConfig, WgPeer
from libnet.encryption.kernel_backend import KernelBackend
from libnet.encryption.records import (
    NodeKey,
    P,
    claim_address,
    endpoint,
    nodes_prefix,
    revoked_prefix,
    slot_owner,
    tunnel_range,
)
from libnet.encryption.tunnel import GUARD_KEY, Tunnel, forget, revoke, wireguard_overhead
from libnet.errors import BadRequest, Conflict, InvalidOption, LibnetError, Unavailable
from libnet.kernel import firewall
from libnet.kernel.netlink import RTN_UNREACHABLE
from libnet.ownership import ROUTE_PROTO, firewall_table
from libnet.store import open_store
from libnet.testing.fake_kernel import FakeKernel

KEYS = [base64.b64encode(bytes([i]) * 32).decode() for i in range(1, 6)]
INSTANCE = "0123456789ab"


# --- records -------------------------------------------------------------------------


async def test_tunnel_addresses_are_claimed_once_per_node_and_never_twice() -> None:
    store = open_store("memory://")
    a = await claim_address(store, "198.51.100.240/29", "h1")
    assert await claim_address(store, "198.51.100.240/29", "h1") == a  # the same again
    others = {await claim_address(store, "198.51.100.240/29", f"n{i}") for i in range(5)}
    assert a not in others and len(others) == 5  # 6 usable addresses in a /29
    with pytest.raises(Unavailable):
        await claim_address(store, "198.51.100.240/29", "one-too-many")
    await forget(store, "n0")  # an address freed is given out again
    assert await claim_address(store, "198.51.100.240/29", "one-too-many")


def test_tunnel_range_is_checked() -> None:
    with pytest.raises(BadRequest):
        tunnel_range("198.51.100.0/31")
    with pytest.raises(BadRequest):
        tunnel_range("not-a-range")
    assert str(tunnel_range("2001:db8:ee::/64")) == "2001:db8:ee::/64"


def test_node_record_round_trip_and_endpoints() -> None:
    rec = NodeKey("h1", KEYS[0], endpoint("2001:db8:ffff::11", 51820), "198.51.100.241")
    assert rec.endpoint == "[2001:db8:ffff::11]:51820"
    assert NodeKey.decode(rec.encode()) == rec
    from libnet import model

    with pytest.raises(BadRequest):
        NodeKey.decode(model.encode("wireguard_node", {"node": "h1"}))


def test_overhead_is_derived_from_the_underlay_family() -> None:
    assert wireguard_overhead("203.0.113.1") == 60
    assert wireguard_overhead("2001:db8:ffff::1") == 80


# --- keys ------------------------------------------------------------------------------


def test_check_key() -> None:
    assert keys.check_key(KEYS[0]) == KEYS[0]
    for bad in ("", "abc", base64.b64encode(b"x" * 31).decode(), "!" * 44):
        with pytest.raises(BadRequest):
            keys.check_key(bad)


@pytest.mark.skipif(shutil.which("wg") is None, reason="wireguard-tools missing")
def test_private_key_is_made_once_with_mode_0600(tmp_path) -> None:
    private, public = keys.load_or_make(str(tmp_path / "wg"))
    path = tmp_path / "wg" / keys.KEY_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert keys.load_or_make(str(tmp_path / "wg")) == (private, public)
    os.chmod(path, 0o644)  # loosened by hand: tightened again
    keys.load_or_make(str(tmp_path / "wg"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert public != private and keys.check_key(public)


# --- configuration and rules -----------------------------------------------------------


def test_config_renders_every_peer() -> None:
    conf = WgConfig(KEYS[0], 51820, (WgPeer(KEYS[1], "203.0.113.12:51820", ("198.51.100.242/32",)),))
    text = conf.render()
    assert f"PrivateKey = {KEYS[0]}" in text and "ListenPort = 51820" in text
    assert f"PublicKey = {KEYS[1]}" in text and "AllowedIPs = 198.51.100.242/32" in text
    assert "PersistentKeepalive = 25" in text  # a restarted interface handshakes with every peer at once


def test_guard_rule_drops_the_tunnel_range_leaving_elsewhere() -> None:
    [(chain, expr)] = firewall.tunnel_guard_rules("198.51.100.240/28", ["lnwabc"])
    assert chain == "egress" and firewall.CHAINS["egress"] == ("filter", "output", 0)
    assert expr[0]["match"]["right"] == {"prefix": {"addr": "198.51.100.240", "len": 28}}
    assert expr[1]["match"]["op"] == "!=" and expr[1]["match"]["right"] == {"set": ["lnwabc", "lo"]}
    assert expr[-1] == {"drop": None}
    [(_, expr6)] = firewall.tunnel_guard_rules("2001:db8:ee::/64", ["lnwabc", "lnwabcb"])
    assert expr6[1]["match"]["right"] == {"set": ["lnwabc", "lnwabcb", "lo"]}
    assert expr6[0]["match"]["left"]["payload"]["protocol"] == "ip6"
    with pytest.raises(BadRequest):
        firewall.tunnel_guard_rules("nope", ["lnwabc"])


def test_backend_choice_says_why(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(wgbackend, "MODULE_DIR", str(tmp_path))  # "the module is loaded"
    chosen, why = wgbackend.choose(None, str(tmp_path))
    assert chosen is not None and chosen.name == "kernel" and "module" in why
    monkeypatch.setattr(wgbackend, "MODULE_DIR", str(tmp_path / "absent"))
    monkeypatch.setattr(wgbackend.shutil, "which", lambda name: None)
    chosen, why = wgbackend.choose(None, str(tmp_path))
    assert chosen is None and "wireguard-go" in why


# --- the kernel backend, with fake netlink ----------------------------------------------


class FakeAttrs:
    def __init__(self, **attrs: Any) -> None:
        self.attrs = attrs

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)


class FakeIpr:
    def __init__(self, links: dict[str, int]) -> None:
        self.links = links

    def link_lookup(self, ifname: str) -> list[int]:
        return [self.links[ifname]] if ifname in self.links else []

    def link(self, op: str, **kw: Any) -> None:
        if op == "add":
            assert kw["kind"] == "wireguard"
            self.links[kw["ifname"]] = len(self.links) + 10
        elif op == "del":
            self.links = {k: v for k, v in self.links.items() if v != kw["index"]}

    def close(self) -> None:
        pass


class FakeWg:
    def __init__(self) -> None:
        self.peers: dict[str, dict[str, Any]] = {KEYS[4]: {}}  # a stale one
        self.device: dict[str, Any] = {}

    def info(self, ifname: str) -> list[FakeAttrs]:
        raw = [FakeAttrs(WGPEER_A_PUBLIC_KEY=base64.b64decode(k)) for k in self.peers]
        return [FakeAttrs(WGDEVICE_A_PEERS=raw)]

    def set(self, ifname: str, private_key: str | None = None, listen_port: int | None = None, peer=None) -> None:
        if peer is None:
            self.device = {"private_key": private_key, "listen_port": listen_port}
        elif peer.get("remove"):
            self.peers.pop(peer["public_key"])
        else:
            self.peers[peer["public_key"]] = peer

    def close(self) -> None:
        pass


def test_kernel_backend_sets_exactly_the_desired_peers() -> None:
    links: dict[str, int] = {}
    ipr, wg = FakeIpr(links), FakeWg()
    kb = KernelBackend("h1", ipr=lambda ns: ipr, wg=lambda ns: wg)
    assert not kb.alive("lnwx")
    kb.create("lnwx")
    assert kb.alive("lnwx")
    peers = (
        WgPeer(KEYS[1], "203.0.113.12:51820", ("198.51.100.242/32",)),
        WgPeer(KEYS[2], "[2001:db8:ffff::13]:51820", ("198.51.100.243/32",)),
    )
    kb.configure("lnwx", WgConfig(KEYS[0], 51820, peers))
    assert wg.device == {"private_key": KEYS[0], "listen_port": 51820}
    assert set(wg.peers) == {KEYS[1], KEYS[2]}  # the stale peer removed
    assert wg.peers[KEYS[2]]["endpoint_addr"] == "2001:db8:ffff::13" and wg.peers[KEYS[2]]["endpoint_port"] == 51820
    assert wg.peers[KEYS[1]]["replace_allowed_ips"] and wg.peers[KEYS[1]]["allowed_ips"] == ["198.51.100.242/32"]
    assert wg.peers[KEYS[1]]["persistent_keepalive"] == 25
    kb.delete("lnwx")
    assert not kb.alive("lnwx")


def test_backends_report_each_peers_latest_handshake(tmp_path) -> None:
    """``latest-handshake`` per peer (Unix seconds, 0: never): what ``agent status`` shows as handshake ages."""
    wg = FakeWg()
    wg.info = lambda ifname: [  # type: ignore[method-assign]
        FakeAttrs(
            WGDEVICE_A_PEERS=[
                FakeAttrs(
                    WGPEER_A_PUBLIC_KEY=base64.b64decode(KEYS[1]), WGPEER_A_LAST_HANDSHAKE_TIME={"tv_sec": 1700000000}
                ),
                FakeAttrs(WGPEER_A_PUBLIC_KEY=base64.b64decode(KEYS[2]), WGPEER_A_LAST_HANDSHAKE_TIME={"tv_sec": 0}),
            ]
        )
    ]
    kb = KernelBackend("h1", ipr=lambda ns: FakeIpr({}), wg=lambda ns: wg)
    assert kb.handshakes("lnwx") == {KEYS[1]: 1700000000.0, KEYS[2]: 0.0}

    def run(argv: list[str], **kw: Any) -> Any:
        assert argv == ["wg", "show", "lnwx", "latest-handshakes"]
        return subprocess.CompletedProcess(argv, 0, f"{KEYS[1]}\t1700000000\n{KEYS[2]}\t0\n", "")

    us = wgbackend.UserspaceBackend(None, str(tmp_path), run=run)
    assert us.handshakes("lnwx") == {KEYS[1]: 1700000000.0, KEYS[2]: 0.0}


def test_wg_that_does_not_answer_is_unavailable_not_a_crash(tmp_path) -> None:
    """Breaker (issue 20): ``wg`` not answering within its timeout raised ``subprocess.TimeoutExpired``,
    which neither the supervision nor the records' watch handles: the task ended, and a killed
    ``wireguard-go`` was never brought back.  It is ``Unavailable`` now, which they retry."""

    def run(argv: list[str], **kw: Any) -> Any:
        raise subprocess.TimeoutExpired(argv, kw["timeout"])

    us = wgbackend.UserspaceBackend(None, str(tmp_path), run=run)
    for call in (
        lambda: us.configure("lnwx", wgbackend.WgConfig(KEYS[0], 51820)),
        lambda: us.rx_bytes("lnwx"),
        lambda: us.handshakes("lnwx"),
    ):
        with pytest.raises(Unavailable, match="no answer within 10 s"):
            call()


def test_stopping_removes_a_killed_wireguard_gos_socket(monkeypatch, tmp_path) -> None:
    """Breaker (issue 20): a ``wireguard-go`` killed with SIGKILL (by the stop, after SIGTERM went unanswered,
    or by anyone) left ``/var/run/wireguard/<ifname>.sock`` behind, after ``--leave``/``--purge`` too."""
    import socket

    monkeypatch.setattr(wgbackend, "SOCKET_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    dead = tmp_path / "run" / "lnwdead.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(dead))  # bound, never listening: what a killed process leaves
    live = tmp_path / "run" / "lnwlive.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(live))
        s.listen()
        us = wgbackend.UserspaceBackend(None, str(tmp_path / "state"))
        us.delete("lnwdead")
        us.delete("lnwlive")  # someone answers there: not removed
        assert not dead.exists() and live.exists()


# --- the tunnel, with a fake kernel and backend ------------------------------------------


class FakeBackend:
    name = "fake"

    def __init__(self, kernel: FakeKernel, ns: str | None, log: list[str]) -> None:
        self.kernel, self.ns, self.log = kernel, ns, log
        self.configs: list[WgConfig] = []
        self.by_ifname: dict[str, WgConfig] = {}
        self.rx: dict[str, int] = {}
        self.seen: dict[str, float] = {}  # public key -> latest handshake (Unix seconds), any interface
        self.dead = False

    def handshakes(self, ifname: str) -> dict[str, float]:
        return {p.public_key: self.seen.get(p.public_key, 0.0) for p in self.by_ifname[ifname].peers}

    def describe(self, ifname: str) -> dict[str, Any]:
        return {"backend": self.name}

    def rx_bytes(self, ifname: str) -> int:
        return self.rx.get(ifname, 0)

    def alive(self, ifname: str) -> bool:
        return not self.dead and self.kernel.netlink(self.ns).has_link(ifname)

    def create(self, ifname: str) -> None:
        self.log.append("create")
        if not self.alive(ifname):
            with self.kernel.netlink(self.ns) as nl:
                if nl.has_link(ifname):
                    nl.delete_link(ifname)
            self.kernel.add_link(self.ns, ifname, "tun")
            self.dead = False

    def configure(self, ifname: str, config: WgConfig) -> None:
        self.configs.append(config)
        self.by_ifname[ifname] = config

    def delete(self, ifname: str) -> None:
        self.log.append("delete")
        with self.kernel.netlink(self.ns) as nl:
            if nl.has_link(ifname):
                nl.delete_link(ifname)


def make_tunnel(
    kernel: FakeKernel, store: Any, log: list[str], tmp_path, node: str = "h1", instance: str = INSTANCE
) -> Tunnel:
    ns = None if node == "h1" else kernel.add_namespace(node) and node
    real = kernel.firewall(ns, firewall_table(instance))
    real_add = real.add

    class Fw:
        table = real.table

        def add(self, key: str, rules: Any) -> None:
            log.append("guard")
            real_add(key, rules)

        def remove(self, key: str) -> None:
            real.remove(key)

        def rules(self) -> list[dict[str, Any]]:
            return real.rules()

        def close(self) -> None:
            pass

    if node == "h1":
        kernel.firewall = lambda ns, table: Fw()  # type: ignore[method-assign,assignment,return-value]
    return Tunnel(
        node=node,
        vtep="203.0.113.11",
        host_ns=ns,
        state_dir=str(tmp_path / node),
        instance=instance,
        store=store,
        kernel=kernel,
        backend=FakeBackend(kernel, ns, log),
        reason="a fake",
        underlay_mtu=lambda: 1500,
        range_="198.51.100.240/28",
        check_interval=0.02,
    )


async def until(predicate: Any, timeout: float = 3.0) -> bool:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return False


async def tunnel_beside_h2(monkeypatch: Any, tmp_path: Any) -> tuple[FakeKernel, Any, list[str], Tunnel, FakeBackend]:
    """A tunnel for h1 (not up yet) with h2's record in the store: (kernel, store, log, tunnel, backend)."""
    monkeypatch.setattr(keys, "load_or_make", lambda d, slot=0: (KEYS[0], KEYS[1]))
    kernel, store, log = FakeKernel(), open_store("memory://"), []
    await store.put(nodes_prefix() + "h2", NodeKey("h2", KEYS[2], "203.0.113.12:51820", "198.51.100.250").encode())
    tunnel = make_tunnel(kernel, store, log, tmp_path)
    assert isinstance(tunnel.backend, FakeBackend)
    return kernel, store, log, tunnel, tunnel.backend


async def test_tunnel_guards_first_then_follows_records_and_revocations(monkeypatch, tmp_path) -> None:
    kernel, store, log, tunnel, backend = await tunnel_beside_h2(monkeypatch, tmp_path)
    addr = await tunnel.ensure()
    try:
        assert log[:2] == ["guard", "create"]  # never an interface before the rule against clear text
        with kernel.netlink(None) as nl:
            link = nl.link(tunnel.ifname)
            assert link.up and link.mtu == 1440 and f"{addr}/32" in nl.addresses(tunnel.ifname)
        # the one route into the tunnel range: through the interface, from the tunnel address
        assert kernel.namespace(None).prefix_routes["198.51.100.240/28"] == (link.index, addr)
        assert NodeKey.decode((await store.get(nodes_prefix() + "h1")).value).public_key == KEYS[1]
        assert [p.public_key for p in backend.configs[-1].peers] == [KEYS[2]]
        assert backend.configs[-1].peers[0].allowed_ips == ("198.51.100.250/32",)
        # a new host appears: a peer at once
        await store.put(nodes_prefix() + "h3", NodeKey("h3", KEYS[3], "203.0.113.13:51820", "198.51.100.251").encode())
        assert await until(lambda: len(backend.configs[-1].peers) == 2)
        # revoked: dropped everywhere, also when it publishes a new key
        await revoke(store, "h3")
        assert await until(lambda: [p.public_key for p in backend.configs[-1].peers] == [KEYS[2]])
        await store.put(nodes_prefix() + "h3", NodeKey("h3", KEYS[4], "203.0.113.13:51820", "198.51.100.251").encode())
        await asyncio.sleep(0.1)
        assert [p.public_key for p in backend.configs[-1].peers] == [KEYS[2]]
        assert tunnel.status()["revoked"] == ["h3"] and tunnel.status()["peers"] == ["h2"]
        # the interface dies: brought back with address and peers
        backend.dead = True
        with kernel.netlink(None) as nl:
            nl.delete_link(tunnel.ifname)
        assert await until(lambda: tunnel.restarts >= 1)
        with kernel.netlink(None) as nl:
            assert nl.link(tunnel.ifname).up and f"{addr}/32" in nl.addresses(tunnel.ifname)
        assert "198.51.100.240/28" in kernel.namespace(None).prefix_routes
        # set down by hand: up again
        with kernel.netlink(None) as nl:
            nl.set_down(tunnel.ifname)
        assert await until(lambda: tunnel.restarts >= 2)
        await tunnel.close()  # the agent stops: the interface stays (the next agent adopts it)
        assert log[-1] != "delete" and backend.alive(tunnel.ifname)
    finally:
        await tunnel.close(stop=True)  # leaving the cluster: it goes
    assert log[-1] == "delete"
    assert GUARD_KEY in kernel.firewall(None, firewall_table(INSTANCE)).table.groups  # type: ignore[attr-defined]


async def test_supervision_puts_back_a_flushed_guard_within_a_round(monkeypatch, tmp_path) -> None:
    """Breaker (issue 20): a flushed ruleset (``nft flush ruleset``, a firewall service's reload) left the
    tunnel without its guard and the encrypted VNIs without their entry guard until the next anti-entropy
    pass; the supervision puts them back within a round, and not the guard of a VNI no longer served."""
    kernel, _, _, tunnel, _ = await tunnel_beside_h2(monkeypatch, tmp_path)
    await tunnel.ensure()
    groups = kernel.firewall(None, firewall_table(INSTANCE)).table.groups  # type: ignore[attr-defined]
    try:
        tunnel.guard_vni(300, 4789)
        tunnel.guard_vni(301, 4789)
        tunnel.unguard_vni(301)
        wanted = {GUARD_KEY, f"{GUARD_KEY}:vni:300"}
        assert set(groups) == wanted
        groups.clear()  # the ruleset flushed
        assert await until(lambda: set(groups) == wanted, 1.0)
        groups[f"{GUARD_KEY}:vni:300"] = groups[f"{GUARD_KEY}:vni:300"][:1]  # one rule of a group deleted
        assert await until(lambda: len(groups[f"{GUARD_KEY}:vni:300"]) == 2, 1.0)
        assert set(groups) == wanted
        groups[f"{GUARD_KEY}:vni:302"] = firewall.encrypted_vni_rules(302, 4789, ["lnwx"])  # a leftover: swept
        groups[f"{GUARD_KEY}:vni:303"] = firewall.encrypted_vni_rules(303, 4789, ["lnwx"])  # its device is left
        assert tunnel.sweep_vni_guards(lambda vni: vni == 303) == [302]
        assert set(groups) == {*wanted, f"{GUARD_KEY}:vni:303"}
    finally:
        await tunnel.close(stop=True)


async def test_supervision_survives_an_unexpected_error(monkeypatch, tmp_path) -> None:
    """Breaker (issue 20): an error the supervision did not expect ended it for good; it goes on."""
    kernel, _, _, tunnel, backend = await tunnel_beside_h2(monkeypatch, tmp_path)
    await tunnel.ensure()
    try:
        real_alive, calls = backend.alive, []

        def flaky(ifname: str) -> bool:
            calls.append(ifname)
            if len(calls) == 1:
                raise RuntimeError("something unexpected")
            return real_alive(ifname)

        monkeypatch.setattr(backend, "alive", flaky)
        assert await until(lambda: len(calls) >= 1)
        backend.dead = True  # then wireguard-go dies: still brought back
        with kernel.netlink(None) as nl:
            nl.delete_link(tunnel.ifname)
        assert await until(lambda: tunnel.restarts >= 1)
    finally:
        await tunnel.close(stop=True)


async def test_a_start_after_a_crash_mid_rotation_drops_the_other_slots_identity(monkeypatch, tmp_path) -> None:
    """Breaker (issue 20): an agent killed during a key rotation's drain (switched to slot 1, slot 0 not yet
    retired) came back on slot 1 but kept slot 0's private key file and tunnel address claim for ever."""
    _, store, _, tunnel, _ = await tunnel_beside_h2(monkeypatch, tmp_path)
    wgdir = tmp_path / "h1" / "wireguard"
    wgdir.mkdir(parents=True)
    (wgdir / "private.key").write_text(KEYS[4] + "\n")  # the retired key, slot 0
    tunnel.write_current(1)
    old = await claim_address(store, tunnel.range, slot_owner("h1", 0))
    await tunnel.ensure()
    try:
        assert tunnel.current == 1 and tunnel.address != old
        assert not (wgdir / "private.key").exists()
        owners = {p.value.decode() for p in await store.list(f"{P}/addresses/")}
        assert owners == {slot_owner("h1", 1)}
    finally:
        await tunnel.close(stop=True)


async def test_no_backend_refuses_encrypted_networks(tmp_path) -> None:
    kernel, store, log = FakeKernel(), open_store("memory://"), []
    tunnel = make_tunnel(kernel, store, log, tmp_path)
    tunnel.backend, tunnel.reason = None, "no wireguard here"
    with pytest.raises(Unavailable, match="no wireguard here"):
        await tunnel.ensure()
    assert log == []  # nothing touched


# --- the driver's option ------------------------------------------------------------------


def test_encrypted_option_forms() -> None:
    from libnet.drivers.overlay.driver import OverlayDriver

    d = OverlayDriver(kernel=FakeKernel())
    for value, want in (("", True), ("true", True), ("1", True), (True, True), ("false", False), ("0", False)):
        assert d.parse_network_options({"encrypted": value})["encrypted"] is want
    assert d.parse_network_options({})["encrypted"] is False
    with pytest.raises(InvalidOption):
        d.parse_network_options({"encrypted": "maybe"})


# --- rotation: two hosts' tunnels on one fake kernel ----------------------------------------


async def test_rotation_prepares_beside_switches_in_one_step_then_retires(monkeypatch, tmp_path) -> None:
    from libnet.encryption import rotation

    made = iter(KEYS[2:])
    monkeypatch.setattr(keys, "load_or_make", lambda d, slot=0: (KEYS[0] if "/h1/" in d else KEYS[1],) * 2)
    monkeypatch.setattr(keys, "make_new", lambda d, slot: (next(made),) * 2)
    kernel, store, log = FakeKernel(), open_store("memory://"), []
    h1 = make_tunnel(kernel, store, log, tmp_path)
    h2 = make_tunnel(kernel, store, [], tmp_path, node="h2", instance="ba9876543210")
    a1, a2 = await h1.ensure(), await h2.ensure()
    switched: list[str | None] = []

    async def on_switch() -> None:
        # at the switch: h2 already accepts the new key, the old slot is still up beside the new one
        switched.append(h1.address)
        assert h1.public_key in {p.public_key for p in h2.config(h2.slots[0]).peers}
        assert len({p.public_key for p in h2.config(h2.slots[0]).peers}) == 2  # the old key too
        assert len(h1.live) == 2

    h1.switch_listeners.append(on_switch)
    b1 = h1.backend
    assert isinstance(b1, FakeBackend)
    try:
        out = await rotation.rotate(h1, idle=0.05, min_drain=0.1, drain_max=2)
        assert out["public_key"] == KEYS[2] and out["interface"] == h1.slots[1].ifname and out["drained"]
        assert switched == [out["tunnel_address"]] and out["tunnel_address"] not in (a1, a2)
        assert b1.by_ifname[h1.slots[1].ifname].listen_port == 51821
        with kernel.netlink(None) as nl:
            new = nl.link(h1.slots[1].ifname)
            assert kernel.namespace(None).prefix_routes["198.51.100.240/28"] == (new.index, out["tunnel_address"])
            assert not nl.has_link(h1.slots[0].ifname)  # retired
        rec = NodeKey.decode((await store.get(nodes_prefix() + "h1")).value)
        assert rec.public_key == KEYS[2] and rec.others == () and rec.tunnel == out["tunnel_address"]
        assert await until(lambda: [p.public_key for p in h2.config(h2.slots[0]).peers] == [KEYS[2]])
        assert [p.public_key for p in b1.by_ifname[h1.slots[1].ifname].peers] == [KEYS[1]]
        assert h1.status()["rotations"] == 1 and (tmp_path / "h1" / "wireguard" / "current-slot").read_text() == "1\n"
        # and back to the first slot
        await rotation.rotate(h1, idle=0.05, min_drain=0.1, drain_max=2)
        assert h1.current == 0 and h1.public_key == KEYS[3]
    finally:
        await h1.close()
        await h2.close()


async def test_rotation_without_every_acknowledgement_is_undone(monkeypatch, tmp_path) -> None:
    from libnet.encryption import rotation

    monkeypatch.setattr(keys, "load_or_make", lambda d, slot=0: (KEYS[0], KEYS[1]))
    monkeypatch.setattr(keys, "make_new", lambda d, slot: (KEYS[2], KEYS[3]))
    kernel, store, log = FakeKernel(), open_store("memory://"), []
    # a host whose agent does not run: a record, never an acknowledgement
    await store.put(nodes_prefix() + "h9", NodeKey("h9", KEYS[4], "203.0.113.19:51820", "198.51.100.250").encode())
    h1 = make_tunnel(kernel, store, log, tmp_path)
    addr = await h1.ensure()
    try:
        with pytest.raises(Unavailable, match="h9"):
            await rotation.rotate(h1, ack_timeout=0.3)
        assert h1.current == 0 and h1.address == addr and h1.live == {0}
        with kernel.netlink(None) as nl:
            assert not nl.has_link(h1.slots[1].ifname)
        rec = NodeKey.decode((await store.get(nodes_prefix() + "h1")).value)
        assert rec.public_key == KEYS[1] and rec.others == ()
        # Serf says h9 is gone (failed past the grace period): no longer awaited, the rotation goes through
        h1.gone = lambda node: node == "h9"
        done = await rotation.rotate(h1, ack_timeout=0.3, idle=0.01, min_drain=0.01)
        assert h1.current == 1 and done["public_key"] == KEYS[3]
    finally:
        await h1.close()


async def test_a_join_waits_for_a_working_tunnel_to_each_peer_host(monkeypatch, tmp_path) -> None:
    """Issue 20: a host joins an encrypted network only with a working tunnel to each peer host on it
    (an echo to its tunnel address answered through WireGuard)."""
    import time

    from libnet.errors import IncompatibleTunnel, TunnelDown

    _, store, _, h1, backend = await tunnel_beside_h2(monkeypatch, tmp_path)
    answering: set[str] = set()
    h1.probe = lambda ns, address, timeout: address in answering
    await h1.ensure()
    h1.handshake_timeout = 0.3
    try:
        with pytest.raises(TunnelDown, match=r"h2: its tunnel address 198\.51\.100\.250 does not .*no handshake yet"):
            await h1.await_peers({"h2"}, "sec")
        # a peer host with endpoints but no key record at all is named too
        with pytest.raises(TunnelDown, match="h7: published no WireGuard key") as err:
            await h1.await_peers({"h2", "h7"})
        assert err.value.ids["nodes"] == ["h2", "h7"]
        # a handshake seen minutes ago proves nothing now (the peer may have died since): named with its age
        backend.seen[KEYS[2]] = time.time() - 60
        with pytest.raises(TunnelDown, match=r"last handshake 60"):
            await h1.await_peers({"h2"})
        assert (await h1.handshake_ages())["h2"] >= 60
        # the tunnel comes up while the join waits: it goes on
        h1.handshake_timeout = 3

        async def comes_up() -> None:
            await asyncio.sleep(0.2)
            answering.add("198.51.100.250")

        task = asyncio.create_task(comes_up())
        await h1.await_peers({"h2", "h1"})  # this host itself is never awaited
        await task
        # gone and revoked hosts are not awaited
        h1.gone = lambda node: node == "h7"
        await h1.await_peers({"h2", "h7"})
        # a host with another encryption range: refused at once, naming it and both ranges
        await store.put(
            nodes_prefix() + "h3",
            NodeKey("h3", KEYS[3], "203.0.113.13:51820", "198.51.100.200", cidr="198.51.100.192/28").encode(),
        )
        assert await until(lambda: "h3" in h1.status()["incompatible"])
        assert "198.51.100.192/28" in h1.status()["incompatible"]["h3"]
        answering.add("198.51.100.200")
        with pytest.raises(IncompatibleTunnel, match=r"host h3 .*192/28, this host.s 198\.51\.100\.240/28"):
            await h1.await_peers({"h2", "h3"})
        # h3 is set right: compatible again
        await store.put(nodes_prefix() + "h3", NodeKey("h3", KEYS[3], "203.0.113.13:51820", "198.51.100.251",
                                                       cidr="198.51.100.240/28").encode())  # fmt: skip
        assert await until(lambda: not h1.status()["incompatible"])
        answering.add("198.51.100.251")
        await h1.await_peers({"h2", "h3"})
        assert NodeKey.decode((await store.get(nodes_prefix() + "h1")).value).cidr == "198.51.100.240/28"
    finally:
        await h1.close()


def test_moved_vtep_gets_its_new_entries_before_the_old_ones_go(monkeypatch) -> None:
    """A peer whose VTEP moved (a key rotation) must never be without an FDB entry: replace, then delete."""
    from libnet.drivers.overlay.peerdb import Entries
    from libnet.drivers.overlay.plumbing import Plumbing, VxlanDevices
    from libnet.kernel.neighbours import FdbEntry, Neighbour
    from libnet.testing import fake_kernel

    kernel = FakeKernel()
    kernel.add_namespace("ov")
    kernel.add_link("ov", "vxlan0", "vxlan")
    calls: list[str] = []
    for name in ("replace_fdb", "delete_fdb", "replace_neighbours", "delete_neighbours"):
        real = getattr(fake_kernel.FakeNetlink, name)
        monkeypatch.setattr(
            fake_kernel.FakeNetlink, name, lambda self, *a, _n=name, _r=real: (calls.append(_n), _r(self, *a))[1]
        )
    plumbing = Plumbing(None, None, "o", lambda: None, kernel)  # type: ignore[arg-type,return-value]
    monkeypatch.setattr(plumbing, "ns_name", lambda vni: "ov")
    devices = VxlanDevices(plumbing, lambda nid: 1)
    mac = "02:00:c6:33:64:02"
    old, new = FdbEntry(mac, "198.51.100.241"), FdbEntry(mac, "198.51.100.242")
    gone, came = Neighbour("198.51.100.2", mac), Neighbour("198.51.100.3", mac)
    devices.apply("n", Entries({gone}, {old}), Entries({came}, {new}))
    assert calls.index("replace_fdb") < calls.index("delete_fdb")
    assert calls.index("replace_neighbours") < calls.index("delete_neighbours")


def test_userspace_backend_touches_only_what_differs(tmp_path) -> None:
    """A peer that stays is never set again: ``wg set ... allowed-ips`` would leave it without any for a moment."""
    dump = "\t".join([KEYS[0], KEYS[1], "51820", "off"]) + "\n"
    same = [KEYS[2], "(none)", "203.0.113.12:51820", "198.51.100.242/32", "0", "0", "0", "25"]
    stale = [KEYS[3], "(none)", "203.0.113.13:51820", "198.51.100.243/32", "0", "0", "0", "25"]
    dump += "\t".join(same) + "\n" + "\t".join(stale) + "\n"
    calls: list[list[str]] = []

    class Done:
        def __init__(self, stdout: str) -> None:
            self.returncode, self.stdout, self.stderr = 0, stdout, ""

    def run(argv: list[str], **kw: Any) -> Done:
        calls.append(argv)
        return Done(dump if argv[1:3] == ["show", "lnwx"] else "")

    ub = wgbackend.UserspaceBackend(None, str(tmp_path), run=run)
    peers = (
        WgPeer(KEYS[2], "203.0.113.12:51820", ("198.51.100.242/32",)),
        WgPeer(KEYS[4], "203.0.113.14:51821", ("198.51.100.244/32",)),
    )
    ub.configure("lnwx", WgConfig(KEYS[0], 51820, peers))
    assert calls[-1][:3] == ["wg", "set", "lnwx"]
    args = " ".join(calls[-1])
    assert f"peer {KEYS[3]} remove" in args and f"peer {KEYS[4]} endpoint 203.0.113.14:51821" in args
    assert KEYS[2] not in args and "private-key" not in args and "listen-port" not in args
    # nothing differs: no wg set at all
    calls.clear()
    ub.configure("lnwx", WgConfig(KEYS[0], 51820, peers[:1]))
    assert [c[1] for c in calls] == ["show", "set"]  # only the stale peer's removal
    dump = dump.replace("\t".join(stale) + "\n", "")
    calls.clear()
    ub.configure("lnwx", WgConfig(KEYS[0], 51820, peers[:1]))
    assert [c[1] for c in calls] == ["show"]
    # a new private key comes from a 0600 file, never the command line
    ub.configure("lnwx", WgConfig(KEYS[1], 51820, peers[:1]))
    assert KEYS[1] not in " ".join(calls[-1]) and stat.S_IMODE(os.stat(tmp_path / "lnwx.key").st_mode) == 0o600


async def test_keys_rotate_when_they_are_old_enough(monkeypatch, tmp_path) -> None:
    from libnet.encryption import rotation

    made = iter(KEYS[2:])
    monkeypatch.setattr(keys, "load_or_make", lambda d, slot=0: (KEYS[0] if "/h1/" in d else KEYS[1],) * 2)
    monkeypatch.setattr(keys, "make_new", lambda d, slot: (next(made),) * 2)
    kernel, store = FakeKernel(), open_store("memory://")
    h1 = make_tunnel(kernel, store, [], tmp_path)
    h2 = make_tunnel(kernel, store, [], tmp_path, node="h2", instance="ba9876543210")
    await h1.ensure()
    await h2.ensure()
    key_file = tmp_path / "h1" / "wireguard" / keys.KEY_FILE
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text("x\n")
    os.utime(key_file, (1, 1))  # made long ago
    fast = {"ack_timeout": 2.0, "idle": 0.05, "min_drain": 0.1, "drain_max": 1.0}
    real_rotate = rotation.rotate
    monkeypatch.setattr(rotation, "rotate", lambda t: real_rotate(t, **fast))
    task = asyncio.create_task(rotation.rotate_periodically(h1, every=3600, check=0.05))
    try:
        assert await until(lambda: h1.rotations == 1, 5)
        assert h1.public_key == KEYS[2]
        await asyncio.sleep(0.3)
        assert h1.rotations == 1  # the new key is young (no key file here: age 0): no second rotation
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await h1.close()
        await h2.close()


async def test_the_overlay_anti_entropy_repairs_the_tunnel(monkeypatch, tmp_path) -> None:
    """WireGuard peers follow the records like overlay peers, and the same anti-entropy repairs them: drift
    in the interface's peers, a removed guard rule or route, a watch that ended."""
    monkeypatch.setattr(keys, "load_or_make", lambda d, slot=0: (KEYS[0], KEYS[1]))
    kernel, store, log = FakeKernel(), open_store("memory://"), []
    await store.put(nodes_prefix() + "h2", NodeKey("h2", KEYS[2], "203.0.113.12:51820", "198.51.100.250").encode())
    tunnel = make_tunnel(kernel, store, log, tmp_path)
    backend = tunnel.backend
    assert isinstance(backend, FakeBackend)
    await tunnel.ensure()
    try:
        assert await until(lambda: [p.public_key for p in backend.configs[-1].peers] == [KEYS[2]])
        backend.configs.append(dataclasses.replace(backend.configs[-1], peers=()))  # a peer removed by hand
        fw = kernel.firewall(None, firewall_table(INSTANCE))
        fw.table.groups.pop(GUARD_KEY)  # type: ignore[attr-defined]
        kernel.namespace(None).prefix_routes.pop("198.51.100.240/28")
        tunnel._tasks[0].cancel()  # the records' watch ended
        await asyncio.sleep(0)
        assert await tunnel.repair() == ["wireguard record watch restarted"]
        assert [p.public_key for p in backend.configs[-1].peers] == [KEYS[2]]
        assert GUARD_KEY in fw.table.groups  # type: ignore[attr-defined]
        assert "198.51.100.240/28" in kernel.namespace(None).prefix_routes
        await store.put(nodes_prefix() + "h3", NodeKey("h3", KEYS[3], "203.0.113.13:51820", "198.51.100.251").encode())
        assert await until(lambda: len(backend.configs[-1].peers) == 2)  # the restarted watch follows again
    finally:
        await tunnel.close(stop=True)


def test_an_encrypted_vni_enters_and_leaves_only_through_wireguard() -> None:
    """Breaker: clear VXLAN of an encrypted VNI came in from the underlay, and went out in clear to a peer
    whose tunnel address lay outside this host's range (another encryption_range): one rule each way."""
    rules = dict(firewall.encrypted_vni_rules(256, 4789, ["lnwa", "lnwab"]))
    assert set(rules) == {"input", "egress"}
    for chain, key in (("input", "iifname"), ("egress", "oifname")):
        exprs = rules[chain]
        assert exprs[-1] == {"drop": None}
        names = next(
            e["match"]["right"]["set"] for e in exprs if e.get("match", {}).get("left") == {"meta": {"key": key}}
        )
        assert {"lnwa", "lnwab"} <= set(names)
        vni = next(e["match"] for e in exprs if "base" in e.get("match", {}).get("left", {}).get("payload", {}))
        assert vni["left"]["payload"] == {"base": "th", "offset": 96, "len": 24} and vni["right"] == 256


@pytest.mark.parametrize(
    ("address", "refusal"),
    [
        ("198.51.100.243/24", r"holds 198\.51\.100\.243, an address of this host"),
        ("198.51.100.1/24", r"lies in 198\.51\.100\.0/24, a network this host is on"),
    ],
)
async def test_a_range_over_a_host_address_or_its_network_is_refused_before_anything(
    monkeypatch, tmp_path, address: str, refusal: str
) -> None:
    """Breaker: --encryption-range over the underlay (203.0.113.0/28 with the host at .4) was accepted; the
    tunnel's route and guard then cut the host off from its peers.  Breaker (issue 20): so was a range inside
    a network of the host but off its own address (host .1/24, range .240/28): its route then took that
    network's hosts in the range -- peers' WireGuard endpoints too -- into the tunnel itself."""
    monkeypatch.setattr(keys, "load_or_make", lambda d, slot=0: (KEYS[0], KEYS[1]))
    kernel, store, log = FakeKernel(), open_store("memory://"), []
    tunnel = make_tunnel(kernel, store, log, tmp_path)
    kernel.add_link(None, "eth0", "veth")
    with kernel.netlink(None) as nl:
        nl.add_address("eth0", address)
    with pytest.raises(BadRequest, match=refusal):
        await tunnel.ensure()
    assert log == [] and "198.51.100.240/28" not in kernel.namespace(None).prefix_routes
    await tunnel.close(stop=True)


async def test_an_mtu_the_path_cannot_carry_is_refused_where_the_network_is_made(tmp_path) -> None:
    """Breaker: ``-o encrypted -o mtu=9000`` on a 1500 underlay was accepted.  The limit is derived: the
    underlay's 1500 minus VXLAN's 50, and minus WireGuard's 60 on encrypted overlays; plain ones alike."""
    from libnet.driverapi import NetworkInfo
    from libnet.drivers.overlay.driver import OverlayDriver

    kernel, log = FakeKernel(), []
    d = OverlayDriver(
        cluster_store=open_store("memory://"),
        node="h1",
        vtep="203.0.113.11",
        instance=INSTANCE,
        state_dir=str(tmp_path),
        kernel=kernel,
        wireguard=FakeBackend(kernel, None, log),
    )

    def net(**options: Any) -> NetworkInfo:
        opts = d.parse_network_options({k: str(v) for k, v in options.items()})
        return NetworkInfo("n" * 64, "sec", "198.51.100.0/25", "198.51.100.1/25", None, None, False, opts)

    for options, limit in (({"encrypted": True}, 1390), ({}, 1450)):
        await d.check_network(net(mtu=limit, **options))
        for too_big in (limit + 1, 9000):
            with pytest.raises(InvalidOption, match=f"mtu {too_big} is more .* at most {limit}"):
                await d.check_network(net(mtu=too_big, **options))
    assert log == []  # nothing was set up
    await d.close()


async def test_a_refused_range_at_start_is_reported_not_fatal(tmp_path) -> None:
    """Breaker (issue 20): the tunnel's refusal of a bad range (BadRequest) at start escaped the overlay's
    reconcile -- only Conflict and Unavailable were caught -- and so failed the whole agent start, plain
    overlays' repair included.  It is reported as missing, and the rest is reconciled."""
    from libnet.driverapi import EndpointInfo, NetworkInfo, SandboxInfo
    from libnet.drivers.overlay.driver import OverlayDriver

    kernel, log = FakeKernel(), []
    kernel.add_link(None, "eth0", "veth")
    with kernel.netlink(None) as nl:
        nl.add_address("eth0", "203.0.113.11/24")
    d = OverlayDriver(cluster_store=open_store("memory://"), node="h1", vtep="203.0.113.11", instance=INSTANCE,
                      state_dir=str(tmp_path), kernel=kernel, wireguard=FakeBackend(kernel, None, log),
                      encryption_range="203.0.113.128/28")  # fmt: skip
    opts = d.parse_network_options({"encrypted": "true"})
    nw = NetworkInfo("n" * 64, "sec", "198.51.100.0/25", "198.51.100.1/25", None, None, False, opts)
    await d.create_network(nw)
    ep = EndpointInfo("e" * 64, nw.id, "a", "198.51.100.2/25", None, "02:42:c6:33:64:02")
    try:
        report = await d.reconcile([nw], [(ep, SandboxInfo("c1", kernel.add_namespace("sb1"), "eth0"))])
        assert any("lies in 203.0.113.0/24" in line for line in report.missing), report.missing
        assert log == []  # no interface, no guard of a tunnel that cannot work
    finally:
        await d.close()


async def test_revoking_an_unknown_host_is_refused_and_a_revocation_can_be_taken_back(monkeypatch, tmp_path) -> None:
    """Breaker: ``libnet node revoke`` of a name no host has was accepted (a typo revoked nothing and
    marked the name for ever).  And a revoked host re-admitted on purpose (``libnet node unrevoke``)
    publishes its key again by itself, with the tunnel address it kept."""
    from libnet.drivers.overlay.driver import OverlayDriver
    from libnet.errors import NoSuchNode

    _, store, _, h1, _ = await tunnel_beside_h2(monkeypatch, tmp_path)
    d = OverlayDriver(cluster_store=store, node="h2", vtep="203.0.113.12", instance="ba9876543210",
                      state_dir=str(tmp_path / "h2"), kernel=FakeKernel(), wireguard=None)  # fmt: skip
    addr = await h1.ensure()
    try:
        with pytest.raises(NoSuchNode, match="no host 'h1x' is known"):
            await d.revoke_node("h1x")
        assert await store.list(revoked_prefix()) == []
        with pytest.raises(NoSuchNode, match="not revoked"):
            await d.unrevoke_node("h1")
        await d.revoke_node("h1")
        assert await until(lambda: "h1" in h1.revoked and "h1" not in h1.records)
        await d.revoke_node("h1")  # again: still known (by its revocation), nothing changes
        await d.unrevoke_node("h1")
        for _ in range(300):
            with contextlib.suppress(LibnetError):
                if NodeKey.decode((await store.get(nodes_prefix() + "h1")).value).tunnel == addr:
                    break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("h1 did not publish its key again")
    finally:
        await h1.close()
        await d.close()


async def test_leaving_for_good_stops_interfaces_an_earlier_agent_left(monkeypatch, tmp_path) -> None:
    """Breaker: ``libnet-agent --leave`` stopped only interfaces this run had used: a host with no encrypted
    network restored yet kept the wireguard-go an earlier agent started, for ever."""
    _, _, log, h1, backend = await tunnel_beside_h2(monkeypatch, tmp_path)
    for slot in h1.slots:
        backend.create(slot.ifname)  # both slots, as a crash in the middle of a rotation leaves them
    await h1.close()  # a plain stop: they stay
    assert all(backend.alive(s.ifname) for s in h1.slots)
    await h1.close(stop=True)
    assert not any(backend.alive(s.ifname) for s in h1.slots) and log.count("delete") == 2


def test_purge_stops_the_instances_recorded_wireguard_go(tmp_path) -> None:
    """``libnet-agent --purge`` removes everything of the instance: its wireguard-go too (by the pid record in
    the state dir, trusted only while that pid is still ``wireguard-go`` of the interface)."""
    import json
    import subprocess
    import sys

    from libnet.encryption.tunnel import ifname_of
    from libnet.inventory import _stop_wireguard_go

    ifname = ifname_of(INSTANCE)
    # a stand-in process whose command line reads like ``wireguard-go ... <ifname>``
    proc = subprocess.Popen(
        ["bash", "-c", f"exec -a wireguard-go {sys.executable} -c 'import time; time.sleep(60)' {ifname}"]
    )
    try:
        assert until_sync(lambda: wgbackend.UserspaceBackend.is_ours(proc.pid, ifname))
        os.makedirs(tmp_path / "wireguard")
        with open(tmp_path / "wireguard" / f"wireguard-go-{ifname}.json", "w") as f:
            json.dump({"pid": proc.pid, "ifname": ifname}, f)
        removed = _stop_wireguard_go(INSTANCE, str(tmp_path), None)
        assert removed == [f"wireguard-go {proc.pid} of {ifname} (encrypted overlays' tunnel)"]
        assert proc.wait(5) is not None
        assert not (tmp_path / "wireguard" / f"wireguard-go-{ifname}.json").exists()
        assert _stop_wireguard_go(INSTANCE, str(tmp_path), None) == []  # nothing left
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def until_sync(predicate: Any, timeout: float = 5.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# --- the fail-closed route ---------------------------------------------------------------


def fence_at(kernel: FakeKernel, range_: str = "198.51.100.240/28") -> tuple[int, int] | None:
    with kernel.netlink(None) as nl:
        return nl.route_at(range_, fence.METRIC)


async def test_the_fence_route_comes_first_stays_with_the_agent_and_goes_only_when_leaving(
    monkeypatch, tmp_path
) -> None:
    """Breaker (issue 20): the only guard against clear VXLAN leaving was nftables rules; a ruleset flushed
    while the agent was down (or within a supervision round) and the WireGuard interface then down sent
    encrypted VXLAN out of the default route.  An ``unreachable`` route over the tunnel range at the highest
    metric (libnet's protocol number) is made before the tunnel's route, outlives the agent, is put back by
    the supervision and the anti-entropy, and goes with ``--leave`` only."""
    from libnet.testing.fake_kernel import FakeNetlink

    kernel, _, log, tunnel, _ = await tunnel_beside_h2(monkeypatch, tmp_path)
    add_fence, add_route = FakeNetlink.add_unreachable_route, FakeNetlink.add_route
    monkeypatch.setattr(FakeNetlink, "add_unreachable_route", lambda nl, *a: (log.append("fence"), add_fence(nl, *a)))
    monkeypatch.setattr(FakeNetlink, "add_route", lambda nl, *a, **k: (log.append("route"), add_route(nl, *a, **k)))
    await tunnel.ensure()
    try:
        assert log.index("fence") < log.index("create") < log.index("route")
        assert fence_at(kernel) == (RTN_UNREACHABLE, ROUTE_PROTO)
        assert (tmp_path / "h1" / "wireguard" / fence.RECORD).read_text().strip() == "198.51.100.240/28"
        kernel.namespace(None).typed_routes.clear()  # deleted by hand: back within a supervision round
        assert await until(lambda: fence_at(kernel) is not None, 1.0)
        await tunnel.close()  # the agent stops: the fence stays (encrypted VXLAN devices stay too)
        kernel.namespace(None).typed_routes.clear()
        assert await tunnel.repair() == []  # not up: the next agent's start puts it back
        again = make_tunnel(kernel, tunnel.store, log, tmp_path)
        await again.ensure()  # a restart: idempotent
        assert fence_at(kernel) == (RTN_UNREACHABLE, ROUTE_PROTO)
        await again.ensure()
        kernel.namespace(None).typed_routes.clear()
        assert "wireguard fail-closed route over 198.51.100.240/28 put back" in await again.repair()
        await again.close()
        assert fence_at(kernel) is not None
    finally:
        await tunnel.close(stop=True)  # leaving the cluster for good: now it goes, and its record
    assert fence_at(kernel) is None and not (tmp_path / "h1" / "wireguard" / fence.RECORD).exists()


async def test_a_route_of_someone_else_at_the_fences_place_is_never_touched(monkeypatch, tmp_path) -> None:
    """A route to the range at the fence's metric that is not libnet's (another type or protocol) is neither
    replaced nor removed: the tunnel refuses to start (a clear Conflict, no interface made) rather than run
    without its fail-closed guard, and a purge leaves that route alone."""
    kernel, _, log, tunnel, _ = await tunnel_beside_h2(monkeypatch, tmp_path)
    theirs = kernel.namespace(None).typed_routes
    for foreign in ((RTN_UNREACHABLE, 4), (1, ROUTE_PROTO)):  # unreachable but static; libnet's number, unicast
        theirs[("198.51.100.240/28", fence.METRIC)] = foreign
        with pytest.raises(Conflict, match="not libnet's"):
            await tunnel.ensure()
        assert "create" not in log and fence_at(kernel) == foreign
        with kernel.netlink(None) as nl:
            (tmp_path / "h1" / "wireguard").mkdir(parents=True, exist_ok=True)
            (tmp_path / "h1" / "wireguard" / fence.RECORD).write_text("198.51.100.240/28\n")
            assert fence.remove(nl, str(tmp_path / "h1")) is None
        assert fence_at(kernel) == foreign
    del theirs[("198.51.100.240/28", fence.METRIC)]
    await tunnel.ensure()
    await tunnel.close(stop=True)


def test_the_fence_covers_ipv6_ranges_and_follows_a_changed_range(tmp_path) -> None:
    kernel, state = FakeKernel(), str(tmp_path)
    with kernel.netlink(None) as nl:
        assert fence.ensure(nl, state, "198.51.100.240/28") and not fence.ensure(nl, state, "198.51.100.240/28")
        # the range option changed: the old fence (libnet's, recorded) goes, the new one comes
        assert fence.ensure(nl, state, "2001:db8:ee::/64")
        assert nl.route_at("198.51.100.240/28", fence.METRIC) is None
        assert nl.route_at("2001:db8:ee::/64", fence.METRIC) == (RTN_UNREACHABLE, ROUTE_PROTO)
        assert fence.present(nl, "2001:db8:ee::/64") and fence.recorded(state) == "2001:db8:ee::/64"
        assert fence.remove(nl, state) == "2001:db8:ee::/64" and fence.remove(nl, state) is None
        assert kernel.namespace(None).typed_routes == {}


async def test_leaving_removes_a_fence_an_earlier_agent_made_also_without_a_backend(tmp_path) -> None:
    """``--leave`` on a host whose agent has no WireGuard backend now (module gone, package removed) still
    removes the fence an earlier agent with one made: it would drop traffic to the range for ever."""
    kernel = FakeKernel()
    with kernel.netlink(None) as nl:
        assert fence.ensure(nl, str(tmp_path / "h1"), "198.51.100.240/28")
    tunnel = make_tunnel(kernel, open_store("memory://"), [], tmp_path)
    tunnel.backend = None
    await tunnel.close()
    assert fence_at(kernel) is not None
    await tunnel.close(stop=True)
    assert fence_at(kernel) is None


async def test_a_host_whose_own_key_record_goes_missing_publishes_it_again(monkeypatch, tmp_path) -> None:
    """Breaker (issue 20): a running host's key record deleted from the cluster store (an operator's
    mistake, a store restored from an older backup) was never written again: every other host dropped it as
    a peer and it stayed cut off from every encrypted overlay until its agent restarted -- the anti-entropy
    did not notice either.  It is published again at once (the watch), and by the anti-entropy, unless the
    host is revoked."""
    _, store, _, h1, _ = await tunnel_beside_h2(monkeypatch, tmp_path)
    addr = await h1.ensure()

    async def published() -> bool:
        with contextlib.suppress(LibnetError):
            return NodeKey.decode((await store.get(nodes_prefix() + "h1")).value).tunnel == addr
        return False

    async def until_published(timeout: float = 3.0) -> bool:
        for _ in range(int(timeout / 0.01)):
            if await published():
                return True
            await asyncio.sleep(0.01)
        return False

    try:
        await store.delete(nodes_prefix() + "h1")
        assert await until_published(), "the deleted record was not published again"
        # the anti-entropy too (a lost watch event)
        h1._tasks[0].cancel()  # the watch, so only the repair can notice
        await asyncio.sleep(0)
        await store.delete(nodes_prefix() + "h1")
        h1._tasks[0] = asyncio.get_running_loop().create_future()  # a watch that runs but saw nothing
        await h1.repair()
        assert await published(), "the anti-entropy did not publish the missing record"
        # a revoked host does not publish itself back
        await revoke(store, "h1")
        await asyncio.sleep(0.2)
        await h1.repair()
        assert not await published()
    finally:
        await h1.close()


async def test_a_rotation_whose_new_interface_dies_at_the_switch_is_undone(monkeypatch, tmp_path) -> None:
    """Breaker (issue 20): ``wireguard-go`` of the coming key killed (kill -9) after every host acknowledged
    it but before the switch: the route replace failed ("no such interface", with a hint about network
    names), yet the current slot was already written as the new one.  The rotation stopped half done, for
    good: two wireguard-go, this host's record still leading with the old key, its endpoints still
    announcing the old tunnel address, and the supervision then moved the route to the revived new
    interface.  Now the switch fails before anything is switched and the new slot is undone."""
    from libnet.encryption import rotation

    monkeypatch.setattr(keys, "load_or_make", lambda d, slot=0: (KEYS[0], KEYS[1]))
    monkeypatch.setattr(keys, "make_new", lambda d, slot: (KEYS[2], KEYS[3]))
    kernel, store, log = FakeKernel(), open_store("memory://"), []
    h1 = make_tunnel(kernel, store, log, tmp_path)
    h1.check_interval = 3600  # no supervision round during the test: the switch alone decides
    addr = await h1.ensure()
    backend = h1.backend
    assert isinstance(backend, FakeBackend)
    route_via = h1.route_via

    def killed_first(slot: Any) -> None:
        if slot.index == 1:  # the coming key's wireguard-go dies just before the switch
            with kernel.netlink(None) as nl:
                nl.delete_link(slot.ifname)
        route_via(slot)

    monkeypatch.setattr(h1, "route_via", killed_first)
    try:
        with pytest.raises(Unavailable, match="undone"):
            await rotation.rotate(h1, ack_timeout=0.3)
        assert h1.current == 0 and h1.address == addr and h1.live == {0}
        slot_file = tmp_path / "h1" / "wireguard" / "current-slot"
        assert not slot_file.exists() or slot_file.read_text().strip() == "0"
        with kernel.netlink(None) as nl:
            old = nl.link(h1.slots[0].ifname)
            assert not nl.has_link(h1.slots[1].ifname)
        assert kernel.namespace(None).prefix_routes["198.51.100.240/28"] == (old.index, addr)
        rec = NodeKey.decode((await store.get(nodes_prefix() + "h1")).value)
        assert rec.public_key == KEYS[1] and rec.others == ()
        assert [p.key for p in await store.list(f"{P}/addresses/")] == [f"{P}/addresses/{addr}"]
        monkeypatch.setattr(h1, "route_via", route_via)
        done = await rotation.rotate(h1, ack_timeout=0.3, idle=0.01, min_drain=0.01)  # the next one goes through
        assert h1.current == 1 and done["public_key"] == KEYS[3]
    finally:
        await h1.close()


async def test_leaving_keeps_the_fence_while_an_encrypted_networks_device_is_left(monkeypatch, tmp_path) -> None:
    """Breaker (issue 20): ``libnet-agent --leave`` removed the fail-closed route although the encrypted
    network's namespace stayed with its containers and its VXLAN device (leaving does not tear the data plane
    down), and those still sent to the peers' tunnel addresses: once the ruleset was flushed, their VXLAN,
    container addresses and payload went out of the default route in clear (seen on the switch capture).
    The fence stays while such a device is left; it goes with the leave once none is (or with --purge)."""
    from libnet.driverapi import EndpointInfo, NetworkInfo, SandboxInfo
    from libnet.drivers.overlay.driver import OverlayDriver

    monkeypatch.setattr(keys, "load_or_make", lambda d, slot=0: (KEYS[0], KEYS[1]))
    kernel, log = FakeKernel(), []
    eth0 = kernel.add_link(None, "eth0", None, up=True)
    kernel.namespace(None).addresses[eth0.index] = ["203.0.113.11/24"]

    def driver() -> OverlayDriver:
        return OverlayDriver(
            cluster_store=store, node="h1", vtep="203.0.113.11", overlay_prefix="lno-t-", instance=INSTANCE,
            state_dir=str(tmp_path), kernel=kernel, wireguard=FakeBackend(kernel, None, log),
            encryption_range="198.51.100.240/28", anti_entropy_interval=3600,
        )  # fmt: skip

    store = open_store("memory://")
    d = driver()
    opts = d.parse_network_options({"encrypted": "true"})
    nw = NetworkInfo("1" * 64, "sec", "198.51.100.0/25", "198.51.100.1/25", None, None, False, opts)
    ep = EndpointInfo("2" * 64, nw.id, "a", "198.51.100.2/25", None, "02:42:c6:33:64:02")
    await d.create_network(nw)
    await d.join(nw, ep, SandboxInfo("c1", kernel.add_namespace("sb1"), "eth0"))
    assert fence_at(kernel) == (RTN_UNREACHABLE, ROUTE_PROTO) and kernel.netns_exists("lno-t-256")
    await d.stop_tunnel()  # leaving the cluster: the container and its network's device stay
    await d.close()
    assert kernel.netns_exists("lno-t-256")
    assert fence_at(kernel) == (RTN_UNREACHABLE, ROUTE_PROTO), "the fence went while encrypted VXLAN could leave"
    # a later leave (an agent that restored nothing) once the network's namespace is gone: the fence goes
    kernel.netns_delete("lno-t-256")
    d = driver()
    await d.stop_tunnel()
    await d.close()
    assert fence_at(kernel) is None


async def test_an_encrypted_network_sends_only_to_vteps_inside_the_tunnel_range(monkeypatch, tmp_path) -> None:
    """Breaker (issue 20): a peer host restarted with another --encryption-range re-announced its endpoints with
    a tunnel address outside this host's range; its FDB entries were programmed on the encrypted network, so
    its VXLAN went to an address the fence does not cover -- only the nftables rule kept it from leaving in
    clear, and with the agent down and the ruleset flushed it left through the default route with the
    containers' addresses and payload (switch capture).  An encrypted network's device gets entries only for
    VTEPs inside this host's tunnel range (the fence covers them); the peer stays known (DNS), unreached."""
    from libnet.driverapi import EndpointInfo, NetworkInfo, SandboxInfo
    from libnet.drivers.overlay.driver import OverlayDriver
    from libnet.drivers.overlay.peerdb import Peer
    from libnet.drivers.overlay.peerwatch import encode, peers_prefix
    from libnet.drivers.overlay.vni import P as OVERLAY

    monkeypatch.setattr(keys, "load_or_make", lambda d, slot=0: (KEYS[0], KEYS[1]))
    kernel = FakeKernel()
    eth0 = kernel.add_link(None, "eth0", None, up=True)
    kernel.namespace(None).addresses[eth0.index] = ["203.0.113.11/24"]
    store = open_store("memory://")
    d = OverlayDriver(
        cluster_store=store, node="h1", vtep="203.0.113.11", overlay_prefix="lno-t-", instance=INSTANCE,
        state_dir=str(tmp_path), kernel=kernel, wireguard=FakeBackend(kernel, None, []),
        encryption_range="198.51.100.240/28", anti_entropy_interval=3600, encryption_join_timeout=0.1,
    )  # fmt: skip
    sec = NetworkInfo("1" * 64, "sec", "198.51.100.0/25", "198.51.100.1/25", None, None, False,
                      d.parse_network_options({"encrypted": "true"}))  # fmt: skip
    plain = NetworkInfo("4" * 64, "ov", "198.51.100.128/26", "198.51.100.129/26", None, None, False,
                        d.parse_network_options({}))  # fmt: skip
    try:
        for nw, mac in ((sec, "02:42:c6:33:64:02"), (plain, "02:42:c6:33:64:82")):
            await d.create_network(nw)
            ep = EndpointInfo(mac.replace(":", "")[-12:] * 5 + "abcd", nw.id, "a", None, None, mac)
            await d.join(nw, ep, SandboxInfo("c" + nw.id[:3], kernel.add_namespace("sb" + nw.id[:3]), "eth0"))
        # h2 inside the range, h3 with a tunnel address of another range, h4 with its underlay address
        remote = (("h2", "198.51.100.249"), ("h3", "198.51.100.233"), ("h4", "203.0.113.14"))
        for i, (node, vtep) in enumerate(remote):
            for nw in (sec, plain):
                peer = Peer(f"{i}{nw.id[0]}" * 32, nw.id, f"02:42:c6:33:65:0{i}", vtep, node, f"198.51.100.{20 + i}/25")
                await store.put(peers_prefix(OVERLAY, nw.id) + peer.endpoint_id, encode(peer))
        await d.repair()
        with kernel.netlink(d.ns_name(d.vnis.cached(sec.id) or 0)) as nl:
            assert {e.dst for e in nl.fdb("vxlan0")} == {"198.51.100.249"}
        with kernel.netlink(d.ns_name(d.vnis.cached(plain.id) or 0)) as nl:  # plain overlays: every VTEP
            assert {e.dst for e in nl.fdb("vxlan0")} == {vtep for _, vtep in remote}
        assert len(d.remote_endpoints(sec.id)) == 3  # still known (names), only never sent to
    finally:
        await d.close()


def test_agent_status_shows_the_encryption_section_readably() -> None:
    """Breaker (issue 20): ``libnet agent status`` printed the encryption section as one Python dict repr
    wrapped over lines (quotes, braces, None).  Each field is a line of its own under ``encryption``."""
    from agent.cli import status_lines

    lines = status_lines(
        {
            "status": "ok",
            "encryption": {
                "backend": "wireguard-go",
                "tunnel_address": "198.51.100.249",
                "peers": ["h1", "h3"],
                "revoked": [],
                "incompatible": {"h3": "its encryption range is 198.51.100.224/28"},
                "handshake_ages": {"h1": 3.5, "h3": None},
            },
        }
    )
    assert lines == [
        "        status: ok",
        "    encryption:",
        "                backend: wireguard-go",
        "                tunnel_address: 198.51.100.249",
        "                peers: h1, h3",
        "                revoked: -",
        "                incompatible: h3=its encryption range is 198.51.100.224/28",
        "                handshake_ages: h1=3.5; h3=-",
    ]


def test_a_listen_port_in_use_is_named_in_the_error(tmp_path) -> None:
    """Breaker (issue 20): a second libnet instance on a host (or any process) holding UDP 51820 made a join
    fail with "wg set lnw...: Unable to modify interface: Address already in use" -- no port, no option to
    change.  The error names the port and --encryption-port."""

    def run(argv: list[str], **kw: Any) -> Any:
        if argv[1:3] == ["show", "lnwx"]:
            return subprocess.CompletedProcess(argv, 0, "(none)\t(none)\t0\toff\n", "")
        return subprocess.CompletedProcess(argv, 1, "", "Unable to modify interface: Address already in use\n")

    us = wgbackend.UserspaceBackend(None, str(tmp_path), run=run)
    with pytest.raises(Unavailable, match=r"UDP port 51820 .*in use.*--encryption-port"):
        us.configure("lnwx", wgbackend.WgConfig(KEYS[0], 51820))
