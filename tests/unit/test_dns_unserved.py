"""A sandbox whose embedded DNS server cannot be served (the agent out of descriptors: EMFILE
making its listeners) keeps a working resolver: its resolv.conf names the upstream servers (the
host's, or its own ``--dns``) instead of 127.0.0.11 where nothing listens, until its DNS is
served again (a later join or leave, or reconcile), when it points at the embedded server again.
Before, the connect succeeded with "embedded DNS not served" logged and the container had no DNS
at all; a leave then raised the attach's OSError after the leave was done."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

from libnet import Config, Controller
from libnet.dns.service import DnsConfig, EmbeddedDns
from libnet.store.memory import MemoryStore
from libnet.testing.fakes import FakeDriver, FakeNamespaces

HOST = "nameserver 198.51.100.53\nsearch example.test\n"


class Listeners:
    """Stands for the DNS server's listeners: ``failing`` makes a new one fail as out of descriptors."""

    def __init__(self) -> None:
        self.failing = False
        self.served: dict[str, frozenset[str]] = {}

    async def attach(self, sandbox_id: str, netns: str, view: frozenset[str], upstreams: Any = None) -> None:
        if sandbox_id not in self.served and self.failing:
            raise OSError(errno.EMFILE, "Too many open files")
        self.served[sandbox_id] = view

    async def detach(self, sandbox_id: str) -> None:
        self.served.pop(sandbox_id, None)


async def _controller(tmp_path: Path, store: Any = None, namespaces: Any = None) -> tuple[Controller, Listeners]:
    (tmp_path / "resolv.conf").write_text(HOST)
    dns = EmbeddedDns(DnsConfig(), None, resolv_conf=str(tmp_path / "resolv.conf"))
    listeners = Listeners()
    dns.attach = listeners.attach  # type: ignore[method-assign]
    dns.detach = listeners.detach  # type: ignore[method-assign]
    ctl = Controller(
        Config(state_dir=str(tmp_path / "state"), resolv_conf=str(tmp_path / "resolv.conf")),
        store=store or MemoryStore(),
        drivers={"bridge": FakeDriver("bridge")},
        namespaces=namespaces or FakeNamespaces(),
        dns=dns,
    )
    await ctl.start()
    return ctl, listeners


def _nameservers(ctl: Controller, sandbox_id: str) -> list[str]:
    text = (Path(ctl.config.state_dir) / "sandboxes" / sandbox_id / "resolv.conf").read_text()
    return [line.split()[1] for line in text.splitlines() if line.startswith("nameserver ")]


async def test_a_connect_whose_dns_cannot_be_served_leaves_the_upstream_servers(tmp_path: Path) -> None:
    ctl, listeners = await _controller(tmp_path)
    try:
        await ctl.create_network("front", ipv4_subnet="198.51.100.0/26", ipv6=False)
        await ctl.create_network("side", ipv4_subnet="198.51.100.64/26", ipv6=False)
        plain = await ctl.create_sandbox("a" * 12)
        own = await ctl.create_sandbox("b" * 12, dns=["198.51.100.99"])
        ok = await ctl.create_sandbox("c" * 12)
        await ctl.connect("front", ok.id)  # served: the embedded server
        assert _nameservers(ctl, ok.id) == ["127.0.0.11"]
        listeners.failing = True
        for sb in (plain, own):
            await ctl.connect("front", sb.id)  # succeeds: the network works
        assert _nameservers(ctl, plain.id) == ["198.51.100.53"]
        assert _nameservers(ctl, own.id) == ["198.51.100.99"]  # its --dns, as without the embedded DNS
        assert _nameservers(ctl, ok.id) == ["127.0.0.11"]
        await ctl.connect("side", plain.id)  # still failing: still the upstreams
        assert _nameservers(ctl, plain.id) == ["198.51.100.53"]
        await ctl.disconnect("side", plain.id)  # the leave's attach fails too: no error, the leave is done
        assert len((await ctl.sandbox(plain.id)).endpoints) == 1
        assert _nameservers(ctl, plain.id) == ["198.51.100.53"]
        report = await ctl.reconcile()  # still out of descriptors: nothing changes
        assert not any("DNS" in line for line in report.repaired), report
        listeners.failing = False
        report = await ctl.reconcile()  # descriptors back: served, and the files say so again
        assert sorted(line for line in report.repaired if "DNS" in line) == [
            f"sandbox {sid[:12]}: embedded DNS served again (resolv.conf points at it)" for sid in (plain.id, own.id)
        ], report
        assert set(listeners.served) == {plain.id, own.id, ok.id}
        for sb in (plain, own, ok):
            assert _nameservers(ctl, sb.id) == ["127.0.0.11"]
        assert not any("DNS" in line for line in (await ctl.reconcile()).repaired)
    finally:
        await ctl.close()


async def test_a_join_that_serves_dns_again_points_resolv_conf_back(tmp_path: Path) -> None:
    ctl, listeners = await _controller(tmp_path)
    try:
        await ctl.create_network("front", ipv4_subnet="198.51.100.0/26", ipv6=False)
        await ctl.create_network("side", ipv4_subnet="198.51.100.64/26", ipv6=False)
        sb = await ctl.create_sandbox("d" * 12)
        listeners.failing = True
        await ctl.connect("front", sb.id)
        assert _nameservers(ctl, sb.id) == ["198.51.100.53"]
        listeners.failing = False
        await ctl.connect("side", sb.id)
        assert _nameservers(ctl, sb.id) == ["127.0.0.11"] and sb.id in listeners.served
        await ctl.delete_sandbox(sb.id)
        assert not (Path(ctl.config.state_dir) / "sandboxes" / sb.id).exists()
    finally:
        await ctl.close()


@pytest.mark.parametrize("before", [True, False])
@pytest.mark.parametrize("failing", [True, False])
async def test_a_restart_that_cannot_serve_a_sandboxs_dns_leaves_the_upstream_servers(
    tmp_path: Path, failing: bool, before: bool
) -> None:
    """``before``: the DNS was not served before the restart either (the files name the upstreams)."""
    store, namespaces = MemoryStore(), FakeNamespaces()
    ctl, first = await _controller(tmp_path, store, namespaces)
    first.failing = before
    await ctl.create_network("front", ipv4_subnet="198.51.100.0/26", ipv6=False)
    sb = await ctl.create_sandbox("e" * 12)
    await ctl.connect("front", sb.id)
    assert _nameservers(ctl, sb.id) == (["198.51.100.53"] if before else ["127.0.0.11"])
    await ctl.close()
    # the restarted agent: every listener is made anew (failing: out of descriptors)
    (tmp_path / "resolv.conf").write_text(HOST)
    dns = EmbeddedDns(DnsConfig(), None, resolv_conf=str(tmp_path / "resolv.conf"))
    listeners = Listeners()
    listeners.failing = failing
    dns.attach = listeners.attach  # type: ignore[method-assign]
    again = Controller(
        Config(state_dir=str(tmp_path / "state"), resolv_conf=str(tmp_path / "resolv.conf")),
        store=store,
        drivers={"bridge": FakeDriver("bridge")},
        namespaces=namespaces,
        dns=dns,
    )
    await again.start()
    try:
        await again.reconcile()
        assert _nameservers(again, sb.id) == (["198.51.100.53"] if failing else ["127.0.0.11"])
        listeners.failing = False
        report = await again.reconcile()
        assert any("served again" in line for line in report.repaired) == failing, report
        assert _nameservers(again, sb.id) == ["127.0.0.11"]
    finally:
        await again.close()


async def test_a_sandbox_without_files_is_served_again_and_forgotten_when_deleted(tmp_path: Path) -> None:
    """A CNI sandbox (its runtime writes the container's resolv.conf): no files are written for it,
    its DNS is served again by reconcile, and its deletion forgets it."""
    ctl, listeners = await _controller(tmp_path)
    try:
        await ctl.create_network("front", ipv4_subnet="198.51.100.0/26", ipv6=False)
        sb = await ctl.create_sandbox("f" * 12, files=False)
        other = await ctl.create_sandbox("9" * 12, files=False)
        listeners.failing = True
        for s in (sb, other):
            await ctl.connect("front", s.id)
        assert not (Path(ctl.config.state_dir) / "sandboxes" / sb.id).exists()
        await ctl.delete_sandbox(other.id)
        assert ctl._files.unserved == {sb.id}
        listeners.failing = False
        report = await ctl.reconcile()
        assert [line for line in report.repaired if "DNS" in line] == [
            f"sandbox {sb.id[:12]}: embedded DNS served again"
        ], report
        assert sb.id in listeners.served and not (Path(ctl.config.state_dir) / "sandboxes" / sb.id).exists()
    finally:
        await ctl.close()
